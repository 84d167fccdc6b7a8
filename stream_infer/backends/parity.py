"""Backend parity: run two engines on the same inputs and report the largest differences.

Used by ``engines/verify_parity.py`` and the tests. Inputs are random (on the training data's
scale) and real (BasicMotions test windows or LFW frames), with random carried state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from stream_infer.backends.base import Array, Engine
from stream_infer.model.card import ModelCard


@dataclass(frozen=True)
class ParityReport:
    inputs: str  # "random" or "real"
    batch: int
    max_abs_diff: dict[str, float]  # per output: y, hn, cn

    @property
    def worst(self) -> float:
        return max(self.max_abs_diff.values())


def to_engine(arr: np.ndarray, engine: Engine) -> Array:
    """Host float32 array -> what ``engine.infer`` takes (numpy, or a torch tensor on CUDA)."""
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if engine.spec.device.startswith("cuda"):
        import torch

        return torch.from_numpy(arr).to(engine.spec.device)
    return arr


def to_host(out: Any) -> np.ndarray:
    return out.detach().cpu().numpy() if hasattr(out, "detach") else np.asarray(out)


def real_inputs(card: ModelCard, batch: int, seed: int = 0) -> np.ndarray:
    """``[batch, *input_shape]`` real items: BasicMotions hop windows or LFW frames."""
    from stream_infer.model import datasets

    rng = np.random.default_rng(seed)
    if card.kind == "frame":
        frames = datasets.lfw_frames().images
        if tuple(frames.shape[1:]) != card.input_shape:
            c, h, w = card.input_shape
            video = datasets.video_frames(size=(h, w), n=256, gray=c == 1).astype(np.float32)
            frames = video[:, None] if c == 1 else video.transpose(0, 3, 1, 2)
        pool = frames
    else:
        recs = datasets.basic_motions()
        if recs.n_channels != card.sample_shape[0]:
            raise ValueError(
                f"real inputs are BasicMotions ({recs.n_channels} channels); "
                f"model takes {card.sample_shape[0]}"
            )
        pool = np.concatenate([datasets.hop_windows(v, card.window, card.hop) for v in recs.values])
    return np.ascontiguousarray(pool[rng.integers(0, len(pool), size=batch)], dtype=np.float32)


def random_inputs(card: ModelCard, batch: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *card.input_shape)).astype(np.float32)
    if card.norm_mean:
        shape = (-1, 1, 1) if card.kind == "frame" else (-1,)
        x = x * np.asarray(card.norm_std, np.float32).reshape(shape) + np.asarray(
            card.norm_mean, np.float32
        ).reshape(shape)
    return x


def compare(
    a: Engine, b: Engine, card: ModelCard, batches: tuple[int, ...] = (1, 7, 256), seed: int = 0
) -> list[ParityReport]:
    """Both engines on random and real inputs with random state, for each batch size."""
    rng = np.random.default_rng(seed)
    layers, hidden = card.state_shape
    reports = []
    for kind in ("random", "real"):
        for batch in batches:
            x = random_inputs(card, batch, seed) if kind == "random" else real_inputs(card, batch, seed)
            h0 = (0.5 * rng.standard_normal((layers, batch, hidden))).astype(np.float32)
            c0 = (0.5 * rng.standard_normal((layers, batch, hidden))).astype(np.float32)
            out_a = a.infer(to_engine(x, a), to_engine(h0, a), to_engine(c0, a))
            out_b = b.infer(to_engine(x, b), to_engine(h0, b), to_engine(c0, b))
            diff = {
                name: float(np.abs(to_host(p) - to_host(q)).max())
                for name, p, q in zip(("y", "hn", "cn"), out_a, out_b, strict=True)
            }
            reports.append(ParityReport(kind, batch, diff))
    return reports
