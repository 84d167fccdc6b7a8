"""The sequence rules (stream_infer.state.windows) against a small, obviously correct reference.

The reference keeps, per entity, the list of samples of its current segment and applies the
rules of docs/formats.md one sample at a time, in plain Python. The store gets the same stream
cut into random polls, with a restart of the pod (changelog snapshot, then restore into a new
store) at a random point; both must give the same windows (entity, seq, fresh, values), the same
drops and the same new segments, per reason.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_infer.records import SampleBatch
from stream_infer.state import codec as changelog
from stream_infer.state.slab import NumpyStateSlab
from stream_infer.state.store import EntityStore, ModelShape
from stream_infer.state.windows import DROPS, SEGMENTS, WindowStore, default_rewind

F = 2
FAR = 10**12


@dataclass
class _Entity:
    last: int | None = None
    segment: list[tuple[int, float]] = field(default_factory=list)  # (seq, value) since the segment began
    anchor: int | None = None  # last seq before the jump that began the segment


@dataclass
class Reference:
    """The rules, one sample at a time (docs/formats.md, "Sequence rules")."""

    window: int
    hop: int
    gap: int
    rewind: int
    entities: dict[str, _Entity] = field(default_factory=dict)
    windows: list[tuple[str, int, bool, tuple[float, ...]]] = field(default_factory=list)
    drops: Counter[str] = field(default_factory=Counter)
    segments: Counter[str] = field(default_factory=Counter)

    def feed(self, entity: str, seq: int, value: float, reset: bool) -> None:
        e = self.entities.setdefault(entity, _Entity())
        if reset:
            self._new(e, "explicit_reset", None)
        elif e.last is None:
            pass  # an entity's first sample begins its first segment
        elif 0 < seq - e.last <= self.gap:
            pass  # continues
        elif e.last - self.rewind <= seq <= e.last:
            self.drops["duplicate_seq" if seq == e.last else "older_seq"] += 1
            return
        elif len(e.segment) == 1 and e.anchor is not None and e.anchor < seq <= e.anchor + self.gap:
            self._new(e, "seq_outlier", None)  # the lone sample was an outlier
        else:
            self._new(e, "seq_gap" if seq > e.last else "seq_restart", e.last)
        e.segment.append((seq, value))
        e.last = seq
        a = len(e.segment) - 1
        if a + 1 >= self.window and (a + 1 - self.window) % self.hop == 0:
            first = a + 1 == self.window
            tail = tuple(v for _, v in e.segment[-self.window :])
            self.windows.append((entity, seq, first, tail))

    def _new(self, e: _Entity, reason: str, anchor: int | None) -> None:
        self.segments[reason] += 1
        e.segment = []
        e.anchor = anchor


@st.composite
def streams(draw: st.DrawFn) -> list[tuple[str, int, bool]]:
    """Per-entity streams with restarts, outliers, duplicates, reorderings and gaps, interleaved."""
    out: list[tuple[str, int, bool]] = []
    for ent in ("a", "b", "c")[: draw(st.integers(1, 3))]:
        seq = draw(st.integers(0, 50))
        events: list[tuple[int, bool]] = []
        for _ in range(draw(st.integers(0, 60))):
            op = draw(
                st.sampled_from(
                    ["next"] * 8 + ["dup", "back", "restart", "outlier", "past", "gap", "reset", "skip"]
                )
            )
            if op == "next":
                seq += 1
                events.append((seq, False))
            elif op == "skip":
                seq += draw(st.integers(2, 30))
                events.append((seq, False))
            elif op == "dup":
                events.append((seq, False))
            elif op == "back":
                events.append((max(0, seq - draw(st.integers(1, 12))), False))
            elif op == "restart":
                seq = draw(st.integers(0, 5))
                events.append((seq, False))
            elif op == "outlier":
                events.append((seq + draw(st.sampled_from([FAR, 31, 200])), False))
            elif op == "past":
                events.append((draw(st.integers(0, max(0, seq - 1))), False))
            elif op == "gap":
                seq += draw(st.integers(31, 500))
                events.append((seq, False))
            else:
                seq = draw(st.integers(0, seq + 3))
                events.append((seq, True))
        out.extend((ent, s, r) for s, r in events)
    # Interleave the entities, keeping each one's order.
    keys = draw(st.lists(st.floats(0, 1), min_size=len(out), max_size=len(out)))
    per: dict[str, list[float]] = {}
    for (ent, _, _), k in zip(out, keys, strict=True):
        per.setdefault(ent, []).append(k)
    for ks in per.values():
        ks.sort()
    it = {e: iter(ks) for e, ks in per.items()}
    order = sorted(range(len(out)), key=lambda i: (next(it[out[i][0]]), i))
    return [out[i] for i in order]


def _model(window: int, hop: int) -> ModelShape:
    return ModelShape("m@1", window, hop, (F,), (1, 2))


def _store(window: int, hop: int, gap: int, rewind: int | None) -> EntityStore:
    return EntityStore(8, _model(window, hop), NumpyStateSlab(8, 1, 2), gap, rewind)


def _restart(old: EntityStore, window: int, hop: int, gap: int, rewind: int | None) -> EntityStore:
    """A pod restart: the changelog records of everything, decoded into a new store."""
    latest = {key: (part, value) for key, value, part in old.snapshot_dirty(everything=True)}
    new = _store(window, hop, gap, rewind)
    new.restore(latest, 0.0)
    return new


@settings(max_examples=300, deadline=None)
@given(
    stream=streams(),
    window=st.integers(1, 6),
    hop=st.integers(1, 3),
    rewind=st.one_of(st.none(), st.integers(0, 29)),
    cuts=st.lists(st.integers(0, 400), max_size=8),
    restart_at=st.one_of(st.none(), st.integers(0, 400)),
)
def test_the_store_follows_the_reference_rules(stream, window, hop, rewind, cuts, restart_at):
    gap = 30
    ref = Reference(window, hop, gap, default_rewind(window, gap) if rewind is None else rewind)
    values = [float(i) for i in range(len(stream))]
    for (ent, seq, reset), v in zip(stream, values, strict=True):
        ref.feed(ent, seq, v, reset)

    store = _store(window, hop, gap, rewind)
    bounds = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    got: list[tuple[str, int, bool, tuple[float, ...]]] = []
    drops: Counter[str] = Counter()
    segments: Counter[str] = Counter()
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        if restart_at is not None and lo <= restart_at < hi:
            store = _restart(store, window, hop, gap, rewind)
        part = stream[lo:hi]
        resets = np.asarray([r for _, _, r in part])
        batch = SampleBatch(
            entities=[e for e, _, _ in part],
            seq=np.asarray([s for _, s, _ in part], np.int64),
            event_ms=np.zeros(len(part), np.int64),
            values=np.repeat(np.asarray(values[lo:hi], np.float32)[:, None], F, axis=1),
            partition=np.zeros(len(part), np.int32),
            reset=resets if resets.any() else None,
        )
        wb, stats = store.push(batch, 0.0)
        got.extend(
            (e, int(q), bool(f), tuple(x[:, 0].tolist()))
            for e, q, f, x in zip(wb.entities, wb.seq, wb.fresh, wb.x, strict=True)
        )
        drops.update(dict(zip(DROPS, stats.dropped, strict=True)))
        segments.update(dict(zip(SEGMENTS, stats.segments, strict=True)))

    def per_entity(ws):
        return {e: [w for w in ws if w[0] == e] for e in {w[0] for w in ws}}

    assert per_entity(got) == per_entity(ref.windows)
    assert +drops == +ref.drops
    assert +segments == +ref.segments


def _feed(store: WindowStore, ent: int, seqs: list[int]):
    n = len(seqs)
    arr = np.asarray(seqs, np.int64)
    return store.push(
        np.full(n, ent, np.int64), arr, arr, np.stack([arr, arr], 1).astype(np.float32), [f"e{ent}"] * n
    )


def test_a_device_restart_loses_at_most_one_warm_up():
    """seq 0..149, a restart, 0..149 again: both runs' hops (the second one's from zero state)."""
    w, k = 10, 10
    store = WindowStore(4, w, k, (F,), 100)
    first, st1 = _feed(store, 0, list(range(150)))
    second, st2 = _feed(store, 0, list(range(150)))
    assert len(first) == 15 and len(second) == 15
    assert st2.segments[SEGMENTS.index("seq_restart")] == 1 and st2.events[0][1] == "seq_restart"
    assert second.fresh.tolist() == [True] + [False] * 14


def test_a_far_future_seq_costs_at_most_one_window():
    w, k = 10, 5
    store = WindowStore(4, w, k, (F,), 100)
    _feed(store, 0, list(range(100)))
    _, st = _feed(store, 0, [FAR])
    after, st2 = _feed(store, 0, list(range(100, 200)))
    # Without the outlier: windows at 104, 109, ..., 199 (20); the outlier costs one warm-up.
    assert after.seq.tolist() == list(range(109, 200, 5))
    assert st2.segments[SEGMENTS.index("seq_outlier")] == 1
    assert st.segments[SEGMENTS.index("seq_gap")] == 1


def test_a_rewind_beyond_the_gap_is_refused():
    import pytest

    with pytest.raises(ValueError, match="max_seq_rewind"):
        WindowStore(4, 10, 5, (F,), 100, 100)


def test_the_changelog_carries_the_anchor_and_reads_older_versions():
    spec = _model(4, 2).states
    st = changelog.EntityState(
        7, 0, 1, True, np.zeros((4, F), np.float32), (np.zeros((1, 2)), np.zeros((1, 2))), anchor=5
    )
    value = changelog.encode("m@1", st, spec)
    assert value[4] == 3
    assert changelog.decode(value, "m@1", 4, (F,), spec).anchor == 5
    # A version-2 record (no anchor), as written before: read with no anchor.
    v2 = bytearray(value[:36])
    v2[4] = 2
    old = bytes(v2) + value[52:]
    back = changelog.decode(old, "m@1", 4, (F,), spec)
    assert back.anchor == changelog.NO_ANCHOR and back.last_seq == 7 and back.count == 1


def test_input_read_again_after_a_restart_is_dropped_by_offset_not_taken_for_a_restart():
    """At-least-once: the changelog is newer than the committed offset, so after a restart the
    input from that offset is read again. However far back its seq lies, it is ``replayed``."""
    w, k, n = 4, 2, 60

    def batch(lo: int, hi: int) -> SampleBatch:
        seq = np.arange(lo, hi, dtype=np.int64)
        return SampleBatch(
            entities=["a"] * len(seq),
            seq=seq,
            event_ms=seq,
            values=np.repeat(seq[:, None], F, 1).astype(np.float32),
            partition=np.zeros(len(seq), np.int32),
            offset=seq + 1000,  # offsets of one partition
        )

    store = _store(w, k, 100, None)
    store.push(batch(0, n), 0.0)
    store = _restart(store, w, k, 100, None)
    wb, st = store.push(batch(10, n + 10), 0.0)  # the committed offset was 1010
    assert st.dropped == (0, 0, n - 10) and st.resets == 0
    assert wb.seq.tolist() == [n + 1, n + 3, n + 5, n + 7, n + 9] and not wb.fresh.any()
