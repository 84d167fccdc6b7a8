"""Per-entity sliding windows (length W, hop k) in slot-indexed arrays.

For each slot the store keeps the last W samples of the entity's current segment (``tail``), how
many samples the segment holds (``count``), and the last accepted ``seq``. ``push`` takes a whole
poll's samples for many entities and returns every window that completed a hop, in per-entity
order, with all work vectorised:

1. samples are grouped by slot (stable, so arrival order holds within an entity);
2. per entity, a sample whose seq is not above the last accepted one is dropped (duplicate or
   older), and a forward jump larger than ``max_seq_gap`` starts a new segment: window and LSTM
   state reset (the window that completes first after it is flagged ``fresh``);
3. each touched entity's tail and new samples are laid out contiguously in one flat buffer, and
   every completed window is one fancy-indexed slice of it; the new tails are sliced likewise.

A window completes at the segment's sample number ``a`` (0-based) when ``a + 1 >= W`` and
``(a + 1 - W) % k == 0``: the first after W samples, then every k.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from stream_infer.records import WindowBatch

NO_SEQ = -1


@dataclass(frozen=True, slots=True)
class PushStats:
    duplicates: int  # samples whose seq was not above the entity's last seq
    resets: int  # segments restarted by a seq gap


class WindowStore:
    def __init__(
        self, capacity: int, window: int, hop: int, sample_shape: tuple[int, ...], max_seq_gap: int
    ) -> None:
        self.window = window
        self.hop = hop
        self.sample_shape = sample_shape
        self.max_seq_gap = max_seq_gap
        self.tail = np.zeros((capacity, window, *sample_shape), dtype=np.float32)  # [S, W, *shape]
        self.count = np.zeros(capacity, dtype=np.int64)  # samples in the current segment
        self.last_seq = np.full(capacity, NO_SEQ, dtype=np.int64)
        self.last_event_ms = np.zeros(capacity, dtype=np.int64)
        self.fresh = np.ones(capacity, dtype=bool)  # next window starts from zero state

    def reset(self, slots: np.ndarray) -> None:
        """Forget the slots' samples (eviction, revocation, version change)."""
        self.count[slots] = 0
        self.last_seq[slots] = NO_SEQ
        self.fresh[slots] = True

    def push(
        self,
        slots: np.ndarray,
        seq: np.ndarray,
        event_ms: np.ndarray,
        values: np.ndarray,
        entities: list[str],
        trace: list[bytes | None] | None = None,
    ) -> tuple[WindowBatch, PushStats]:
        """Append samples ([N] slots/seq/event_ms, values [N, *shape]) in arrival order."""
        n = len(slots)
        if n == 0:
            return self._empty(), PushStats(0, 0)
        order = np.argsort(slots, kind="stable")
        s_slot, s_seq = slots[order], seq[order]
        start = np.ones(n, dtype=bool)
        start[1:] = s_slot[1:] != s_slot[:-1]
        prev = np.empty(n, dtype=np.int64)
        prev[1:] = s_seq[:-1]
        prev[start] = self.last_seq[s_slot[start]]
        accept = s_seq > prev
        gap = (s_seq - prev > self.max_seq_gap) & (prev != NO_SEQ)
        if not accept.all():
            accept, gap = self._slow_seq(s_slot, s_seq, start)
        duplicates = int(n - accept.sum())
        if duplicates:
            order, s_slot, s_seq, gap = order[accept], s_slot[accept], s_seq[accept], gap[accept]
            n = len(order)
            if n == 0:
                return self._empty(), PushStats(duplicates, 0)
            start = np.ones(n, dtype=bool)
            start[1:] = s_slot[1:] != s_slot[:-1]
        # Per-group rank and per-segment sample number.
        idx = np.arange(n)
        g_start = np.maximum.accumulate(np.where(start, idx, 0))
        rank = idx - g_start  # position of the sample among its entity's new samples
        seg_start = start | gap
        s_start = np.maximum.accumulate(np.where(seg_start, idx, 0))
        carried = ~gap[s_start]  # segment continues the entity's stored one
        a = idx - s_start + np.where(carried, self.count[s_slot], 0)
        done = (a + 1 >= self.window) & ((a + 1 - self.window) % self.hop == 0)
        # Flat layout: per touched slot, W tail samples then its new samples.
        touched = s_slot[start]  # [T]
        n_new = np.diff(np.append(np.flatnonzero(start), n))  # [T]
        base = np.concatenate(([0], np.cumsum(n_new + self.window)[:-1]))  # [T]
        t_of = np.cumsum(start) - 1  # [n] row of each sample
        flat = np.empty((int(n_new.sum()) + len(touched) * self.window, *self.sample_shape), np.float32)
        w = np.arange(self.window)
        flat[(base[:, None] + w).ravel()] = self.tail[touched].reshape(-1, *self.sample_shape)
        flat[base[t_of] + self.window + rank] = values[order]
        # Completed windows: the W samples ending at each completing sample.
        c = np.flatnonzero(done)
        x = flat[(base[t_of[c]] + rank[c] + 1)[:, None] + w]  # [M, W, *shape]
        # fresh: the first window of a segment that began with a reset, or of a fresh slot.
        seg_is_new = ~carried | self.fresh[s_slot]
        first_done = np.zeros(n, dtype=bool)
        if len(c):
            c_seg = s_start[c]
            first = np.ones(len(c), dtype=bool)
            first[1:] = c_seg[1:] != c_seg[:-1]
            first_done[c[first]] = True
        fresh = first_done[c] & seg_is_new[c]
        # New per-slot state: tails, counts, last seq/time, pending fresh flag.
        last = np.append(np.flatnonzero(start)[1:], n) - 1  # last sample of each group
        self.tail[touched] = flat[(base + n_new)[:, None] + w]
        self.count[touched] = a[last] + 1
        self.last_seq[touched] = s_seq[last]
        s_event = event_ms[order]
        self.last_event_ms[touched] = s_event[last]
        # A slot stays fresh until it emits a window of a new segment.
        seg_last = s_start[last]
        had_window = np.zeros(n, dtype=bool)
        had_window[s_start[c]] = True
        self.fresh[touched] = seg_is_new[last] & ~had_window[seg_last]
        resets = int(gap.sum())
        # Arrival order across entities (per-entity order is kept either way).
        arrival = np.argsort(order[c], kind="stable")
        c = c[arrival]
        slots_c = s_slot[c]
        src = order[c].tolist()  # input index of each window's last sample
        batch = WindowBatch(
            slots=slots_c,
            entities=[entities[i] for i in src],
            seq=s_seq[c],
            event_ms=s_event[c],
            fresh=fresh[arrival],
            x=x[arrival],
            enqueued_s=time.monotonic(),
            trace=None if trace is None else [trace[i] for i in src],
        )
        return batch, PushStats(duplicates, resets)

    def _slow_seq(
        self, s_slot: np.ndarray, s_seq: np.ndarray, start: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact per-sample seq rules, for polls with duplicates or reordering (rare)."""
        accept = np.zeros(len(s_seq), dtype=bool)
        gap = np.zeros(len(s_seq), dtype=bool)
        last = NO_SEQ
        for i, (slot, sq, st) in enumerate(zip(s_slot.tolist(), s_seq.tolist(), start.tolist(), strict=True)):
            if st:
                last = int(self.last_seq[slot])
            if sq > last:
                accept[i] = True
                gap[i] = last != NO_SEQ and sq - last > self.max_seq_gap
                last = sq
        return accept, gap

    def _empty(self) -> WindowBatch:
        return WindowBatch(
            np.empty(0, np.int64),
            [],
            np.empty(0, np.int64),
            np.empty(0, np.int64),
            np.empty(0, bool),
            np.empty((0, self.window, *self.sample_shape), np.float32),
            time.monotonic(),
        )
