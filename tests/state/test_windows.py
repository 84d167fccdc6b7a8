import numpy as np
import pytest

from stream_infer.state.windows import WindowStore


def _store(cap=8, w=4, k=2, f=2, gap=10, rewind=None):
    return WindowStore(cap, w, k, (f,), gap, rewind)


def _push(store, slots, seqs, vals=None):
    slots = np.asarray(slots, np.int64)
    seqs = np.asarray(seqs, np.int64)
    if vals is None:
        vals = np.stack([seqs, seqs * 10], axis=1).astype(np.float32)
    ents = [f"e{s}" for s in slots]
    return store.push(slots, seqs, seqs * 1000, vals, ents)


def reference_windows(samples, w, k):
    return [samples[i : i + w] for i in range(0, len(samples) - w + 1, k)]


@pytest.mark.parametrize("chunk", [1, 3, 5, 100])
def test_windows_match_offline_slicing_for_any_chunking(chunk):
    rng = np.random.default_rng(0)
    store = _store(cap=4, w=5, k=2)
    data = {s: rng.normal(size=(23, 2)).astype(np.float32) for s in range(3)}
    got = {s: [] for s in data}
    for start in range(0, 23, chunk):
        slots, seqs, vals = [], [], []
        for i in range(start, min(23, start + chunk)):
            for s in data:  # interleaved entities
                slots.append(s)
                seqs.append(i)
                vals.append(data[s][i])
        wb, st = _push(store, slots, seqs, np.asarray(vals))
        assert st.duplicates == 0
        for s, x, q in zip(wb.slots, wb.x, wb.seq, strict=True):
            got[int(s)].append((int(q), x))
    for s, samples in data.items():
        ref = reference_windows(samples, 5, 2)
        assert [q for q, _ in got[s]] == list(range(4, 23, 2))
        assert len(got[s]) == len(ref)
        for (_, x), r in zip(got[s], ref, strict=True):
            np.testing.assert_array_equal(x, r)


def test_duplicate_and_older_seq_are_dropped_and_counted():
    store = _store(w=2, k=1, rewind=3)
    _push(store, [0, 0, 0], [0, 1, 2])
    wb, st = _push(store, [0, 0, 0, 0], [2, 1, 3, 3])
    assert st.duplicates == 3
    assert st.dropped == (2, 1, 0)  # 2 and the second 3 are duplicates, 1 is older
    assert wb.seq.tolist() == [3]


def test_gap_larger_than_limit_resets_window_and_flags_fresh_state():
    store = _store(w=2, k=1, gap=5)
    wb, _ = _push(store, [0, 0, 0], [0, 1, 2])
    assert wb.fresh.tolist() == [True, False]
    wb, st = _push(store, [0, 0, 0], [100, 101, 102])
    assert st.resets == 1
    assert wb.seq.tolist() == [101, 102]
    assert wb.fresh.tolist() == [True, False]
    np.testing.assert_array_equal(wb.x[0][:, 0], [100, 101])


def test_small_gap_continues_the_window():
    store = _store(w=2, k=1, gap=5)
    _push(store, [0, 0], [0, 1])
    wb, st = _push(store, [0], [4])
    assert st.resets == 0 and wb.seq.tolist() == [4] and not wb.fresh[0]


def test_reset_slot_starts_fresh():
    store = _store(w=2, k=1)
    _push(store, [1, 1, 1], [0, 1, 2])
    store.reset(np.asarray([1]))
    wb, _ = _push(store, [1, 1], [0, 1])
    assert wb.fresh.tolist() == [True]
