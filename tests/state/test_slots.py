import numpy as np
from prometheus_client import CollectorRegistry

from stream_infer.metrics import Metrics
from stream_infer.state.slots import SlotTable


def test_slots_are_reused_after_release_and_lru_picks_the_oldest():
    t = SlotTable(4)
    slots, new = t.assign(["a", "b", "a", "c"], np.zeros(4, np.int32), now_s=1.0)
    assert slots.tolist()[0] == slots.tolist()[2] and len(new) == 3
    t.assign(["b"], np.zeros(1, np.int32), now_s=5.0)
    t.assign(["c"], np.zeros(1, np.int32), now_s=6.0)
    assert [t.entity[s] for s in t.least_recent(1)] == ["a"]
    assert [t.entity[s] for s in t.idle(now_s=6.5, ttl_s=3.0)] == ["a"]
    gone = t.release(t.least_recent(1))
    assert gone == ["a"] and t.free == 2 and t.lookup("a") is None
    s, new = t.assign(["d"], np.zeros(1, np.int32), now_s=7.0)
    assert len(new) == 1 and len(t) == 3


def test_batch_histogram_matches_prometheus_bucket_semantics():
    reg = CollectorRegistry()
    m = Metrics(reg)
    m.event_to_publish.observe_many(np.array([0.001, 0.0011, 0.02, 100.0]))
    get = reg.get_sample_value
    assert get("stream_infer_event_to_publish_seconds_bucket", {"le": "0.001"}) == 1  # le is inclusive
    assert get("stream_infer_event_to_publish_seconds_bucket", {"le": "0.025"}) == 3
    assert get("stream_infer_event_to_publish_seconds_bucket", {"le": "+Inf"}) == 4
    assert get("stream_infer_event_to_publish_seconds_count") == 4
    assert abs(get("stream_infer_event_to_publish_seconds_sum") - 100.0221) < 1e-9
    assert get("stream_infer_invalid_events_total", {"reason": "non_finite"}) == 0  # exists before use
