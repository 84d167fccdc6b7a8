"""Per-entity carried state in torch tensors on the engine's device (same methods as
``NumpyStateSlab``): the GPU for CUDA engines, or the CPU (``model.state_slab: torch`` with
``backend: torch``, and the tests that check this path on machines without a GPU).

One batch-first ``[S, *shape]`` float32 torch tensor per state; a step gathers rows by slot with
``index_select`` (then moves the batch axis where the graph takes it) and scatters them back
with ``index_copy_``, so on a GPU state never crosses PCIe on the hot path. Only snapshots
(``read``) and restores (``write``) touch the host.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from stream_infer.model.contract import StateSpec, lstm_states


class TorchStateSlab:
    def __init__(
        self,
        device: str,
        capacity: int,
        layers: int = 0,
        hidden: int = 0,
        states: tuple[StateSpec, ...] | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.capacity = capacity
        self.states = states if states is not None else lstm_states(layers, hidden)
        self.slabs = [
            torch.zeros(capacity, *s.shape, dtype=torch.float32, device=self.device) for s in self.states
        ]

    def _index(self, slots: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(slots, dtype=np.int64)).to(
            self.device, non_blocking=True
        )

    def gather(self, slots: np.ndarray) -> tuple[torch.Tensor, ...]:
        """One tensor per state in the graph's layout, on the device (copies of the rows)."""
        idx = self._index(slots)
        return tuple(
            slab.index_select(0, idx).movedim(0, s.batch_axis).contiguous()
            for slab, s in zip(self.slabs, self.states, strict=True)
        )

    def scatter(self, slots: np.ndarray, *values: Any) -> None:
        """``values``: torch tensors (any device) or numpy arrays, in the graph's layout."""
        idx = self._index(slots)
        for slab, s, v in zip(self.slabs, self.states, values, strict=True):
            t = _tensor(v).to(self.device, torch.float32)
            slab.index_copy_(0, idx, t.movedim(s.batch_axis, 0))

    def zero(self, slots: np.ndarray) -> None:
        idx = self._index(slots)
        for slab in self.slabs:
            slab.index_fill_(0, idx, 0.0)

    def read(self, slots: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(t.cpu().numpy() for t in self.gather(slots))

    def write(self, slots: np.ndarray, *values: np.ndarray) -> None:
        self.scatter(slots, *values)


def _tensor(v: Any) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v
    # a read-only array (a decoded changelog record) is copied: torch wants writable memory
    return torch.from_numpy(np.require(v, np.float32, "W"))


CudaStateSlab = TorchStateSlab  # its name when it served CUDA engines only
