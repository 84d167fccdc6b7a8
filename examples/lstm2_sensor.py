"""A two-layer LSTM sensor model: two state tensors ``h`` and ``c``, [2, B, H] each.

    python -m examples.lstm2_sensor --out artifacts/lstm2-sensor

Seeded initial weights, as in ``gru_sensor``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from stream_infer.model.card import ModelCard
from stream_infer.model.importer import export_module

CHANNELS, HIDDEN, LAYERS, WINDOW, HOP = 6, 24, 2, 20, 10
LABELS = ["Badminton", "Running", "Standing", "Walking"]

CARD = {
    "name": "lstm2-sensor",
    "version": "1",
    "kind": "sensor",
    "window": WINDOW,
    "hop": HOP,
    "sample_shape": [CHANNELS],
    "labels": LABELS,
    "state": [
        {"input": "state_h", "output": "next_h", "shape": [LAYERS, HIDDEN], "batch_axis": 1},
        {"input": "state_c", "output": "next_c", "shape": [LAYERS, HIDDEN], "batch_axis": 1},
    ],
}


class LSTM2Sensor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(WINDOW * CHANNELS, 32), nn.ReLU())
        self.lstm = nn.LSTM(32, HIDDEN, num_layers=LAYERS, batch_first=True)
        self.head = nn.Linear(HIDDEN, len(LABELS))

    def forward(
        self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out, (h_next, c_next) = self.lstm(self.encoder(x)[:, None, :], (h, c))
        return self.head(out[:, 0]), h_next, c_next


def build(out: str | Path, seed: int = 0) -> ModelCard:
    torch.manual_seed(seed)
    return export_module(LSTM2Sensor(), CARD, out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    print(build(parser.parse_args().out).model_id)
