"""The entity store: admission under the slot cap (paging to the disk tier), expiry, snapshots
and restores."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st_

from stream_infer.records import SampleBatch
from stream_infer.state.disk import DiskTier
from stream_infer.state.slab import NumpyStateSlab
from stream_infer.state.store import EntityStore, ModelShape

W, K, F = 4, 2, 3
MODEL = ModelShape("m@1", W, K, (F,), (1, 4))


def store(cap: int, disk: bool = False, disk_bytes: int = 64 << 20) -> EntityStore:
    tier = DiskTier(None, disk_bytes) if disk else None
    return EntityStore(cap, MODEL, NumpyStateSlab(cap, 1, 4), max_seq_gap=100, disk=tier)


def admit_push(st: EntityStore, b: SampleBatch, now_s: float) -> Any:
    """Admission then push, as ingest does (refused samples left out)."""
    adm = st.admit(b.entities, b.partition, now_s)
    if adm.refused:
        b = b.where(np.asarray([e not in adm.refused for e in b.entities], bool))
    return st.push(b, now_s)[0]


def batch(entities: list[str], seq: list[int] | int = 0) -> SampleBatch:
    n = len(entities)
    seqs = np.full(n, seq, np.int64) if isinstance(seq, int) else np.asarray(seq, np.int64)
    return SampleBatch(
        entities=entities,
        seq=seqs,
        event_ms=np.zeros(n, np.int64),
        values=np.ones((n, F), np.float32),
        partition=np.zeros(n, np.int32),
    )


def test_parts_hold_at_most_capacity_distinct_entities_in_arrival_order() -> None:
    st = store(3)
    ents = ["a", "b", "a", "c", "d", "a", "e", "f", "g"]
    parts = st.parts(ents)
    assert parts[0][0] == 0 and parts[-1][1] == len(ents)
    assert all(hi == lo2 for (_, hi), (lo2, _) in zip(parts, parts[1:], strict=False))
    assert all(len(set(ents[lo:hi])) <= 3 for lo, hi in parts)
    assert len(parts) == 3


def test_a_poll_that_fits_is_one_part() -> None:
    assert store(10).parts(["a", "b", "a"]) == [(0, 3)]


def test_a_full_store_pages_out_the_least_recently_seen_never_the_poll_and_deletes_nothing() -> None:
    st = store(4, disk=True)
    for i, e in enumerate("abcd"):
        admit_push(st, batch([e]), float(i))
    adm = st.admit(["x", "y", "a"], np.zeros(3, np.int32), 10.0)
    assert adm.paged_out >= 2 and not adm.refused
    assert st.in_memory("a") and not st.in_memory("b") and not st.in_memory("c")
    assert "b" in st and "c" in st and st.on_disk == adm.paged_out  # paged out, not gone
    assert st.tombstoned() == frozenset()
    st.push(batch(["x", "y", "a"], [0, 0, 1]), now_s=10.0)
    assert len(st) <= 4


def test_without_a_disk_tier_a_full_store_refuses_new_entities_and_keeps_the_others() -> None:
    st = store(2)
    admit_push(st, batch(["a", "b"]), 0.0)
    adm = st.admit(["c", "a"], np.zeros(2, np.int32), 1.0)
    assert adm.refused == frozenset({"c"}) and adm.paged_out == 0
    assert st.in_memory("a") and st.in_memory("b") and "c" not in st


def test_snapshot_then_restore_gives_the_same_windows_and_state() -> None:
    st = store(8)
    st.push(batch(["a"] * 6, list(range(6))), now_s=0.0)
    st._slab.scatter(
        np.asarray([st._slots.lookup("a")]),
        np.full((1, 1, 4), 0.25, np.float32),
        np.ones((1, 1, 4), np.float32),
    )
    recs = st.snapshot_dirty()
    assert [k for k, _, _ in recs] == [b"a"]
    assert st.snapshot_dirty() == []  # marks are cleared
    other = store(8)
    r = other.restore({k: (p, v) for k, v, p in recs}, now_s=1.0)
    assert (r.restored, r.not_restorable) == (1, 0)
    s0, s1 = st._slots.lookup("a"), other._slots.lookup("a")
    assert s0 is not None and s1 is not None
    np.testing.assert_array_equal(st._windows.tail[s0], other._windows.tail[s1])
    assert other._windows.last_seq[s1] == 5 and other._windows.count[s1] == 6
    np.testing.assert_array_equal(other._slab.read(np.asarray([s1]))[0], np.full((1, 1, 4), 0.25))


def test_restore_into_a_full_store_spills_to_the_disk_tier_and_deletes_nothing() -> None:
    st = store(8)
    st.push(batch(["a"] * 5, list(range(5))), now_s=0.0)
    recs = {k: (p, v) for k, v, p in st.snapshot_dirty()}
    full = store(2, disk=True)
    full.push(batch(["x", "y"]), now_s=0.0)
    r = full.restore(recs, now_s=1.0)
    assert (r.restored, r.spilled) == (1, 1) and full.on_disk == 1
    assert full.in_memory("x") and full.in_memory("y") and "a" in full
    view = full.describe("a", 1.0)
    assert view is not None and (view.tier, view.last_seq, view.samples_in_segment) == ("disk", 4, 5)
    full.admit(["a"], np.zeros(1, np.int32), 2.0)  # pages x and y out (one more than needed), a in
    assert full.in_memory("a") and full.on_disk == 2 and full.tombstoned() == frozenset()


def test_state_of_another_model_is_not_restored() -> None:
    st = store(4)
    st.push(batch(["a"]), now_s=0.0)
    recs = {k: (p, v) for k, v, p in st.snapshot_dirty()}
    other = EntityStore(4, ModelShape("m@2", W, K, (F,), (1, 4)), NumpyStateSlab(4, 1, 4), 100)
    assert other.restore(recs, now_s=0.0).not_restorable == 1 and len(other) == 0


def test_an_upgrade_keeps_state_of_the_same_contract_only_when_asked() -> None:
    st = store(4)
    st.push(batch(["a"] * 5, list(range(5))), now_s=0.0)
    slot = np.asarray([st._slots.lookup("a")])
    st._slab.scatter(slot, np.full((1, 1, 4), 0.5, np.float32), np.full((1, 1, 4), -0.5, np.float32))
    recs = {k: (p, v) for k, v, p in st.snapshot_dirty()}
    upgraded = EntityStore(4, ModelShape("m@2", W, K, (F,), (1, 4), True), NumpyStateSlab(4, 1, 4), 100)
    r = upgraded.restore(recs, now_s=0.0)
    assert (r.restored, r.upgraded, r.not_restorable) == (1, 1, 0)
    s1 = np.asarray([upgraded._slots.lookup("a")])
    h, c = upgraded._slab.read(s1)
    np.testing.assert_array_equal(h, np.full((1, 1, 4), 0.5)) and np.testing.assert_array_equal(c, -h)
    assert upgraded._windows.last_seq[s1[0]] == 4 and upgraded._windows.count[s1[0]] == 5
    # Another contract (a different hidden size) is never restored, asked or not.
    wider = EntityStore(4, ModelShape("m@3", W, K, (F,), (1, 8), True), NumpyStateSlab(4, 1, 8), 100)
    assert wider.restore(recs, now_s=0.0).not_restorable == 1 and len(wider) == 0


def test_dropped_partitions_leave_no_tombstones() -> None:
    st = store(4)
    b = batch(["a", "b"])
    b.partition[:] = [0, 1]
    st.push(b, now_s=0.0)
    st.expire_idle(now_s=100.0, ttl_s=10.0)  # a and b: tombstones on partitions 0 and 1
    st.drop_partitions({0, 1})
    assert len(st) == 0 and st.snapshot_dirty() == []


def test_dropped_partitions_leave_neither_tier() -> None:
    st = store(1, disk=True)
    b = batch(["a", "b"])
    b.partition[:] = [0, 1]
    admit_push(st, b.part(0, 1), 0.0)
    admit_push(st, b.part(1, 2), 1.0)  # a paged out (partition 0)
    assert st.on_disk == 1 and st.in_memory("b")
    assert st.drop_partitions({0}) == 1 and st.on_disk == 0 and "a" not in st
    assert [k for k, v, _ in st.snapshot_dirty()] == [b"b"]  # a's dirty record went with it


@pytest.mark.parametrize("cap", [1, 3, 7])
def test_admitting_a_poll_larger_than_the_store_in_parts_never_raises(cap: int) -> None:
    st = store(cap, disk=True)
    ents = [f"e{i % 11}" for i in range(50)]
    seqs = [i // 11 for i in range(50)]
    b = batch(ents, seqs)
    for lo, hi in st.parts(ents):
        assert not st.admit(b.part(lo, hi).entities, b.part(lo, hi).partition, float(lo)).refused
        st.push(b.part(lo, hi), now_s=float(lo))
    assert len(st) <= cap and len(st) + st.on_disk == 11


def test_dirty_paged_out_entities_are_in_the_next_snapshot_and_expire_from_disk() -> None:
    st = store(1, disk=True)
    admit_push(st, batch(["a"] * 3, [0, 1, 2]), 0.0)
    admit_push(st, batch(["b"]), 1.0)  # a paged out before any checkpoint
    recs = {k: v for k, v, _ in st.snapshot_dirty()}
    assert set(recs) == {b"a", b"b"} and recs[b"a"] is not None
    assert st.snapshot_dirty() == []
    assert st.expire_idle(now_s=100.0, ttl_s=50.0) == 2  # b in memory, a on disk
    assert st.on_disk == 0 and len(st) == 0
    assert sorted((k, v) for k, v, _ in st.snapshot_dirty()) == [(b"a", None), (b"b", None)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cap=st_.integers(1, 4),
    polls=st_.lists(
        st_.lists(st_.tuples(st_.integers(0, 7), st_.integers(1, 3)), min_size=1, max_size=6),
        min_size=1,
        max_size=25,
    ),
)
def test_paging_is_invisible_every_window_equals_a_store_that_never_pages(cap: int, polls: list) -> None:
    """Entities cycling through a store smaller than their number give the windows, seqs and
    fresh flags of a store that holds them all, and the same state rows (the engine's
    stand-in adds each window's sum to its entity's state)."""
    small, big = store(cap, disk=True), store(64)
    seq: dict[str, int] = {}
    for t, poll in enumerate(polls):
        ents: list[str] = []
        seqs: list[int] = []
        for e, n in poll:
            for _ in range(n):
                name = f"e{e}"
                ents.append(name)
                seqs.append(seq.get(name, -1) + 1)
                seq[name] = seqs[-1]
        b = batch(ents, seqs)
        b.values[:] = np.asarray(seqs, np.float32)[:, None] + np.arange(F)
        got = []
        for lo, hi in small.parts(ents):
            got.append(step(small, b.part(lo, hi), float(t)))
        want = step(big, b, float(t))
        assert [x for g in got for x in g] == want
    assert len(small) <= cap


def step(st: EntityStore, b: SampleBatch, now_s: float) -> list[tuple[str, int, bool, float, float]]:
    """Admit, push and run a stand-in engine: state += window sum; returns per window (entity,
    seq, fresh, window sum, new state)."""
    wb = admit_push(st, b, now_s)
    out = []
    for i in range(len(wb)):
        s = wb.slots[i : i + 1]
        if wb.fresh[i]:
            st._slab.zero(s)
        h, c = st._slab.gather(s)
        h = h + float(wb.x[i].sum())
        st._slab.scatter(s, h, c)
        out.append((wb.entities[i], int(wb.seq[i]), bool(wb.fresh[i]), float(wb.x[i].sum()), float(h.sum())))
    return out


def test_with_both_tiers_full_a_paged_out_entity_trades_places_and_only_new_ones_are_refused() -> None:
    st = store(2, disk=True, disk_bytes=1 << 20)
    n = 0
    while True:  # fill memory, then the disk tier, with entities that have state
        b = batch([f"e{n:03d}"] * 3, [0, 1, 2])
        adm = st.admit(b.entities, b.partition, float(n))
        if adm.refused:
            break
        st.push(b, float(n))
        n += 1
    assert n > 100 and st.on_disk == n - 2
    held = f"e{0:03d}"  # paged out long ago
    assert "e000" in st and not st.in_memory(held)
    adm = st.admit([held, "brand-new"], np.zeros(2, np.int32), 1e6)
    assert adm.refused == frozenset({"brand-new"}) and adm.paged_in == 1 and adm.paged_out >= 1
    assert st.in_memory(held) and len(st) + st.on_disk == n
    view = st.describe(held, 1e6)
    assert view is not None and (view.last_seq, view.samples_in_segment) == (2, 3)
