"""A GRU sensor model: one state tensor ``h`` of shape [1, B, H] (batch on axis 1).

    python -m examples.gru_sensor --out artifacts/gru-sensor
    stream-infer serve   # with model.artifact: artifacts/gru-sensor

The weights are a seeded initialisation: the example shows the contract (explicit state in and
out, dynamic batch) rather than a trained model; train it with your own loop before serving it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from stream_infer.model.card import ModelCard
from stream_infer.model.importer import export_module

CHANNELS, HIDDEN, WINDOW, HOP = 6, 32, 20, 10
LABELS = ["Badminton", "Running", "Standing", "Walking"]

CARD = {
    "name": "gru-sensor",
    "version": "1",
    "kind": "sensor",
    "window": WINDOW,
    "hop": HOP,
    "sample_shape": [CHANNELS],
    "labels": LABELS,
    "input": "window",
    "output": "logits",
    "state": [{"input": "h_in", "output": "h_out", "shape": [1, HIDDEN], "batch_axis": 1}],
}


class GRUSensor(nn.Module):
    """Conv1d over the window, mean over time, one GRU step from the carried ``h``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(CHANNELS, 16, kernel_size=3, padding=1)
        self.gru = nn.GRU(16, HIDDEN, batch_first=True)
        self.head = nn.Linear(HIDDEN, len(LABELS))

    def forward(self, window: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.relu(self.conv(window.transpose(1, 2))).mean(dim=2)  # [B, 16]
        out, h_next = self.gru(z[:, None, :], h)
        return self.head(out[:, 0]), h_next


def build(out: str | Path, seed: int = 0) -> ModelCard:
    torch.manual_seed(seed)
    return export_module(GRUSensor(), CARD, out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    print(build(parser.parse_args().out).model_id)
