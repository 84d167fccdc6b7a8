"""Per-entity sliding windows (length W, hop k) in slot-indexed arrays, and the sequence rules.

For each slot the store keeps the last W samples of the entity's current segment (``tail``), how
many samples the segment holds (``count``), the last accepted ``seq`` and the ``anchor`` (below).
``push`` takes a whole poll's samples for many entities and returns every window that completed
a hop, in per-entity order:

1. samples are grouped by slot (stable, so arrival order holds within an entity);
2. the sequence rules (``SeqRules``) decide, per sample, to continue the segment, start a new one
   (window and LSTM state from zero; its first window is flagged ``fresh``) or drop it. Entities
   whose samples all simply continue (the common case) are decided column-wise; only the
   entities with a drop, a jump or a reset in this poll go through the per-sample loop;
3. each touched entity's tail and new samples are laid out contiguously in one flat buffer, and
   every completed window is one fancy-indexed slice of it; the new tails are sliced likewise.

A window completes at the segment's sample number ``a`` (0-based) when ``a + 1 >= W`` and
``(a + 1 - W) % k == 0``: the first after W samples, then every k.

The sequence rules, per sample, with ``d = seq - last`` (G = ``max_seq_gap``, R = ``max_seq_rewind``,
R < G), in this order:

* ``reset`` set by the producer: a new segment (``explicit_reset``);
* the entity's first sample: the segment starts;
* ``0 < d <= G``: the segment continues;
* ``-R <= d <= 0``: dropped (``duplicate_seq`` when d = 0, else ``older_seq``): a reordering
  or a resend within tolerance;
* ``d > G`` (a forward jump) or ``d < -R`` (a rewind: a device whose counter restarted, a replay,
  a wrapped counter): a new segment, ``seq_gap`` or ``seq_restart``; except that when the
  current segment is one lone sample that itself began with a jump, and this sample continues the
  stream from before that jump (``anchor < seq <= anchor + G``), the lone sample was an isolated
  outlier and the reason is ``seq_outlier``.

``anchor`` is the last seq of the segment before the current one when the current one began with
a jump (and ``NO_SEQ`` otherwise). Worst cases: a restart whose rewind exceeds R costs the new
segment's warm-up (W - 1 samples without a window); one within R drops at most R + 1 samples,
then continues. An isolated far-future (or far-past) ``seq`` starts a one-sample segment; the
next genuine sample is then a jump of more than R the other way and starts a new segment: the
entity loses its carried state and one warm-up, never more. R defaults to W - 2 (at least 0,
below G), so both worst cases are one window's warm-up.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from stream_infer.records import WindowBatch

NO_SEQ = -1


DROPS = ("duplicate_seq", "older_seq", "replayed")
SEGMENTS = ("seq_gap", "seq_restart", "seq_outlier", "explicit_reset")
_DUP, _OLDER, _REPLAYED = 0, 1, 2
_GAP, _RESTART, _OUTLIER, _RESET = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class PushStats:
    dropped: tuple[int, ...] = (0, 0, 0)  # samples dropped, per ``DROPS`` reason
    segments: tuple[int, ...] = (0, 0, 0, 0)  # new segments started, per ``SEGMENTS`` reason
    # (entity, reason, last seq, seq) of each restart or outlier: the caller logs them
    events: tuple[tuple[str, str, int, int], ...] = ()

    @property
    def duplicates(self) -> int:
        return sum(self.dropped)

    @property
    def resets(self) -> int:
        return sum(self.segments)


def default_rewind(window: int, max_seq_gap: int) -> int:
    """The default ``max_seq_rewind``: W - 2, so that a restart within it drops at most one
    warm-up's worth of samples (W - 1); never below 0 and always below ``max_seq_gap`` (an
    outlier's far jump must be followed by a restart, not by drops)."""
    return max(0, min(window - 2, max_seq_gap - 1))


class WindowStore:
    def __init__(
        self,
        capacity: int,
        window: int,
        hop: int,
        sample_shape: tuple[int, ...],
        max_seq_gap: int,
        max_seq_rewind: int | None = None,
    ) -> None:
        self.window = window
        self.hop = hop
        self.sample_shape = sample_shape
        self.max_seq_gap = max_seq_gap
        self.max_seq_rewind = (
            default_rewind(window, max_seq_gap) if max_seq_rewind is None else max_seq_rewind
        )
        if not 0 <= self.max_seq_rewind < max_seq_gap:
            raise ValueError(
                f"max_seq_rewind {self.max_seq_rewind} must lie in [0, max_seq_gap {max_seq_gap})"
            )
        self.tail = np.zeros((capacity, window, *sample_shape), dtype=np.float32)  # [S, W, *shape]
        self.count = np.zeros(capacity, dtype=np.int64)  # samples in the current segment
        self.last_seq = np.full(capacity, NO_SEQ, dtype=np.int64)
        self.last_event_ms = np.zeros(capacity, dtype=np.int64)
        self.fresh = np.ones(capacity, dtype=bool)  # next window starts from zero state
        self.anchor = np.full(capacity, NO_SEQ, dtype=np.int64)  # see the module docstring
        # Input offset of the last sample the slot's state has seen (-1: none or unknown): input
        # read again after a restart or a rebalance is recognised by offset, never taken for a
        # device's restart however far back its seq lies.
        self.last_offset = np.full(capacity, NO_SEQ, dtype=np.int64)

    def reset(self, slots: np.ndarray) -> None:
        """Forget the slots' samples (eviction, revocation, version change)."""
        self.count[slots] = 0
        self.last_seq[slots] = NO_SEQ
        self.fresh[slots] = True
        self.anchor[slots] = NO_SEQ
        self.last_offset[slots] = NO_SEQ

    def push(
        self,
        slots: np.ndarray,
        seq: np.ndarray,
        event_ms: np.ndarray,
        values: np.ndarray,
        entities: list[str],
        trace: list[bytes | None] | None = None,
        reset: np.ndarray | None = None,
        offset: np.ndarray | None = None,
    ) -> tuple[WindowBatch, PushStats]:
        """Append samples ([N] slots/seq/event_ms, values [N, *shape]; ``reset`` [N] bool: the
        producer says a new segment starts at that sample; ``offset`` [N]: each sample's input
        offset) in arrival order."""
        n = len(slots)
        if n == 0:
            return self._empty(), PushStats()
        order = np.argsort(slots, kind="stable")
        s_slot, s_seq = slots[order], seq[order]
        start = np.ones(n, dtype=bool)
        start[1:] = s_slot[1:] != s_slot[:-1]
        replayed = 0
        if offset is not None:
            # Samples at or below the offset the state has seen are already in it (input read
            # again from the committed offset after a restart or rebalance): dropped first.
            s_off = offset[order]
            seen = s_off <= self.last_offset[s_slot]
            last_of = np.append(np.flatnonzero(start)[1:], n) - 1
            ends = s_slot[last_of]
            self.last_offset[ends] = np.maximum(self.last_offset[ends], s_off[last_of])
            replayed = int(seen.sum())
            if replayed:
                keep = ~seen
                order, s_slot, s_seq = order[keep], s_slot[keep], s_seq[keep]
                n = len(order)
                if n == 0:
                    return self._empty(), PushStats(dropped=(0, 0, replayed))
                start = np.ones(n, dtype=bool)
                start[1:] = s_slot[1:] != s_slot[:-1]
        prev = np.empty(n, dtype=np.int64)
        prev[1:] = s_seq[:-1]
        prev[start] = self.last_seq[s_slot[start]]
        d = s_seq - prev
        # Regular: continues the segment (or is an entity's first sample, with no reset).
        irregular = ((d <= 0) | (d > self.max_seq_gap)) & (prev != NO_SEQ)
        if reset is not None:
            irregular |= reset[order]
        accept = np.ones(n, dtype=bool)
        gap = np.zeros(n, dtype=bool)  # starts a new segment
        stats = PushStats(dropped=(0, 0, replayed))
        if irregular.any():
            group = np.cumsum(start) - 1
            odd = np.isin(group, np.unique(group[irregular]))  # every sample of those entities
            idx = np.flatnonzero(odd)
            stats = self._rules(
                idx,
                s_slot,
                s_seq,
                start,
                None if reset is None else reset[order],
                accept,
                gap,
                [entities[i] for i in order[idx].tolist()],
                replayed,
            )
        dropped = n - int(accept.sum())
        if dropped:
            order, s_slot, s_seq, gap = order[accept], s_slot[accept], s_seq[accept], gap[accept]
            n = len(order)
            if n == 0:
                return self._empty(), stats
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
            enqueued_s=np.full(len(c), time.monotonic()),
            trace=None if trace is None else [trace[i] for i in src],
        )
        return batch, stats

    def _rules(
        self,
        idx: np.ndarray,
        s_slot: np.ndarray,
        s_seq: np.ndarray,
        start: np.ndarray,
        s_reset: np.ndarray | None,
        accept: np.ndarray,
        gap: np.ndarray,
        names: list[str],
        replayed: int = 0,
    ) -> PushStats:
        """The sequence rules sample by sample for the sorted positions ``idx`` (every sample of
        the entities that need them, grouped by slot); fills ``accept`` and ``gap`` there and
        updates the slots' ``anchor``. Returns the counts per reason."""
        big, back = self.max_seq_gap, self.max_seq_rewind
        drops = [0, 0, replayed]
        segs = [0, 0, 0, 0]
        events: list[tuple[str, str, int, int]] = []
        last = count = anchor = NO_SEQ
        slot = -1
        resets = None if s_reset is None else s_reset[idx].tolist()
        for j, (i, sl, sq, st) in enumerate(
            zip(idx.tolist(), s_slot[idx].tolist(), s_seq[idx].tolist(), start[idx].tolist(), strict=True)
        ):
            if st:
                if slot >= 0:
                    self.anchor[slot] = anchor
                slot = sl
                last, count, anchor = int(self.last_seq[sl]), int(self.count[sl]), int(self.anchor[sl])
            if resets is not None and resets[j]:
                segs[_RESET] += 1
                gap[i], last, count, anchor = True, sq, 1, NO_SEQ
                continue
            if last == NO_SEQ:
                last, count, anchor = sq, count + 1, NO_SEQ
                continue
            dd = sq - last
            if 0 < dd <= big:
                last, count = sq, count + 1
                continue
            if -back <= dd <= 0:
                accept[i] = False
                drops[_DUP if dd == 0 else _OLDER] += 1
                continue
            if count == 1 and anchor != NO_SEQ and anchor < sq <= anchor + big:
                why, anchor = _OUTLIER, NO_SEQ  # the lone sample was the outlier: back to the stream
                events.append((names[j], "seq_outlier", last, sq))
            else:
                why, anchor = (_GAP if dd > 0 else _RESTART), last
                if why == _RESTART:
                    events.append((names[j], "seq_restart", last, sq))
            segs[why] += 1
            gap[i], last, count = True, sq, 1
        if slot >= 0:
            self.anchor[slot] = anchor
        return PushStats(tuple(drops), tuple(segs), tuple(events))

    def _empty(self) -> WindowBatch:
        return WindowBatch(
            np.empty(0, np.int64),
            [],
            np.empty(0, np.int64),
            np.empty(0, np.int64),
            np.empty(0, bool),
            np.empty((0, self.window, *self.sample_shape), np.float32),
            np.empty(0, np.float64),
        )
