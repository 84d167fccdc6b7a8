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

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from stream_infer.errors import DataError
from stream_infer.model.card import ModelCard
from stream_infer.model.datasets import Recordings, hop_windows
from stream_infer.model.importer import export_module
from stream_infer.model.train import _training_context


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
    val_fraction: float = 0.2,
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
        val_fraction=val_fraction,
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
    """Train on every hop of the ``train`` recordings for the whole schedule, seeded. Returns the
    model, the card's ``training`` and its ``accuracy`` on the ``test`` recordings (MAE beside
    persistence).

    Validation never changes the model. ``val_fraction`` > 0 first runs the same seeded schedule
    with the last ``val_fraction`` of each training recording's hops held out (the latest weeks:
    a temporal hold-out, so nothing is learned from after the hops it scores), to *report* the
    validation MAE after each epoch, the epoch that would have been best and how noisy that
    choice is (``training.validation_mae``). The model returned is then trained on all training
    hops with the same seed: the very model ``val_fraction=0`` gives. Keeping the best epoch on
    the hold-out at a constant learning rate (early stopping), as this did before, never trained
    on the latest fifth of the training years and picked an epoch on a noisy figure; on CO2 it
    forecast worse than the whole one-cycle schedule on every hop (docs/model.md)."""
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    t_idx = [recs.channels.index(t) for t in targets]
    series = [v.astype(np.float32) for v in recs.subset("train").values]
    if not series:
        raise DataError(f"{recs.dataset}: no training recordings")
    scale = float(np.median(np.concatenate([np.abs(np.diff(v, axis=0)).ravel() for v in series]))) or 1.0
    data = [_hops(v, window, horizon, t_idx) for v in series]
    fit_kw = dict(
        channels=len(recs.channels), t_idx=t_idx, horizon=horizon, hidden=hidden, scale=scale,
        epochs=epochs, chunk=chunk, batch=batch, lr=lr, seed=seed, progress=progress,
    )  # fmt: skip
    validation: dict[str, Any] = {}
    if val_fraction > 0:
        n_val = [max(1, int(len(x) * val_fraction)) for x, _ in data]
        if any(len(x) - n < 1 for (x, _), n in zip(data, n_val, strict=True)):
            raise DataError(f"{recs.dataset}: a training recording is too short to hold {val_fraction} out")
        _, val_mae = _fit(data, n_val, desc="validate", **fit_kw)  # type: ignore[arg-type]
        validation = {
            "fraction": val_fraction,
            "n_val": sum(n_val),
            "held_out": "the last hops of each training recording (the latest), scored with the state carried",
            "used_for": "report only: the model is trained on all training hops for the whole schedule",
            **_mae_curve(val_mae),
        }
    model, _ = _fit(data, [0] * len(data), desc="train", **fit_kw)  # type: ignore[arg-type]
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
        "lr": lr,
        "schedule": "one-cycle",
        "seed": seed,
        "hidden": hidden,
        "scale": scale,
        **({"validation_mae": validation} if validation else {}),
    }
    return model, training, accuracy


def _fit(
    data: list[tuple[np.ndarray, np.ndarray]],
    n_val: list[int],
    *,
    channels: int,
    t_idx: list[int],
    horizon: int,
    hidden: int,
    scale: float,
    epochs: int,
    chunk: int,
    batch: int,
    lr: float,
    seed: int,
    progress: bool,
    desc: str,
) -> tuple[ForecastCNNLSTM, list[float]]:
    """One seeded run of the whole one-cycle schedule (Adam, peak ``lr``) on the hops of ``data``
    before the last ``n_val`` of each recording; an epoch is enough chunks of ``chunk`` hops for
    every trained hop to be seen about once, rounded up. Returns the model and the MAE on the
    held-out hops after every epoch where any are held out (scoring them changes nothing)."""
    val_mae: list[float] = []
    with _training_context(seed):
        model = ForecastCNNLSTM(channels, t_idx, horizon, hidden, scale)
        rng = np.random.default_rng(seed)
        steps = -(-sum(len(x) - n for (x, _), n in zip(data, n_val, strict=True)) // (chunk * batch))
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps)
        for epoch in range(epochs):
            model.train()
            for _ in range(steps):
                xs, ys = [], []
                for _ in range(batch):
                    i = int(rng.integers(len(data)))
                    x, y = data[i]
                    s = int(rng.integers(0, max(1, len(x) - n_val[i] - chunk + 1)))
                    xs.append(x[s : s + chunk])
                    ys.append(y[s : s + chunk])
                loss = _loss(model, torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys)), burn_in=8)
                opt.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
            if any(n_val):
                held = [(x, y, len(x) - n) for (x, y), n in zip(data, n_val, strict=True) if n]
                val_mae.append(float(np.mean([_sequence_mae(model, x, y, start) for x, y, start in held])))
            if progress:
                shown = f": validation MAE {val_mae[-1]:.4f}" if val_mae else ""
                print(f"{desc} epoch {epoch + 1}/{epochs}{shown}", flush=True)
        model.eval()
    return model, val_mae


def _mae_curve(val_mae: list[float]) -> dict[str, Any]:
    """The validation MAE per epoch, summed up: at the end, its best epoch (reported, never
    kept), and its epoch-to-epoch noise over the second half of the schedule."""
    maes = np.asarray(val_mae, dtype=np.float64)
    half = maes[len(maes) // 2 :]
    return {
        "epochs": len(maes),
        "mae": round(float(maes[-1]), 5),
        "best_epoch": int(maes.argmin()) + 1,
        "best_mae": round(float(maes.min()), 5),
        "mae_noise": round(float(np.abs(np.diff(half)).mean()) if len(half) > 1 else 0.0, 5),
        "per_epoch": [round(float(m), 5) for m in maes],
    }


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
    out: Path,
    *,
    seed: int = 0,
    epochs: int = 60,
    hidden: int = 64,
    val_fraction: float = 0.2,
    progress: bool = False,
) -> ModelCard:
    """The climate use: Mauna Loa CO2, 4 weeks ahead from a year of weekly values. Validation
    (``val_fraction`` of the training weeks, the latest) only reports: the model is the same
    without it."""
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
        val_fraction=val_fraction,
        seed=seed,
        progress=progress,
    )
