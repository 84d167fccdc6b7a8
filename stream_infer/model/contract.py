"""The model contract: which graph tensors carry an entity's state from one hop to the next.

A served graph takes the window (``x``) and any number of state tensors, and returns the head
(``y``) and the next value of each state tensor. Each state pair is named here with its shape per
entity (no batch axis) and where the graph puts the batch axis: an LSTM's ``h``/``c`` are
``[L, B, Hd]`` (batch axis 1), a GRU's ``h`` the same, a ConvLSTM's ``[B, C, H, W]`` (axis 0).
The state store keeps every tensor batch-first per entity slot and moves the batch axis to where
the graph wants it when it gathers a batch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StateSpec:
    """One state pair of the graph: ``input`` in, ``output`` out, per-entity ``shape``."""

    input: str
    output: str
    shape: tuple[int, ...]
    batch_axis: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.batch_axis <= len(self.shape):
            raise ValueError(
                f"state {self.input!r}: batch_axis {self.batch_axis} out of range for shape {self.shape}"
            )
        if any(d < 1 for d in self.shape):
            raise ValueError(f"state {self.input!r}: shape {list(self.shape)} has a dimension below 1")

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def batched(self, batch: int) -> tuple[int, ...]:
        """The graph's shape of this tensor for ``batch`` entities."""
        dims = list(self.shape)
        dims.insert(self.batch_axis, batch)
        return tuple(dims)


def lstm_states(layers: int, hidden: int) -> tuple[StateSpec, ...]:
    """The (h, c) pair of stream-infer's own CNN-LSTM: ``h0``/``c0`` in, ``hn``/``cn`` out."""
    return (
        StateSpec("h0", "hn", (layers, hidden), 1),
        StateSpec("c0", "cn", (layers, hidden), 1),
    )


def is_lstm_pair(states: tuple[StateSpec, ...]) -> bool:
    """Whether ``states`` is exactly the (h, c) pair ``lstm_states`` makes (changelog format 1)."""
    return len(states) == 2 and len(states[0].shape) == 2 and states == lstm_states(*states[0].shape)
