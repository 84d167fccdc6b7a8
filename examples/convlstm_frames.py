"""A ConvLSTM frame model: two state tensors, ``h`` and ``c``, of shape [B, 8, 16, 16] (batch
first), one step per frame.

    python -m examples.convlstm_frames --out artifacts/convlstm-frames

Seeded initial weights, as in ``gru_sensor``: the example shows the contract for spatial state.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from stream_infer.model.card import ModelCard
from stream_infer.model.importer import export_module

CHANNELS, SIZE, HIDDEN = 1, 16, 8
LABELS = ["face", "non-face"]

CARD = {
    "name": "convlstm-frames",
    "version": "1",
    "kind": "frame",
    "window": 1,
    "hop": 1,
    "sample_shape": [CHANNELS, SIZE, SIZE],
    "labels": LABELS,
    "input": "frame",
    "output": "logits",
    "state": [
        {"input": "h", "output": "h_next", "shape": [HIDDEN, SIZE, SIZE], "batch_axis": 0},
        {"input": "c", "output": "c_next", "shape": [HIDDEN, SIZE, SIZE], "batch_axis": 0},
    ],
}


class ConvLSTMFrames(nn.Module):
    """One ConvLSTM cell over the frame (pixels 0..255, scaled inside), mean-pooled to a head."""

    def __init__(self) -> None:
        super().__init__()
        self.gates = nn.Conv2d(CHANNELS + HIDDEN, 4 * HIDDEN, kernel_size=3, padding=1)
        self.head = nn.Linear(HIDDEN, len(LABELS))

    def forward(
        self, frame: torch.Tensor, h: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        i, f, g, o = self.gates(torch.cat([frame / 255.0, h], dim=1)).chunk(4, dim=1)
        c_next = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_next = torch.sigmoid(o) * torch.tanh(c_next)
        return self.head(h_next.mean(dim=(2, 3))), h_next, c_next


def build(out: str | Path, seed: int = 0) -> ModelCard:
    torch.manual_seed(seed)
    return export_module(ConvLSTMFrames(), CARD, out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    print(build(parser.parse_args().out).model_id)
