"""Forecasting CNN-LSTM: the next N values of some channels from a window and the carried state.

The graph takes raw values. It subtracts each channel's last value in the window and divides by
a scale fixed at training (the spread of one-step changes), so a level it never saw in training,
such as CO2 still rising in the test years, looks like one it did; the forecast is a change from
that last value, added back inside the graph. It is trained as it is served: hop by hop, the LSTM
state carried through chunks of consecutive hops (truncated backpropagation), and exported with
explicit (h, c) state through ``importer.export_module`` as a ``regression`` head whose outputs
are named ``<channel>+<step>`` (what ``evaluate`` scores against the recording).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from stream_infer.model.card import ModelCard
from stream_infer.model.datasets import Recordings, hop_windows
from stream_infer.model.importer import export_module


class ForecastCNNLSTM(nn.Module):
    """``forward(x [B, W, F], h0 [L, B, H], c0) -> (y [B, N * T], hn, cn)``, y step-major."""

    scale: torch.Tensor

    def __init__(
        self, channels: int, targets: list[int], horizon: int, hidden: int, scale: float, conv: int = 32
    ) -> None:
        super().__init__()
        self.targets = targets
        self.horizon = horizon
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.cnn = nn.Sequential(
            nn.Conv1d(channels, conv, 5, padding=2),
            nn.ReLU(),
            nn.Conv1d(conv, conv, 5, padding=2, dilation=1),
            nn.ReLU(),
        )
        self.lstm = nn.LSTM(2 * conv, hidden, 1, batch_first=True)
        self.out = nn.Linear(hidden, horizon * len(targets))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, W, F] -> [B, 2 * conv]: mean and last step of the convolved, re-levelled window."""
        z = (x - x[:, -1:, :]) / self.scale
        f = self.cnn(z.transpose(1, 2))
        return torch.cat([f.mean(dim=2), f[:, :, -1]], dim=1)

    def head(self, o: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """LSTM outputs [..., H] and the last values [..., F] -> forecasts [..., N * T]."""
        base = last[..., self.targets].repeat(*([1] * (last.dim() - 1)), self.horizon)
        return base + self.out(o) * self.scale

    def forward(self, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor) -> tuple[torch.Tensor, ...]:
        o, (h, c) = self.lstm(self.features(x)[:, None, :], (h0, c0))
        return self.head(o[:, 0], x[:, -1, :]), h, c


def train_forecaster(
    recs: Recordings,
    out: Path,
    *,
    name: str,
    targets: list[str],
    horizon: int,
    window: int,
    season: int | None = None,
    hidden: int = 64,
    epochs: int = 60,
    seed: int = 0,
    progress: bool = False,
) -> ModelCard:
    """``fit_forecaster`` and write the artifact to ``out`` (a regression head)."""
    model, training, accuracy = fit_forecaster(
        recs,
        targets=targets,
        horizon=horizon,
        window=window,
        hidden=hidden,
        epochs=epochs,
        seed=seed,
        progress=progress,
    )
    card = hop_card(
        name,
        recs,
        window,
        outputs=[f"{t}+{s}" for s in range(1, horizon + 1) for t in targets],
        head={"kind": "regression", "targets": list(targets), "horizon": horizon}
        | ({"season": season} if season else {}),
        state=lstm_state(hidden),
        accuracy=accuracy,
        training=training,
    )
    return export_module(model, card, out)


def hop_card(
    name: str, recs: Recordings, window: int, *, outputs: list[str], head: dict[str, Any], **rest: Any
) -> dict[str, Any]:
    """The import card of a sensor model that steps once per sample (hop 1) over ``recs``."""
    return {
        "name": name,
        "kind": "sensor",
        "window": window,
        "hop": 1,
        "sample_shape": [len(recs.channels)],
        "outputs": outputs,
        "channels": list(recs.channels),
        "head": head,
        **rest,
    }


def lstm_state(hidden: int) -> list[dict[str, Any]]:
    """The card's state pairs of the forecaster's one-layer LSTM."""
    return [
        {"input": "h0", "output": "hn", "shape": [1, hidden], "batch_axis": 1},
        {"input": "c0", "output": "cn", "shape": [1, hidden], "batch_axis": 1},
    ]


def fit_forecaster(
    recs: Recordings,
    *,
    targets: list[str],
    horizon: int,
    window: int,
    hidden: int = 64,
    epochs: int = 60,
    chunk: int = 64,
    batch: int = 16,
    lr: float = 3e-3,
    val_fraction: float = 0.2,
    seed: int = 0,
    progress: bool = False,
) -> tuple[ForecastCNNLSTM, dict[str, Any], dict[str, Any]]:
    """Train on the ``train`` recordings (the last ``val_fraction`` of hops of each kept for
    validation: early stopping keeps the best epoch). Returns the model, the card's
    ``training`` and its ``accuracy`` on the ``test`` recordings (MAE beside persistence)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    t_idx = [recs.channels.index(t) for t in targets]
    train = recs.subset("train")
    series = [v.astype(np.float32) for v in train.values]
    scale = float(np.median(np.concatenate([np.abs(np.diff(v, axis=0)).ravel() for v in series]))) or 1.0
    model = ForecastCNNLSTM(len(recs.channels), t_idx, horizon, hidden, scale)
    data = [_hops(v, window, horizon, t_idx) for v in series]
    n_val = [max(1, int(len(x) * val_fraction)) for x, _ in data]
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    best: tuple[float, int, dict[str, Any]] = (float("inf"), -1, {})
    for epoch in range(epochs):
        model.train()
        for _ in range(max(1, sum(len(x) for x, _ in data) // (chunk * batch))):
            xs, ys = [], []
            for _ in range(batch):
                i = int(rng.integers(len(data)))
                x, y = data[i]
                s = int(rng.integers(0, max(1, len(x) - n_val[i] - chunk)))
                xs.append(x[s : s + chunk])
                ys.append(y[s : s + chunk])
            loss = _loss(model, torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys)), burn_in=8)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        val = float(
            np.mean([_sequence_mae(model, x, y, len(x) - n) for (x, y), n in zip(data, n_val, strict=True)])
        )
        if val < best[0]:
            best = (val, epoch, copy.deepcopy(model.state_dict()))
        if progress:
            print(f"epoch {epoch + 1}/{epochs}: validation MAE {val:.4f}", flush=True)
    model.load_state_dict(best[2])
    model.eval()
    test = [_hops(v.astype(np.float32), window, horizon, t_idx) for v in recs.subset("test").values]
    accuracy: dict[str, Any] = {}
    if test:
        errors = np.concatenate([_errors(model, x, y) for x, y in test])
        naive = np.concatenate([_persistence(x, y, t_idx, horizon) for x, y in test])
        accuracy = {
            "split": "test",
            "n": int(sum(len(x) for x, _ in test)),
            "mae": round(float(errors.mean()), 6),
            "persistence_mae": round(float(naive.mean()), 6),
        }
    training = {
        "data": recs.dataset,
        "split": recs.split_rule,
        "notes": list(recs.notes),
        "epochs": epochs,
        "best_epoch": best[1] + 1,
        "validation_mae": round(best[0], 6),
        "seed": seed,
        "hidden": hidden,
        "scale": scale,
    }
    return model, training, accuracy


def _hops(values: np.ndarray, window: int, horizon: int, t_idx: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Windows of every hop that has ``horizon`` values after it, and those values [n, N * T]."""
    x = hop_windows(values, window, 1)
    n = len(values) - window - horizon + 1
    ends = np.arange(n) + window - 1
    y = np.stack([values[ends + s][:, t_idx] for s in range(1, horizon + 1)], axis=1).reshape(n, -1)
    return np.ascontiguousarray(x[:n]), y.astype(np.float32)


def run_sequence(model: ForecastCNNLSTM, x: torch.Tensor) -> torch.Tensor:
    """Consecutive windows [B, L, W, F] from zero state -> forecasts [B, L, N * T]."""
    b, n = x.shape[:2]
    f = model.features(x.reshape(b * n, *x.shape[2:])).reshape(b, n, -1)
    o, _ = model.lstm(f)
    return model.head(o, x[:, :, -1, :])


def _loss(model: ForecastCNNLSTM, x: torch.Tensor, y: torch.Tensor, burn_in: int) -> torch.Tensor:
    pred = run_sequence(model, x)
    return nn.functional.huber_loss(pred[:, burn_in:] / model.scale, y[:, burn_in:] / model.scale)


@torch.no_grad()
def _sequence_mae(model: ForecastCNNLSTM, x: np.ndarray, y: np.ndarray, start: int) -> float:
    """MAE over hops ``start:`` with the state carried from the first hop, as served."""
    model.eval()
    pred = run_sequence(model, torch.from_numpy(x[None]))[0].numpy()
    return float(np.abs(pred[start:] - y[start:]).mean())


@torch.no_grad()
def _errors(model: ForecastCNNLSTM, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    model.eval()
    return np.abs(run_sequence(model, torch.from_numpy(x[None]))[0].numpy() - y).ravel()


def _persistence(x: np.ndarray, y: np.ndarray, t_idx: list[int], horizon: int) -> np.ndarray:
    return np.abs(np.tile(x[:, -1, t_idx], horizon) - y).ravel()


def train_co2(
    out: Path, *, seed: int = 0, epochs: int = 60, hidden: int = 64, progress: bool = False
) -> ModelCard:
    """The climate use: Mauna Loa CO2, 4 weeks ahead from a year of weekly values."""
    from stream_infer.model.datasets import co2_weekly

    return train_forecaster(
        co2_weekly(52),
        out,
        name="co2-forecast",
        targets=["co2"],
        horizon=4,
        window=52,
        season=52,
        hidden=hidden,
        epochs=epochs,
        seed=seed,
        progress=progress,
    )
