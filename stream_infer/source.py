"""Kafka consumer side: the group consumer for the input, and the changelog reader for restores.

The consumer commits manually (the commit path in ``checkpoint.py`` decides when), reads only
committed records (``read_committed``: upstream transactions and our own aborted ones are
invisible), uses the cooperative-sticky assignor and, when ``group_instance_id`` is set, static
membership, so a rolling restart does not reshuffle every partition.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from kafka import KafkaConsumer, TopicPartition
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
from kafka.structs import MemberState

from stream_infer import kafka_compat
from stream_infer.config import Settings

logger = logging.getLogger(__name__)


def make_consumer(settings: Settings) -> KafkaConsumer:
    kafka_compat.apply()  # see kafka_compat: without it a join can silently keep no partitions
    k = settings.kafka
    return KafkaConsumer(
        **k.client_kwargs("consumer"),
        group_id=k.group_id,
        group_instance_id=k.group_instance_id,
        enable_auto_commit=False,
        auto_offset_reset=k.auto_offset_reset,
        isolation_level="read_committed",
        partition_assignment_strategy=[CooperativeStickyAssignor],
        max_poll_records=k.max_poll_records,
        max_poll_interval_ms=k.max_poll_interval_ms,
        session_timeout_ms=k.session_timeout_ms,
        # A third of the session, as the broker expects (kafka-python's 3 s default is too
        # slow for short sessions: a member would learn of a rebalance late).
        heartbeat_interval_ms=min(3_000, k.session_timeout_ms // 3),
        fetch_max_bytes=k.fetch_max_bytes,
        max_partition_fetch_bytes=k.max_partition_fetch_bytes,
    )


def group_settled(consumer: KafkaConsumer) -> bool:
    """Whether the consumer is a joined group member with no rebalance under way.

    Reads kafka-python's coordinator state (no public call exposes it); True when that is not
    available, so a changed client never makes a healthy service look wedged.
    """
    state = getattr(getattr(consumer, "_coordinator", None), "state", MemberState.STABLE)
    return bool(state is MemberState.STABLE)


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
