"""The Kafka client layer: the consumer and producer calls the service makes, with two
implementations chosen by ``kafka.client``.

* ``confluent-kafka`` (librdkafka): fetching, parsing, CRC checks, batching, compression and the
  network in C, off the GIL that decoding, windowing and the engine need; rebalance callbacks run
  inside ``poll`` on the calling thread; cooperative-sticky assignment through incremental
  assigns; transactions with ``send_offsets_to_transaction``.
* ``kafka-python``: pure Python, the design's first client, kept fully supported. Its private
  attributes and the patches it needs live in ``kafka_python`` and nowhere else.

Both take the same settings and speak the same types (``types``): kafka-python's
``TopicPartition``/``OffsetAndMetadata`` and ``kafka.errors`` classes (librdkafka's error codes are
translated), so the rest of the service does not know which client runs. Admin operations
(topic creation and description, ACL checks) use kafka-python's admin client with either.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from kafka import TopicPartition
from kafka.structs import OffsetAndMetadata

from stream_infer.kafka.types import ConsumedRecord, ErrorCallback, StableOffset

if TYPE_CHECKING:
    from stream_infer.config import Settings

__all__ = [
    "ConsumedRecord",
    "Consumer",
    "ErrorCallback",
    "Producer",
    "StableOffset",
    "make_consumer",
    "make_producer",
    "max_request_bytes",
]


class Listener(Protocol):
    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None: ...
    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None: ...
    def on_partitions_lost(self, lost: set[TopicPartition]) -> None: ...


class Consumer(Protocol):
    """The group consumer: manual commits, ``read_committed``, cooperative-sticky assignment."""

    client: str

    def subscribe(self, topics: list[str], listener: Any = None) -> None: ...
    def poll(self, timeout_ms: int = 0) -> dict[TopicPartition, list[Any]]: ...
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


def max_request_bytes(settings: Settings) -> int:
    """The producer's largest request: it refuses a larger record before sending it."""
    return max(4 * settings.input.max_message_bytes, 1_048_576)


def make_consumer(settings: Settings) -> Consumer:
    """The group consumer of the input topic, by ``kafka.client``."""
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


def heartbeat_interval_ms(settings: Settings) -> int:
    return min(3_000, settings.kafka.session_timeout_ms // 3)


def producer_batch_bytes(settings: Settings, dead_letter_max_bytes: int | None) -> int:
    """A topic's max.message.bytes bounds a whole record batch: batches stay within what the
    dead-letter topic takes (a single larger record still goes alone, cut by the sink)."""
    k = settings.kafka
    return min(k.producer_batch_bytes, max(16_384, dead_letter_max_bytes or k.producer_batch_bytes))


def make_producer(
    settings: Settings,
    transactional_id: str | None = None,
    role: str = "producer",
    dead_letter_max_bytes: int | None = None,
) -> Producer:
    """The one producer of an instance, by ``kafka.client``. ``role`` names its client id; a
    replacement producer (after a failed transaction) gets a new one."""
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
