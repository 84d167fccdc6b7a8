import numpy as np
import pytest

from stream_infer.errors import StateError
from stream_infer.state import codec as changelog


def test_state_records_round_trip_and_reject_other_models():
    rng = np.random.default_rng(0)
    tail = rng.normal(size=(3, 20, 6)).astype(np.float32)
    h = rng.normal(size=(2, 3, 8)).astype(np.float32)
    c = rng.normal(size=(2, 3, 8)).astype(np.float32)
    vals = changelog.encode_many(
        "m@1",
        np.array([5, 6, 7]),
        np.array([1, 2, 3]),
        np.array([20, 31, 42]),
        np.array([False, True, False]),
        tail,
        h,
        c,
    )
    st = changelog.decode(vals[1], "m@1", 20, (6,), (2, 8))
    assert (st.last_seq, st.event_ms, st.count, st.fresh) == (6, 2, 31, True)
    np.testing.assert_array_equal(st.tail, tail[1])
    np.testing.assert_array_equal(st.h, h[:, 1])
    np.testing.assert_array_equal(st.c, c[:, 1])
    with pytest.raises(StateError, match="model"):
        changelog.decode(vals[0], "m@2", 20, (6,), (2, 8))
    with pytest.raises(StateError):
        changelog.decode(vals[0][:30], "m@1", 20, (6,), (2, 8))
    with pytest.raises(StateError):
        changelog.decode(b"garbage", "m@1", 20, (6,), (2, 8))


@pytest.mark.parametrize("layout", ["lstm", "gru+convlstm"])
@pytest.mark.parametrize("n", [1, 5])
def test_records_built_at_once_equal_the_ones_built_one_by_one(layout, n):
    from stream_infer.model.contract import StateSpec, lstm_states

    rng = np.random.default_rng(n)
    if layout == "lstm":
        specs = lstm_states(2, 8)
        states = [rng.normal(size=(2, n, 8)).astype(np.float32) for _ in range(2)]
    else:
        specs = (StateSpec("h_in", "h_out", (16,)), StateSpec("s_in", "s_out", (4, 3, 3), batch_axis=1))
        states = [
            rng.normal(size=(n, 16)).astype(np.float32),
            rng.normal(size=(4, n, 3, 3)).astype(np.float32),
        ]
    tail = rng.normal(size=(n, 10, 2, 3)).astype(np.float32)
    seq, ev, count = rng.integers(0, 2**40, n), rng.integers(0, 2**41, n), rng.integers(0, 100, n)
    fresh = rng.random(n) < 0.5
    many = changelog.encode_many("model@7", seq, ev, count, fresh, tail, *states, specs=specs)
    for i in range(n):
        own = tuple(np.take(a, i, axis=s.batch_axis) for a, s in zip(states, specs, strict=True))
        one = changelog.encode(
            "model@7",
            changelog.EntityState(int(seq[i]), int(ev[i]), int(count[i]), bool(fresh[i]), tail[i], own),
            specs,
        )
        assert many[i] == one


def test_decode_many_equals_decode_record_by_record_and_refuses_what_it_cannot_read() -> None:
    from stream_infer.model.contract import lstm_states

    rng = np.random.default_rng(7)
    n, w, f = 5, 4, 3
    specs = lstm_states(2, 8)
    h = rng.normal(size=(2, n, 8)).astype(np.float32)
    c = rng.normal(size=(2, n, 8)).astype(np.float32)
    values = changelog.encode_many(
        "m@1",
        np.arange(n, dtype=np.int64) * 7,
        np.arange(n, dtype=np.int64) + 1000,
        np.arange(n, dtype=np.int64) + 1,
        np.asarray([True, False, True, False, False]),
        rng.normal(size=(n, w, f)).astype(np.float32),
        h,
        c,
        specs=specs,
        anchor=np.arange(n, dtype=np.int64) - 1,
        offset=np.arange(n, dtype=np.int64) * 100,
    )
    cols = changelog.decode_many(values, "m@1", w, (f,), specs)
    assert cols is not None
    for i, v in enumerate(values):
        one = changelog.decode(v, "m@1", w, (f,), specs)
        assert (cols.last_seq[i], cols.event_ms[i], cols.count[i]) == (one.last_seq, one.event_ms, one.count)
        assert (bool(cols.fresh[i]), cols.anchor[i], cols.offset[i]) == (one.fresh, one.anchor, one.offset)
        np.testing.assert_array_equal(cols.tail[i], one.tail)
        for batch, single, spec in zip(cols.states, one.states, specs, strict=True):
            np.testing.assert_array_equal(np.take(batch, i, axis=spec.batch_axis), single)
    assert changelog.decode_many(values, "m@2", w, (f,), specs) is None  # another model
    assert changelog.decode_many(values, "m@1", w + 1, (f,), specs) is None  # another window
    assert changelog.decode_many([*values[:2], values[2][:-4]], "m@1", w, (f,), specs) is None
