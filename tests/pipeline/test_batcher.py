import time

import numpy as np

from stream_infer.pipeline.batcher import Batcher
from stream_infer.records import WindowBatch


def wb(slots, t=None):
    n = len(slots)
    return WindowBatch(
        np.asarray(slots, np.int64),
        [f"e{s}" for s in slots],
        np.arange(n, dtype=np.int64),
        np.zeros(n, np.int64),
        np.zeros(n, bool),
        np.arange(n, dtype=np.float32)[:, None, None],
        np.full(n, time.monotonic() if t is None else t),
    )


def test_a_batch_holds_distinct_entities_and_keeps_per_entity_order():
    b = Batcher(max_batch=10, max_wait_ms=1000)
    b.add(wb([1, 2, 1, 3, 1]))
    first = b.take()
    assert first.slots.tolist() == [1, 2, 3]
    assert first.x[:, 0, 0].tolist() == [0, 1, 3]
    second = b.take()
    assert second.slots.tolist() == [1] and second.x[0, 0, 0] == 2
    third = b.take()
    assert third.slots.tolist() == [1] and third.x[0, 0, 0] == 4
    assert b.pending == 0 and b.take() is None


def test_flushes_on_size_or_deadline():
    b = Batcher(max_batch=4, max_wait_ms=50)
    t0 = time.monotonic()
    b.add(wb([1, 2], t=t0))
    assert not b.ready(t0 + 0.01)
    assert b.ready(t0 + 0.051)
    b.add(wb([3, 4], t=t0))
    assert b.ready(t0)
    assert len(b.take()) == 4
