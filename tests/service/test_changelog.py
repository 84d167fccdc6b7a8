import numpy as np
import pytest

from stream_infer import changelog
from stream_infer.errors import StateError


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
