"""What both Kafka client implementations speak: partitions, offsets, records, callbacks and
the admin calls.

``TopicPartition`` and ``OffsetAndMetadata`` are the project's own named tuples (equal to, and
hashing as, kafka-python's of the same fields); errors are the project's ``errors`` classes
(each implementation translates its client's errors into them), so the commit path and the
access checks handle one set of types whichever client runs. Nothing here imports a client.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol


class TopicPartition(NamedTuple):
    topic: str
    partition: int


class OffsetAndMetadata(NamedTuple):
    """An offset to commit: the next one to read, with metadata and the leader epoch (-1)."""

    offset: int
    metadata: str
    leader_epoch: int


class RebalanceListener:
    """What the group consumer calls on a rebalance (each client adapts it to its own)."""

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        pass

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        pass

    def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        self.on_partitions_revoked(lost)


class Admin(Protocol):
    """The admin calls the service makes (topics, configs, ACLs), by either client. Errors are
    the project's ``errors`` classes."""

    client: str

    def partitions(self, topic: str) -> int | None:
        """The topic's partition count; None if it does not exist (or may not be described)."""
        ...

    def create_topic(self, name: str, partitions: int, configs: dict[str, str] | None = None) -> None:
        """Create a topic (replication factor 1 unless the broker's default applies); raises
        ``TopicAlreadyExistsError`` if it exists."""
        ...

    def topic_operations(self, topics: list[str]) -> dict[str, set[str] | None]:
        """The operations this principal may perform on each topic (``READ``, ``WRITE``, ...):
        an empty set when the topic may not be described, None when the broker does not say;
        topics that do not exist are left out."""
        ...

    def group_operations(self, group: str) -> set[str] | None:
        """The operations this principal may perform on the group; None when the broker does
        not say. Raises ``GroupAuthorizationFailedError`` when refused the group."""
        ...

    def topic_config(self, topic: str, name: str) -> str | None:
        """A topic's effective config value; None if the topic does not exist or may not be
        described."""
        ...

    def broker_config(self, name: str) -> str | None:
        """A config value of the first broker; None if it cannot be read."""
        ...

    def create_acls(self, acls: list[AclSpec], principal: str) -> None:
        """Create ALLOW rules for ``principal`` on any host (idempotent); raises ``KafkaError``
        naming the first that failed."""
        ...

    def close(self) -> None: ...


class AclSpec(NamedTuple):
    """One ALLOW rule as the admin clients take it (names as Kafka spells them)."""

    resource: str  # TOPIC, GROUP, TRANSACTIONAL_ID, CLUSTER
    name: str
    pattern: str  # LITERAL, PREFIXED
    operation: str  # READ, WRITE, CREATE, DESCRIBE_CONFIGS, ...


ErrorCallback = Callable[[BaseException], None]


def unhandled(exc: BaseException) -> None:
    """A producer's error callback until a sink sets its own."""
    logging.getLogger("stream_infer.kafka").error("a record was not delivered and nobody listens: %r", exc)


class ConsumedRecord(NamedTuple):
    """One consumed record, as both clients' ``poll`` returns it and decoding takes it; also
    what offline replays and tests hand to ``Service.ingest``."""

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
