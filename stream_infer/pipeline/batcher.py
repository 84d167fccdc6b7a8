"""Size-or-deadline batching of completed windows into engine calls.

A batch is flushed when ``max_batch`` windows are pending or the oldest has waited
``max_wait_ms``. One engine call steps each entity at most once (its state is an input), so a
batch holds distinct slots; an entity's later windows wait for the next batch, which keeps
per-entity order. Only the head of the queue is merged per call, so a long backlog costs
O(max_batch) per batch, not O(backlog).
"""

from __future__ import annotations

from collections import deque

import numpy as np

from stream_infer.records import WindowBatch


class Batcher:
    def __init__(self, max_batch: int, max_wait_ms: float) -> None:
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self._queue: deque[WindowBatch] = deque()
        self.pending = 0

    def add(self, wb: WindowBatch) -> None:
        if len(wb):
            self._queue.append(wb)
            self.pending += len(wb)

    def deadline(self) -> float | None:
        """Monotonic time by which the oldest pending window must be flushed."""
        if not self._queue:
            return None
        return float(self._queue[0].enqueued_s.min()) + self.max_wait_s

    def ready(self, now_s: float) -> bool:
        d = self.deadline()
        return d is not None and (self.pending >= self.max_batch or now_s >= d)

    def take(self) -> WindowBatch | None:
        """Up to ``max_batch`` pending windows with distinct slots, earliest first."""
        if not self._queue:
            return None
        head: list[WindowBatch] = []
        n = 0
        while self._queue and n < self.max_batch:
            c = self._queue.popleft()
            head.append(c)
            n += len(c)
        merged = WindowBatch.concat(head)
        _, first = np.unique(merged.slots, return_index=True)
        first.sort()
        take = first[: self.max_batch]
        batch = merged.select(take) if len(take) < len(merged) else merged
        if len(take) < len(merged):
            keep = np.ones(len(merged), dtype=bool)
            keep[take] = False
            self._queue.appendleft(merged.select(np.flatnonzero(keep)))
        self.pending -= len(batch)
        return batch
