"""Per-entity LSTM state kept on the GPU for CUDA engines (same methods as ``NumpyStateSlab``).

Slabs are ``[L, S, Hd]`` float32 torch tensors; a step gathers rows by slot with
``index_select`` and scatters them back with ``index_copy_``, so (h, c) never cross PCIe on the
hot path. Only snapshots (``read``) and restores (``write``) touch the host.
"""

from __future__ import annotations

import numpy as np
import torch


class CudaStateSlab:
    def __init__(self, device: str, capacity: int, layers: int, hidden: int) -> None:
        self.device = torch.device(device)
        self.capacity = capacity
        self.layers = layers
        self.hidden = hidden
        self.h = torch.zeros(layers, capacity, hidden, dtype=torch.float32, device=self.device)
        self.c = torch.zeros(layers, capacity, hidden, dtype=torch.float32, device=self.device)

    def _index(self, slots: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(slots, dtype=np.int64)).to(
            self.device, non_blocking=True
        )

    def gather(self, slots: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(h, c) [L, B, Hd] on the device, copies of the rows for ``slots``."""
        idx = self._index(slots)
        return self.h.index_select(1, idx), self.c.index_select(1, idx)

    def scatter(self, slots: np.ndarray, h: torch.Tensor, c: torch.Tensor) -> None:
        idx = self._index(slots)
        self.h.index_copy_(1, idx, h.to(self.device, torch.float32))
        self.c.index_copy_(1, idx, c.to(self.device, torch.float32))

    def zero(self, slots: np.ndarray) -> None:
        idx = self._index(slots)
        self.h.index_fill_(1, idx, 0.0)
        self.c.index_fill_(1, idx, 0.0)

    def read(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, c = self.gather(slots)
        return h.cpu().numpy(), c.cpu().numpy()

    def write(self, slots: np.ndarray, h: np.ndarray, c: np.ndarray) -> None:
        self.scatter(
            slots,
            torch.from_numpy(np.asarray(h, dtype=np.float32)),
            torch.from_numpy(np.asarray(c, dtype=np.float32)),
        )
