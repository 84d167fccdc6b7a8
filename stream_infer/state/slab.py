"""Per-entity carried state in slot-indexed slabs.

One slab per state tensor of the model contract (``contract.StateSpec``), each stored
batch-first, ``[S, *shape]`` (S = slot capacity). The batch of a step is gathered from them by
slot before the engine call, with the batch axis moved to where the graph takes it (``[L, B, Hd]``
for an LSTM's h and c), and scattered back after, so the engine itself never holds per-entity
data. The numpy store serves CPU engines; CUDA engines use the torch store in
``stream_infer.state.cuda_slab`` with the same methods, keeping the slabs on the GPU (it runs
on the CPU too, for a torch engine there: ``model.state_slab: torch``).

Thread-safety: owned by the engine thread; other threads touch it only while the pipeline is
drained (at a checkpoint or rebalance).
"""

from __future__ import annotations

from typing import Literal, Protocol

import numpy as np

from stream_infer.backends.base import Array
from stream_infer.model.contract import StateSpec, lstm_states


class StateSlab(Protocol):
    """What the pipeline needs from a state store, whatever device holds it."""

    capacity: int
    states: tuple[StateSpec, ...]

    def gather(self, slots: np.ndarray) -> tuple[Array, ...]:
        """Rows for ``slots`` [B], one tensor per state in the graph's layout, on the engine's
        device (copies)."""
        ...

    def scatter(self, slots: np.ndarray, *values: Array) -> None:
        """Write one tensor per state (graph layout) back to ``slots``; slots in one call are distinct."""
        ...

    def zero(self, slots: np.ndarray) -> None:
        """Reset rows to the zero state (new entity, reset after a gap, eviction)."""
        ...

    def read(self, slots: np.ndarray) -> tuple[np.ndarray, ...]:
        """Host float32 copies in the graph's layout, for changelog snapshots."""
        ...

    def write(self, slots: np.ndarray, *values: np.ndarray) -> None:
        """Load host tensors (graph layout), for restores from the changelog."""
        ...


class NumpyStateSlab:
    """Host-memory slabs for CPU engines. ``NumpyStateSlab(capacity, layers, hidden)`` is the
    (h, c) pair of an LSTM; ``states=`` any other contract."""

    def __init__(
        self, capacity: int, layers: int = 0, hidden: int = 0, states: tuple[StateSpec, ...] | None = None
    ) -> None:
        self.capacity = capacity
        self.states = states if states is not None else lstm_states(layers, hidden)
        self.slabs = [np.zeros((capacity, *s.shape), dtype=np.float32) for s in self.states]

    def gather(self, slots: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(
            np.ascontiguousarray(np.moveaxis(slab[slots], 0, s.batch_axis))
            for slab, s in zip(self.slabs, self.states, strict=True)
        )

    def scatter(self, slots: np.ndarray, *values: np.ndarray) -> None:
        for slab, s, v in zip(self.slabs, self.states, values, strict=True):
            slab[slots] = np.moveaxis(np.asarray(v), s.batch_axis, 0)

    def zero(self, slots: np.ndarray) -> None:
        for slab in self.slabs:
            slab[slots] = 0.0

    def read(self, slots: np.ndarray) -> tuple[np.ndarray, ...]:
        return self.gather(slots)

    def write(self, slots: np.ndarray, *values: np.ndarray) -> None:
        self.scatter(slots, *values)


SlabKind = Literal["auto", "numpy", "torch"]


def make_state_slab(
    device: str, capacity: int, states: tuple[StateSpec, ...], kind: SlabKind = "auto"
) -> StateSlab:
    """The slab that matches an engine's device: ``auto`` is host numpy for "cpu" and torch on
    "cuda:N"; ``torch`` keeps torch tensors on ``device`` whatever it is (a torch engine on the
    CPU); ``numpy`` host arrays (CPU engines only)."""
    if kind == "torch" or (kind == "auto" and device.startswith("cuda")):
        from stream_infer.state.cuda_slab import TorchStateSlab

        return TorchStateSlab(device, capacity, states=states)
    if device.startswith("cuda"):
        raise ValueError(f"a numpy state slab cannot serve an engine on {device}")
    return NumpyStateSlab(capacity, states=states)
