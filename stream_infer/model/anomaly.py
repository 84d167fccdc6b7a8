"""Anomaly scores from a forecaster: how far each new sample is from what the model expected.

The graph carries, beside the forecaster's (h, c), its own one-step forecast of the next sample
as a state tensor ``expect`` [B, 2] (the forecast, and 1 once there is one). At each hop the
score is the distance of the window's newest sample from the forecast made one hop before, in
units of the training scale; a new entity scores 0 until it has a forecast. The threshold in
the card is a margin over the largest score seen on the anomaly-free training data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from stream_infer.model.card import ModelCard
from stream_infer.model.datasets import Recordings, hop_windows
from stream_infer.model.forecast import ForecastCNNLSTM, fit_forecaster, hop_card, lstm_state, run_sequence
from stream_infer.model.importer import export_module

THRESHOLD_MARGIN = 1.5  # threshold = this x the largest training score


class ForecastAnomaly(nn.Module):
    """``forward(x, h0, c0, expect) -> (score [B, 1], hn, cn, next_expect)``; hop 1."""

    def __init__(self, forecaster: ForecastCNNLSTM, channel: int) -> None:
        super().__init__()
        self.f = forecaster
        self.channel = channel

    def forward(
        self, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, expect: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        y, h, c = self.f(x, h0, c0)
        newest = x[:, -1, self.channel : self.channel + 1]
        score = (newest - expect[:, 0:1]).abs() / self.f.scale * expect[:, 1:2]
        return score, h, c, torch.cat([y[:, 0:1], torch.ones_like(y[:, 0:1])], dim=1)


def train_anomaly(
    recs: Recordings,
    out: Path,
    *,
    name: str,
    channel: str,
    window: int,
    hidden: int = 32,
    epochs: int = 40,
    seed: int = 0,
    progress: bool = False,
) -> ModelCard:
    """Train a one-step forecaster of ``channel`` on the ``train`` recordings, wrap it, set the
    threshold from the training scores and write the artifact to ``out``."""
    forecaster, training, accuracy = fit_forecaster(
        recs,
        targets=[channel],
        horizon=1,
        window=window,
        hidden=hidden,
        epochs=epochs,
        seed=seed,
        progress=progress,
    )
    model = ForecastAnomaly(forecaster, recs.channels.index(channel)).eval()
    train_max = max(float(scores(model, v, window).max()) for v in recs.subset("train").values)
    card = hop_card(
        name,
        recs,
        window,
        outputs=["score"],
        head={"kind": "anomaly", "threshold": round(THRESHOLD_MARGIN * train_max, 6)},
        state=[
            *lstm_state(hidden),
            {"input": "expect", "output": "next_expect", "shape": [2], "batch_axis": 0},
        ],
        training={
            **training,
            "forecaster_test": accuracy,
            "threshold": f"{THRESHOLD_MARGIN} x the largest training score ({train_max:.4f})",
        },
    )
    return export_module(model, card, out)


@torch.no_grad()
def scores(model: ForecastAnomaly, values: np.ndarray, window: int) -> np.ndarray:
    """The score of every hop of one recording from zero state, as the graph steps it: the
    forecaster run over the whole sequence at once, each hop's newest sample against the
    previous hop's forecast (0 at the first hop, which has none)."""
    x = torch.from_numpy(np.ascontiguousarray(hop_windows(values.astype(np.float32), window, 1)))
    forecast = run_sequence(model.f, x[None])[0, :, 0].numpy()
    newest = x[:, -1, model.channel].numpy()
    return np.concatenate([[0.0], np.abs(newest[1:] - forecast[:-1]) / float(model.f.scale)])


def train_abp(
    out: Path, *, seed: int = 0, epochs: int = 40, hidden: int = 32, progress: bool = False
) -> ModelCard:
    """The medical use: internal bleeding in arterial blood pressure, scored at every sample."""
    from stream_infer.model.datasets import abp_internal_bleeding

    return train_anomaly(
        abp_internal_bleeding(),
        out,
        name="abp-anomaly",
        channel="abp",
        window=64,
        hidden=hidden,
        epochs=epochs,
        seed=seed,
        progress=progress,
    )
