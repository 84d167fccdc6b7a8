"""The last stable offset bookkeeping of ``kafka.kafka_python``, fed fetch responses by hand (the real
broker's version of this is tests/integration/test_transaction_timeout.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from kafka import TopicPartition

from stream_infer.kafka import kafka_python
from stream_infer.kafka.kafka_python import StableOffset

TP = TopicPartition("in", 0)


def test_lso_stuck_time_counts_from_the_first_record_waiting_past_it(monkeypatch: pytest.MonkeyPatch) -> None:
    assert kafka_python.apply() and kafka_python.apply()  # idempotent
    clock = [0.0]
    monkeypatch.setattr(kafka_python, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    subscriptions = SimpleNamespace(assignment={TP: SimpleNamespace()})
    fetcher = SimpleNamespace(_subscriptions=subscriptions)
    consumer = SimpleNamespace(_subscription=subscriptions)

    def response(at_s: float, hw: int, lso: int, error_code: int = 0) -> None:
        clock[0] = at_s
        data = SimpleNamespace(error_code=error_code, high_watermark=hw, last_stable_offset=lso)
        kafka_python._note_stable_offset(fetcher, SimpleNamespace(topic_partition=TP, partition_data=data))

    def seen(at_s: float) -> StableOffset | None:
        clock[0] = at_s
        return kafka_python.stable_offset(consumer, TP)

    assert seen(0.0) is None  # no fetch response yet
    assert kafka_python.stable_offset(consumer, TopicPartition("in", 1)) is None  # not assigned
    response(0.0, hw=4, lso=4)
    assert seen(50.0) == StableOffset(4, 4, 0.0)
    # Idle for 100 s (no response mentions the partition), then a transaction writes: the LSO is
    # the same offset as before, but it has only been stuck since the records appeared.
    response(100.0, hw=9, lso=4)
    assert seen(103.0) == StableOffset(9, 4, 3.0)
    assert StableOffset(9, 4, 3.0).unstable_records == 5
    response(110.0, hw=12, lso=4)  # more records behind the same open transaction
    response(111.0, hw=12, lso=4, error_code=6)  # an error response carries nothing: ignored
    assert seen(112.0) == StableOffset(12, 4, 12.0)
    response(113.0, hw=12, lso=9)  # the oldest transaction ended; a later one is still open
    assert seen(117.0) == StableOffset(12, 9, 4.0)
    response(120.0, hw=13, lso=13)  # all ended
    assert seen(500.0) == StableOffset(13, 13, 0.0)
