"""Size-or-deadline batching of completed windows into engine calls.

A batch is flushed when ``max_batch`` windows are pending or the oldest has waited
``max_wait_ms``. One engine call steps each entity at most once (its state is an input), so a
batch holds distinct slots; an entity's later windows wait for the next batch, which keeps
per-entity order. Only the head of the queue is merged per call, so a long backlog costs
O(max_batch) per batch, not O(backlog).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from stream_infer.records import WindowBatch, concat_trace


@dataclass(frozen=True, slots=True)
class Chunk:
    slots: np.ndarray  # [M] int64
    entities: list[str]
    seq: np.ndarray  # [M] int64
    event_ms: np.ndarray  # [M] int64
    fresh: np.ndarray  # [M] bool
    x: np.ndarray  # [M, W, *shape] float32
    enqueued_s: np.ndarray  # [M] float64 monotonic
    trace: list[bytes | None] | None = None  # [M] traceparent to publish with each prediction

    def __len__(self) -> int:
        return len(self.slots)

    @classmethod
    def of(cls, wb: WindowBatch) -> Chunk:
        return cls(
            wb.slots,
            wb.entities,
            wb.seq,
            wb.event_ms,
            wb.fresh,
            wb.x,
            np.full(len(wb), wb.enqueued_s),
            wb.trace,
        )

    def select(self, idx: np.ndarray) -> Chunk:
        return Chunk(
            self.slots[idx],
            [self.entities[i] for i in idx.tolist()],
            self.seq[idx],
            self.event_ms[idx],
            self.fresh[idx],
            self.x[idx],
            self.enqueued_s[idx],
            None if self.trace is None else [self.trace[i] for i in idx.tolist()],
        )

    @staticmethod
    def concat(chunks: list[Chunk]) -> Chunk:
        if len(chunks) == 1:
            return chunks[0]
        return Chunk(
            np.concatenate([c.slots for c in chunks]),
            [e for c in chunks for e in c.entities],
            np.concatenate([c.seq for c in chunks]),
            np.concatenate([c.event_ms for c in chunks]),
            np.concatenate([c.fresh for c in chunks]),
            np.concatenate([c.x for c in chunks]),
            np.concatenate([c.enqueued_s for c in chunks]),
            concat_trace([c.trace for c in chunks], [len(c) for c in chunks]),
        )


class Batcher:
    def __init__(self, max_batch: int, max_wait_ms: float) -> None:
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self._chunks: deque[Chunk] = deque()
        self.pending = 0

    def add(self, wb: WindowBatch) -> None:
        if len(wb):
            self._chunks.append(Chunk.of(wb))
            self.pending += len(wb)

    def deadline(self) -> float | None:
        """Monotonic time by which the oldest pending window must be flushed."""
        if not self._chunks:
            return None
        return float(self._chunks[0].enqueued_s.min()) + self.max_wait_s

    def ready(self, now_s: float) -> bool:
        d = self.deadline()
        return d is not None and (self.pending >= self.max_batch or now_s >= d)

    def take(self) -> Chunk | None:
        """Up to ``max_batch`` pending windows with distinct slots, earliest first."""
        if not self._chunks:
            return None
        head: list[Chunk] = []
        n = 0
        while self._chunks and n < self.max_batch:
            c = self._chunks.popleft()
            head.append(c)
            n += len(c)
        merged = Chunk.concat(head)
        _, first = np.unique(merged.slots, return_index=True)
        first.sort()
        take = first[: self.max_batch]
        batch = merged.select(take) if len(take) < len(merged) else merged
        if len(take) < len(merged):
            keep = np.ones(len(merged), dtype=bool)
            keep[take] = False
            self._chunks.appendleft(merged.select(np.flatnonzero(keep)))
        self.pending -= len(batch)
        return batch
