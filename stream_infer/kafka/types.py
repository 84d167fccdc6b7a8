"""What both Kafka client implementations speak: records, offsets and callbacks.

Partitions and offsets are kafka-python's ``TopicPartition`` and ``OffsetAndMetadata`` (plain
named tuples), whichever client runs; errors are kafka-python's ``kafka.errors`` classes (the
confluent-kafka implementation translates librdkafka's codes into them), so the commit path and
the access checks handle one set of errors.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import NamedTuple

ErrorCallback = Callable[[BaseException], None]


def unhandled(exc: BaseException) -> None:
    """A producer's error callback until a sink sets its own."""
    logging.getLogger("stream_infer.kafka").error("a record was not delivered and nobody listens: %r", exc)


class ConsumedRecord(NamedTuple):
    """One consumed record, in the fields decoding uses (``decode.Record``); also what offline
    replays and tests hand to ``Service.ingest``."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()


class StableOffset(NamedTuple):
    """A partition's offsets from the latest fetch response that carried them."""

    high_watermark: int  # the offset the next record written gets
    last_stable_offset: int  # first offset of the oldest open transaction; the HW when none is
    stuck_s: float  # how long the LSO has stayed behind the HW without moving; 0 when it is not

    @property
    def unstable_records(self) -> int:
        """Records written past the LSO: invisible to ``read_committed`` readers until the
        transactions holding them end."""
        return max(0, self.high_watermark - self.last_stable_offset)
