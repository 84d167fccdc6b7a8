"""The entity store: admission under the slot cap, eviction order, snapshots and restores."""

from __future__ import annotations

import numpy as np
import pytest

from stream_infer.records import SampleBatch
from stream_infer.state.slab import NumpyStateSlab
from stream_infer.state.store import EntityStore, ModelShape

W, K, F = 4, 2, 3
MODEL = ModelShape("m@1", W, K, (F,), (1, 4))


def store(cap: int) -> EntityStore:
    return EntityStore(cap, MODEL, NumpyStateSlab(cap, 1, 4), max_seq_gap=100)


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


def test_lru_eviction_spares_protected_entities_and_writes_tombstones() -> None:
    st = store(4)
    for i, e in enumerate("abcd"):
        st.push(batch([e]), now_s=float(i))
    assert st.shortfall(["x", "y", "a"]) == 2
    assert st.evict_lru(2, protect={"a", "x", "y"}) == 2
    assert set(st._tombstones) == {"b", "c"}  # the least recently seen that are not protected
    assert st.shortfall(["x", "y", "a"]) == 0
    st.push(batch(["x", "y", "a"], [0, 0, 1]), now_s=10.0)
    assert len(st) == 4


def test_evicting_more_than_unprotected_entities_stops_short_without_raising() -> None:
    st = store(2)
    st.push(batch(["a", "b"]), now_s=0.0)
    assert st.evict_lru(5, protect={"a"}) == 1
    assert st.evict_lru(5, protect={"z"}) == 1
    assert len(st) == 0


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


def test_restore_into_a_full_store_evicts_instead_of_raising() -> None:
    st = store(8)
    st.push(batch(["a"] * 5, list(range(5))), now_s=0.0)
    recs = {k: (p, v) for k, v, p in st.snapshot_dirty()}
    full = store(2)
    full.push(batch(["x", "y"]), now_s=0.0)
    r = full.restore(recs, now_s=1.0)
    assert r.restored == 1 and r.evicted >= 1 and full._slots.lookup("a") is not None


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
    st.evict_lru(1, protect={"b"})  # a: tombstone on partition 0
    st.drop_partitions({0, 1})
    assert len(st) == 0 and st.snapshot_dirty() == []


@pytest.mark.parametrize("cap", [1, 3, 7])
def test_admitting_a_poll_larger_than_the_store_in_parts_never_raises(cap: int) -> None:
    st = store(cap)
    ents = [f"e{i % 11}" for i in range(50)]
    seqs = [i // 11 for i in range(50)]
    b = batch(ents, seqs)
    for lo, hi in st.parts(ents):
        part = b.part(lo, hi)
        need = st.shortfall(part.entities)
        if need:
            assert st.evict_lru(need, protect=set(part.entities)) == need
        st.push(part, now_s=float(lo))
    assert len(st) <= cap
