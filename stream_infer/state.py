"""Per-entity LSTM state in slot-indexed slabs.

``h`` and ``c`` are ``[L, S, Hd]`` slabs (S = slot capacity). The batch of a step is gathered
from them by slot before the engine call and scattered back after, so the engine itself never
holds per-entity data. The numpy store serves CPU engines; CUDA engines use the torch store in
``stream_infer.backends.cuda_state`` with the same methods, keeping the slab on the GPU.

Thread-safety: owned by the engine thread; other threads touch it only while the pipeline is
drained (at a checkpoint or rebalance).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from stream_infer.backends.base import Array


class StateSlab(Protocol):
    """What the pipeline needs from a state store, whatever device holds it."""

    capacity: int
    layers: int
    hidden: int

    def gather(self, slots: np.ndarray) -> tuple[Array, Array]:
        """Rows for ``slots`` [B] as (h, c) [L, B, Hd] on the engine's device (copies)."""
        ...

    def scatter(self, slots: np.ndarray, h: Array, c: Array) -> None:
        """Write (h, c) [L, B, Hd] back to ``slots`` [B]; slots in one call are distinct."""
        ...

    def zero(self, slots: np.ndarray) -> None:
        """Reset rows to the zero state (new entity, reset after a gap, eviction)."""
        ...

    def read(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Host copies [L, B, Hd] float32, for changelog snapshots."""
        ...

    def write(self, slots: np.ndarray, h: np.ndarray, c: np.ndarray) -> None:
        """Load host rows [L, B, Hd], for restores from the changelog."""
        ...


class NumpyStateSlab:
    """Host-memory slab for CPU engines."""

    def __init__(self, capacity: int, layers: int, hidden: int) -> None:
        self.capacity = capacity
        self.layers = layers
        self.hidden = hidden
        self.h = np.zeros((layers, capacity, hidden), dtype=np.float32)
        self.c = np.zeros((layers, capacity, hidden), dtype=np.float32)

    def gather(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (np.ascontiguousarray(self.h[:, slots]), np.ascontiguousarray(self.c[:, slots]))

    def scatter(self, slots: np.ndarray, h: np.ndarray, c: np.ndarray) -> None:
        self.h[:, slots] = h
        self.c[:, slots] = c

    def zero(self, slots: np.ndarray) -> None:
        self.h[:, slots] = 0.0
        self.c[:, slots] = 0.0

    def read(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.gather(slots)

    def write(self, slots: np.ndarray, h: np.ndarray, c: np.ndarray) -> None:
        self.scatter(slots, h, c)


def make_state_slab(device: str, capacity: int, layers: int, hidden: int) -> StateSlab:
    """The slab that matches an engine's device: host numpy for "cpu", torch on "cuda:N"."""
    if device.startswith("cuda"):
        from stream_infer.backends.cuda_state import CudaStateSlab

        return CudaStateSlab(device, capacity, layers, hidden)
    return NumpyStateSlab(capacity, layers, hidden)
