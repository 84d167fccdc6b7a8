"""The changelog reader for restores. (The group consumer of the input is made by the client
layer, ``stream_infer.kafka.make_consumer``: manual commits, which the commit path in
``checkpoint.py`` decides, ``read_committed`` reads, the cooperative-sticky assignor and, when
``group_instance_id`` is set, static membership, so a rolling restart does not reshuffle every
partition.)"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from stream_infer.config import Settings
from stream_infer.kafka import make_reader
from stream_infer.kafka.types import TopicPartition

logger = logging.getLogger(__name__)


def read_changelog(
    settings: Settings, partitions: Iterable[int], timeout_s: float = 120.0
) -> dict[bytes, tuple[int, bytes | None]]:
    """Latest value per key in the given changelog partitions: key -> (partition, value).

    Reads committed records only, from the beginning to the end offsets taken at the start
    (the last stable offsets), with either client (``stream_infer.kafka.make_reader``).
    Tombstones are returned as ``None`` values (the caller deletes those entities).
    """
    parts = [TopicPartition(settings.changelog_topic, p) for p in sorted(set(partitions))]
    if not parts:
        return {}
    reader = make_reader(settings, "changelog")
    try:
        reader.assign_from_beginning(parts)
        end = reader.end_offsets(parts)
        latest: dict[bytes, tuple[int, bytes | None]] = {}
        deadline = time.monotonic() + timeout_s
        todo = {tp for tp in parts if end[tp] > 0}
        while todo:
            if time.monotonic() > deadline:
                raise TimeoutError(f"changelog restore did not finish in {timeout_s}s")
            for tp, recs in reader.poll(timeout_ms=500).items():
                for r in recs:
                    if r.key is not None:
                        latest[r.key] = (tp.partition, r.value)
            todo = {tp for tp in todo if reader.position(tp) < end[tp]}
        return latest
    finally:
        reader.close()
