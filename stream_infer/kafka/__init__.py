"""The Kafka client layer: every Kafka call the service makes, with two implementations chosen
by ``kafka.client``.

* ``confluent-kafka`` (librdkafka): fetching, parsing, CRC checks, batching, compression and the
  network in C, off the GIL that decoding, windowing and the engine need; rebalance callbacks run
  inside ``poll`` on the calling thread; cooperative-sticky assignment through incremental
  assigns; transactions with ``send_offsets_to_transaction``. The admin calls, the changelog
  reader and the metadata probe use librdkafka too, so a serving install needs no other client.
* ``kafka-python``: pure Python, the design's first client, kept fully supported (the extra
  ``stream-infer[kafka-python]``). Its private attributes and the patches it needs live in
  ``kafka_python`` and nowhere else.

Both take the same settings and speak the same types (``types``: ``TopicPartition``,
``OffsetAndMetadata``, ``ConsumedRecord``) and the same errors (``errors``), into which each
implementation translates its client's, so the rest of the service does not know which client
runs. Only ``confluent`` imports confluent-kafka and only ``kafka_python`` imports kafka-python,
each when that client is chosen.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from stream_infer.errors import ConfigError
from stream_infer.kafka.sizing import heartbeat_interval_ms, max_request_bytes, producer_batch_bytes
from stream_infer.kafka.types import (
    Admin,
    ConsumedRecord,
    ErrorCallback,
    OffsetAndMetadata,
    RebalanceListener,
    StableOffset,
    TopicPartition,
)

if TYPE_CHECKING:
    from stream_infer.config import Settings

__all__ = [
    "Admin",
    "ConsumedRecord",
    "Consumer",
    "ErrorCallback",
    "OffsetAndMetadata",
    "Producer",
    "Reader",
    "RebalanceListener",
    "StableOffset",
    "TopicPartition",
    "await_partitions",
    "connect_admin",
    "heartbeat_interval_ms",
    "make_consumer",
    "make_producer",
    "make_reader",
    "max_request_bytes",
    "producer_batch_bytes",
    "require_client",
]

# The module each client needs, and the extra that installs it.
_CLIENT_MODULES = {
    "confluent-kafka": ("confluent_kafka", "confluent-kafka"),
    "kafka-python": ("kafka", "kafka-python"),
}


def require_client(settings: Settings) -> None:
    """``ConfigError`` in one line when the chosen client is not installed."""
    client = settings.kafka.client
    module, extra = _CLIENT_MODULES[client]
    if not _installed(module):
        if client == "kafka-python":
            raise ConfigError(
                f"kafka.client: kafka-python needs the extra: pip install 'stream-infer[{extra}]'"
            )
        raise ConfigError(f"kafka.client: {client} is not installed: pip install {extra}")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


class Consumer(Protocol):
    """The group consumer: manual commits, ``read_committed``, cooperative-sticky assignment."""

    client: str

    def subscribe(self, topics: list[str], listener: RebalanceListener | None = None) -> None: ...
    def poll(self, timeout_ms: int = 0) -> dict[TopicPartition, list[ConsumedRecord]]: ...
    def assignment(self) -> set[TopicPartition]: ...
    def paused(self) -> set[TopicPartition]: ...
    def pause(self, *partitions: TopicPartition) -> None: ...
    def resume(self, *partitions: TopicPartition) -> None: ...
    def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> Any: ...
    def commit_async(self, offsets: dict[TopicPartition, OffsetAndMetadata], callback: Any = None) -> Any: ...
    def committed(self, partition: TopicPartition, timeout_ms: int | None = None) -> int | None: ...
    def seek(self, partition: TopicPartition, offset: int) -> None: ...
    def seek_to_beginning(self, *partitions: TopicPartition) -> None: ...
    def seek_to_end(self, *partitions: TopicPartition) -> None: ...
    def position(self, partition: TopicPartition, timeout_ms: int | None = None) -> int | None: ...
    def highwater(self, partition: TopicPartition) -> int | None: ...
    def group_metadata(self) -> Any: ...
    def group_settled(self) -> bool: ...
    def stable_offset(self, tp: TopicPartition) -> StableOffset | None: ...
    def close(self, autocommit: bool = True) -> None: ...


class Producer(Protocol):
    """The instance's one idempotent producer (acks=all), transactional under exactly-once."""

    client: str
    on_error: ErrorCallback

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None: ...
    def key_partitions(self, topic: str, keys: list[bytes]) -> list[int | None]: ...
    def flush_within(self, timeout_s: float | None = None) -> None: ...
    def init_transactions(self) -> None: ...
    def begin_transaction(self) -> None: ...
    def commit_transaction_with(
        self, offsets: dict[TopicPartition, OffsetAndMetadata], group_metadata: Any, timeout_ms: int
    ) -> None: ...
    def abandon(self) -> None: ...
    def close(self, timeout: float | None = None) -> None: ...


def make_consumer(settings: Settings) -> Consumer:
    """The group consumer of the input topic, by ``kafka.client``."""
    require_client(settings)
    if settings.kafka.client == "confluent-kafka":
        from stream_infer.kafka.confluent import ConfluentConsumer

        return ConfluentConsumer(settings)
    from stream_infer.kafka.kafka_python import KafkaPythonConsumer

    k = settings.kafka
    return KafkaPythonConsumer(  # type: ignore[no-any-return]
        **k.client_kwargs("consumer"),
        group_id=k.group_id,
        group_instance_id=k.group_instance_id,
        enable_auto_commit=False,
        auto_offset_reset=k.auto_offset_reset,
        isolation_level="read_committed",
        max_poll_records=k.max_poll_records,
        max_poll_interval_ms=k.max_poll_interval_ms,
        session_timeout_ms=k.session_timeout_ms,
        # A third of the session, as the broker expects (kafka-python's 3 s default is too
        # slow for short sessions: a member would learn of a rebalance late).
        heartbeat_interval_ms=heartbeat_interval_ms(settings),
        fetch_max_bytes=k.fetch_max_bytes,
        max_partition_fetch_bytes=k.max_partition_fetch_bytes,
    )


def make_producer(
    settings: Settings,
    transactional_id: str | None = None,
    role: str = "producer",
    dead_letter_max_bytes: int | None = None,
) -> Producer:
    """The one producer of an instance, by ``kafka.client``. ``role`` names its client id; a
    replacement producer (after a failed transaction) gets a new one."""
    require_client(settings)
    if settings.kafka.client == "confluent-kafka":
        from stream_infer.kafka.confluent import ConfluentProducer

        return ConfluentProducer(settings, transactional_id, role, dead_letter_max_bytes)
    from stream_infer.kafka.kafka_python import KafkaPythonProducer

    k = settings.kafka
    kw: dict[str, Any] = dict(
        k.client_kwargs(role),
        acks="all",
        enable_idempotence=True,
        linger_ms=k.linger_ms,
        batch_size=producer_batch_bytes(settings, dead_letter_max_bytes),
        retries=2**31 - 1,
        delivery_timeout_ms=300_000,
        max_block_ms=300_000,
        compression_type=None if k.compression_type == "none" else k.compression_type,
        max_request_size=max_request_bytes(settings),
    )
    if transactional_id:
        kw.update(
            transactional_id=transactional_id, transaction_timeout_ms=settings.delivery.transaction_timeout_ms
        )
    return KafkaPythonProducer(**kw)  # type: ignore[no-any-return]


class Reader(Protocol):
    """A consumer outside any group, of assigned partitions, ``read_committed``: the changelog
    reader, the metadata probe, the demo's reader of predictions."""

    def partitions_for(self, topic: str) -> set[int] | None:
        """The topic's partitions as the broker serves them; None (or empty) while unknown."""
        ...

    def assign_from_beginning(self, partitions: list[TopicPartition]) -> None: ...
    def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        """The offsets up to which a ``read_committed`` reader can read now (last stable)."""
        ...

    def position(self, partition: TopicPartition) -> int:
        """The offset of the next record to read (past any transaction markers read)."""
        ...

    def poll(self, timeout_ms: int = 0) -> dict[TopicPartition, list[ConsumedRecord]]: ...
    def close(self) -> None: ...


def make_reader(settings: Settings, role: str) -> Reader:
    """A reader outside any group (``role`` names its client id), by ``kafka.client``."""
    require_client(settings)
    if settings.kafka.client == "confluent-kafka":
        from stream_infer.kafka.confluent import ConfluentReader

        return ConfluentReader(settings, role)
    from stream_infer.kafka.kafka_python import make_reader as make_kafka_python_reader

    return make_kafka_python_reader(settings, role)


def connect_admin(settings: Settings, timeout_s: float | None = None) -> Admin:
    """An admin client that reached the brokers within ``timeout_s`` (default
    ``kafka.startup_timeout_s``), by ``kafka.client``; else a ``ConfigError`` in one line naming
    the servers and the cause (a refusal, certificates or credentials, ends it at once)."""
    require_client(settings)
    timeout_s = settings.kafka.startup_timeout_s if timeout_s is None else timeout_s
    if settings.kafka.client == "confluent-kafka":
        from stream_infer.kafka.confluent import connect_admin as connect_confluent

        return connect_confluent(settings, timeout_s)
    from stream_infer.kafka.kafka_python import connect_admin as connect_kafka_python

    return connect_kafka_python(settings, timeout_s)


def await_partitions(settings: Settings, topic: str, timeout_s: float = 30.0) -> set[int]:
    """Wait until the broker serves ``topic``'s partitions; ``ConfigError`` after ``timeout_s``.

    Asked through a throwaway reader: a group consumer that joins before the topic's metadata is
    known gets an empty assignment, and (kafka-python 3.0) fetching all-topic metadata on the
    group consumer itself triggers a rejoin that can stall."""
    probe = make_reader(settings, "probe")
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            parts = probe.partitions_for(topic)
            if parts:
                return parts
            if time.monotonic() > deadline:
                raise ConfigError(f"no partition metadata for input topic {topic!r}")
            time.sleep(0.1)
    finally:
        probe.close()
