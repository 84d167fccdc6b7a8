"""Records that flow through the pipeline, one batch at a time.

Every record is a frozen, slotted dataclass holding numpy arrays for a whole batch, so the hot
path works column-wise instead of on one Python object per event.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class SampleBatch:
    """Decoded samples in arrival order, possibly many per message and many per entity."""

    entities: list[str]  # [N] entity id of each sample
    seq: np.ndarray  # [N] int64 per-entity sequence number
    event_ms: np.ndarray  # [N] int64 event time, ms since the epoch
    values: np.ndarray  # [N, *sample_shape] float32
    partition: np.ndarray  # [N] int32 source partition
    # [N] W3C ``traceparent`` of each sample's message; None when no message of the batch had one
    trace: list[bytes | None] | None = None
    # [N] bool: the producer says a new segment starts at this sample; None when none does
    reset: np.ndarray | None = None
    # [N] int64 input offset of each sample's message (None: not from Kafka, e.g. a replay file)
    offset: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.entities)

    @staticmethod
    def concat(batches: list[SampleBatch]) -> SampleBatch:
        return SampleBatch(
            [e for b in batches for e in b.entities],
            np.concatenate([b.seq for b in batches]),
            np.concatenate([b.event_ms for b in batches]),
            np.concatenate([b.values for b in batches]),
            np.concatenate([b.partition for b in batches]),
            concat_trace([b.trace for b in batches], [len(b) for b in batches]),
            None
            if all(b.reset is None for b in batches)
            else np.concatenate([np.zeros(len(b), bool) if b.reset is None else b.reset for b in batches]),
            None
            if any(b.offset is None for b in batches)
            else np.concatenate([b.offset for b in batches if b.offset is not None]),
        )

    def where(self, keep: np.ndarray) -> SampleBatch:
        """The samples where ``keep`` [N] bool is true, in order."""
        idx = np.flatnonzero(keep)
        pos = idx.tolist()
        return SampleBatch(
            [self.entities[i] for i in pos],
            self.seq[idx],
            self.event_ms[idx],
            self.values[idx],
            self.partition[idx],
            None if self.trace is None else [self.trace[i] for i in pos],
            None if self.reset is None else self.reset[idx],
            None if self.offset is None else self.offset[idx],
        )

    def part(self, lo: int, hi: int) -> SampleBatch:
        """Samples ``lo:hi`` (views, no copies)."""
        if lo == 0 and hi == len(self):
            return self
        return SampleBatch(
            self.entities[lo:hi],
            self.seq[lo:hi],
            self.event_ms[lo:hi],
            self.values[lo:hi],
            self.partition[lo:hi],
            None if self.trace is None else self.trace[lo:hi],
            None if self.reset is None else self.reset[lo:hi],
            None if self.offset is None else self.offset[lo:hi],
        )


@dataclass(frozen=True, slots=True)
class WindowBatch:
    """Windows that completed a hop, in per-entity order; one entity may appear several times.

    The one shape of a hop's windows from the window store through the batcher and the engine
    to the sink: the batcher merges and splits them (``concat``, ``select``), the sink publishes
    one prediction per window."""

    slots: np.ndarray  # [M] int64 slot of each window's entity
    entities: list[str]  # [M]
    seq: np.ndarray  # [M] int64 seq of the window's last sample
    event_ms: np.ndarray  # [M] int64 event time of the window's last sample
    fresh: np.ndarray  # [M] bool: start from zero state (new entity or reset)
    x: np.ndarray  # [M, W, *sample_shape] float32
    enqueued_s: np.ndarray  # [M] float64 monotonic time each window left the window store
    trace: list[bytes | None] | None = None  # [M] traceparent of the window's last sample

    def __len__(self) -> int:
        return len(self.entities)

    def select(self, idx: np.ndarray) -> WindowBatch:
        """The windows at ``idx`` (int64 positions), in that order."""
        pos = idx.tolist()
        return WindowBatch(
            self.slots[idx],
            [self.entities[i] for i in pos],
            self.seq[idx],
            self.event_ms[idx],
            self.fresh[idx],
            self.x[idx],
            self.enqueued_s[idx],
            None if self.trace is None else [self.trace[i] for i in pos],
        )

    @staticmethod
    def concat(batches: list[WindowBatch]) -> WindowBatch:
        if len(batches) == 1:
            return batches[0]
        return WindowBatch(
            np.concatenate([b.slots for b in batches]),
            [e for b in batches for e in b.entities],
            np.concatenate([b.seq for b in batches]),
            np.concatenate([b.event_ms for b in batches]),
            np.concatenate([b.fresh for b in batches]),
            np.concatenate([b.x for b in batches]),
            np.concatenate([b.enqueued_s for b in batches]),
            concat_trace([b.trace for b in batches], [len(b) for b in batches]),
        )


@dataclass(frozen=True, slots=True)
class InvalidMessage:
    """A message that failed decoding; goes to the dead-letter topic with its reason."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    reason: str
    detail: str


def concat_trace(traces: list[list[bytes | None] | None], sizes: list[int]) -> list[bytes | None] | None:
    """The trace columns of consecutive batches as one (None when none has any)."""
    if all(t is None for t in traces):
        return None
    out: list[bytes | None] = []
    for t, n in zip(traces, sizes, strict=True):
        out.extend([None] * n if t is None else t)
    return out
