"""Offline references: the same engine applied to one entity's data hop by hop with carried state."""

from __future__ import annotations

from typing import Any

import numpy as np

from stream_infer.backends.base import Engine
from stream_infer.model.card import ModelCard
from stream_infer.model.datasets import hop_windows
from stream_infer.model.heads import softmax


def hop_by_hop(engine: Engine, card: ModelCard, values: np.ndarray) -> np.ndarray:
    """Scores [n_hops, K] for one entity's samples ``values [T, *sample_shape]``."""
    layers, hidden = card.state_shape
    h = np.zeros((layers, 1, hidden), np.float32)
    c = np.zeros_like(h)
    windows = values[:, None] if card.kind == "frame" else hop_windows(values, card.window, card.hop)
    out = []
    for w in windows:
        y, h, c = engine.infer(w.reshape(1, *card.input_shape).astype(np.float32), h, c)
        out.append(y[0])
    return np.asarray(out, dtype=np.float32).reshape(len(out), -1)


def hop_by_hop_any(engine: Engine, card: ModelCard, values: np.ndarray) -> np.ndarray:
    """``hop_by_hop`` for any state contract: every state pair of the card carried from zero."""
    states = [np.zeros(s.batched(1), np.float32) for s in card.states]
    windows = values[:, None] if card.kind == "frame" else hop_windows(values, card.window, card.hop)
    out = []
    for w in windows:
        y, *states = engine.infer(w.reshape(1, *card.input_shape).astype(np.float32), *states)
        out.append(y[0])
    return np.asarray(out, dtype=np.float32).reshape(len(out), -1)


def published(y: np.ndarray) -> np.ndarray:
    """The ``scores`` a classification head publishes for raw outputs ``y`` ([K] or [n, K]):
    probabilities (stream_infer/model/heads.py)."""
    y = np.asarray(y, dtype=np.float32)
    return softmax(y.reshape(-1, y.shape[-1])).reshape(y.shape)


def output_of(prediction: dict[str, Any]) -> list[float]:
    """The numbers a published prediction carries, whatever its head: classification
    probabilities, regression values (in the card's order) or the anomaly score."""
    head = prediction.get("head", "classification")
    if head == "regression":
        return list(prediction["values"].values())
    if head == "anomaly":
        return [prediction["score"]]
    return list(prediction["scores"])
