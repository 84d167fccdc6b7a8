"""The changelog reader for restores. (The group consumer of the input is made by the client
layer, ``stream_infer.kafka.make_consumer``: manual commits, which the commit path in
``checkpoint.py`` decides, ``read_committed`` reads, the cooperative-sticky assignor and, when
``group_instance_id`` is set, static membership, so a rolling restart does not reshuffle every
partition.)"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from kafka import KafkaConsumer, TopicPartition

from stream_infer.config import Settings

logger = logging.getLogger(__name__)


def read_changelog(
    settings: Settings, partitions: Iterable[int], timeout_s: float = 120.0
) -> dict[bytes, tuple[int, bytes | None]]:
    """Latest value per key in the given changelog partitions: key -> (partition, value).

    Reads committed records only, from the beginning to the end offsets taken at the start.
    Tombstones are returned as ``None`` values (the caller deletes those entities).
    """
    parts = [TopicPartition(settings.changelog_topic, p) for p in sorted(set(partitions))]
    if not parts:
        return {}
    from stream_infer.kafka import kafka_python

    kafka_python.apply()
    consumer = KafkaConsumer(
        **settings.kafka.client_kwargs("changelog"),
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        max_poll_records=50_000,
    )
    try:
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        end = consumer.end_offsets(parts)
        latest: dict[bytes, tuple[int, bytes | None]] = {}
        deadline = time.monotonic() + timeout_s
        todo = {tp for tp in parts if end[tp] > 0}
        while todo:
            if time.monotonic() > deadline:
                raise TimeoutError(f"changelog restore did not finish in {timeout_s}s")
            for tp, recs in consumer.poll(timeout_ms=500).items():
                for r in recs:
                    if r.key is not None:
                        latest[r.key] = (tp.partition, r.value)
            todo = {tp for tp in todo if consumer.position(tp) < end[tp]}
        return latest
    finally:
        consumer.close()
