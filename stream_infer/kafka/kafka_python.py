"""The kafka-python implementation of the client layer, and everything stream-infer needs from
kafka-python's internals (nowhere else in the package touches them).

``KafkaPythonConsumer`` and ``KafkaPythonProducer`` are kafka-python's own clients with the few
calls the layer adds (``group_settled``, ``stable_offset``; ``produce`` with one error callback,
``key_partitions``, ``commit_transaction_with``, ``abandon``). At their boundary they speak the
layer's types: the project's ``TopicPartition``/``OffsetAndMetadata`` (converted to
kafka-python's where it checks ``isinstance``), ``ConsumedRecord`` from ``poll``, and the
project's ``errors`` (kafka-python's are translated by class name, ``translate``). The admin
client, the reader outside the group and the OAuth token provider are in ``kafka_python_admin``.

``apply()`` patches the client once, before any consumer is made: the group join fix and the
last stable offset tracking below. Both are guarded on the attributes they use: with another
kafka-python a patch is skipped with a warning rather than breaking the consumer.

**The group join.** kafka-python 3.0 runs a JoinGroup/SyncGroup round as a task on its IO
thread and waits for it at most the ``poll`` timeout. When a rebalance is triggered by a metadata
change (the input topic appearing, or gaining partitions), nothing keeps the "rejoin needed" flag
set: the leader computes the assignment inside the task, which makes the metadata and assignment
snapshots equal again. If the poll gave up waiting just before the SyncGroup answer arrived,
the next poll sees no rejoin to do, the finished task is never collected, and the consumer keeps
its old (often empty) assignment for good: a member of the group that consumes nothing, silently.

The fix has two parts, both small:

* while a join task exists, a rejoin is needed (the Java client's KAFKA-9815 fix is the same
  idea: a rebalance once started is seen through);
* a join task that finished while nobody waited is applied, not thrown away for a fresh join
  (which would only lead to the same race again on a loaded host).

**The last stable offset.** A ``read_committed`` consumer reads up to the last stable offset
(LSO): the first offset of the oldest transaction still open. A producer that dies inside a
transaction holds it there until the broker aborts the transaction (the producer's
``transaction_timeout_ms`` plus the broker's abort check), and every reader of the partition
waits. Fetch responses carry the LSO, but kafka-python keeps only the high watermark; the patch
keeps the LSO too, and ``stable_offset()`` reports it with how long it has been stuck.

**The last bytes before a disconnect.** kafka-python's transport reads a socket until it would
block; when that read ends in the peer's close, it aborts with "socket disconnected" and throws
away the bytes it read just before. A broker that refuses SASL credentials sends its
``SaslAuthenticate`` error and closes the connection at once (after
``connection.failed.authentication.delay.ms``), so both often arrive in one read, and the refusal
was then reported as a network fault ("cannot reach Kafka") one start in three. The patch hands
those bytes to the connection first, lets the coroutine waiting on them run (it raises the
refusal), and only then closes the transport.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar, cast

import kafka
import kafka.errors as kerr
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer
from kafka.consumer.fetcher import Fetcher
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
from kafka.coordinator.consumer import ConsumerCoordinator
from kafka.errors import KafkaProtocolError
from kafka.net.transport import KafkaTCPTransport
from kafka.partitioner.default import DefaultPartitioner, murmur2
from kafka.structs import MemberState

from stream_infer.kafka import errors
from stream_infer.kafka.types import (
    ConsumedRecord,
    ErrorCallback,
    OffsetAndMetadata,
    RebalanceListener,
    StableOffset,
    TopicPartition,
    unhandled,
)

logger = logging.getLogger(__name__)

_PATCHED = "_stream_infer_join_fix"
_LSO_PATCHED = "_stream_infer_lso_tracked"
_LSO = "_stream_infer_lso"  # on kafka-python's per-partition state: (hw, lso, stuck since)
_READ_PATCHED = "_stream_infer_reads_before_close"


F = TypeVar("F", bound=Callable[..., Any])


def translate(exc: BaseException) -> BaseException:
    """kafka-python's error as the project's class of the same name (or of the nearest base
    class it has), with the same message; other exceptions unchanged."""
    if not isinstance(exc, kerr.KafkaError):
        return exc
    cls: type[errors.KafkaError] = errors.KafkaError
    for base in type(exc).__mro__:
        found = errors.by_name(base.__name__)
        if found is not None:
            cls = found
            break
    ours = cls(*exc.args)
    ours.origin = exc
    for attr in ("unauthorized_topics",):
        if hasattr(exc, attr):
            setattr(ours, attr, getattr(exc, attr))
    ours.__cause__ = exc
    return ours


def translated(fn: F) -> F:
    """Raise the project's error for kafka-python's."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except kerr.KafkaError as exc:
            raise translate(exc) from exc

    return cast(F, call)


def to_kafka(tp: TopicPartition) -> kafka.TopicPartition:
    return kafka.TopicPartition(tp.topic, tp.partition)


def from_kafka(tp: Any) -> TopicPartition:
    return TopicPartition(tp.topic, tp.partition)


def offsets_to_kafka(
    offsets: dict[TopicPartition, OffsetAndMetadata],
) -> dict[kafka.TopicPartition, kafka.OffsetAndMetadata]:
    return {
        to_kafka(tp): kafka.OffsetAndMetadata(om.offset, om.metadata, om.leader_epoch)
        for tp, om in offsets.items()
    }


def records_from_kafka(polled: dict[Any, list[Any]]) -> dict[TopicPartition, list[ConsumedRecord]]:
    return {
        TopicPartition(tp.topic, tp.partition): [
            ConsumedRecord(r.topic, r.partition, r.offset, r.timestamp, r.key, r.value, r.headers or ())
            for r in recs
        ]
        for tp, recs in polled.items()
    }


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """The layer's listener as kafka-python's (which checks the class), partitions converted."""

    def __init__(self, listener: RebalanceListener) -> None:
        self.listener = listener

    def on_partitions_revoked(self, revoked: Iterable[Any]) -> None:
        self.listener.on_partitions_revoked({from_kafka(tp) for tp in revoked})

    def on_partitions_assigned(self, assigned: Iterable[Any]) -> None:
        self.listener.on_partitions_assigned({from_kafka(tp) for tp in assigned})

    def on_partitions_lost(self, lost: Iterable[Any]) -> None:
        self.listener.on_partitions_lost({from_kafka(tp) for tp in lost})


def apply() -> bool:
    """Patch kafka-python (idempotent); False when a patch does not fit this kafka-python."""
    join_fixed = _fix_group_join()
    lso_tracked = _track_last_stable_offset()
    reads_kept = _keep_bytes_read_before_close()
    return join_fixed and lso_tracked and reads_kept


def _keep_bytes_read_before_close() -> bool:
    """Patch ``KafkaTCPTransport`` (and so its TLS subclass); False when it does not fit."""
    cls: Any = KafkaTCPTransport
    if getattr(cls, _READ_PATCHED, False):
        return True
    if not all(hasattr(cls, name) for name in ("_read_from_sock", "_sock_recv", "abort")):
        logger.warning("kafka-python's transport has changed; bytes read before a close may be lost")
        return False

    async def patched_read_from_sock(self: Any) -> None:
        while self._read and not self._closed:
            await self._net.wait_read(self._sock)
            data, err = self._sock_recv()
            if data:
                self.last_read = time.monotonic()
                sensors = getattr(self._protocol, "_sensors", None) if self._protocol else None
                if sensors:
                    sensors.bytes_received.record(len(data))
                try:
                    if self._protocol is not None:
                        self._protocol.data_received(data)
                except KafkaProtocolError as exc:
                    return self.abort(error=exc)
            if err:
                if data:
                    # Let the coroutines the last response woke run first (a SASL refusal
                    # raises there); the disconnect is then only the broker's close after it.
                    await self._net.sleep(0)
                return self.abort(error=err)
        return None

    cls._read_from_sock = patched_read_from_sock
    setattr(cls, _READ_PATCHED, True)
    return True


def _fix_group_join() -> bool:
    """Patch ``ConsumerCoordinator``; False when this kafka-python does not fit."""
    cls: Any = ConsumerCoordinator
    if getattr(cls, _PATCHED, False):
        return True
    needed = ("need_rejoin", "join_group_async", "_on_join_complete_async", "_enable_heartbeat")
    if not all(hasattr(cls, name) for name in needed):
        logger.warning("kafka-python's coordinator has changed; the group join fix is not applied")
        return False
    need_rejoin = cls.need_rejoin
    join_group_async = cls.join_group_async

    def patched_need_rejoin(self: Any) -> bool:
        if getattr(self, "_join_task", None) is not None:
            return True  # a join is in flight (or finished, unread): see it through
        if need_rejoin(self):
            self.rejoin_needed = True  # stays set until a join completes
            return True
        return False

    async def patched_join_group_async(self: Any, timeout_ms: Any = None) -> Any:
        task = getattr(self, "_join_task", None)
        if task is not None and task.is_done and task.exception is None:
            # The assignment arrived after the last poll stopped waiting: apply it now,
            # exactly as join_group_async would have.
            self._join_task = None
            with self._lock:
                self.rejoining = False
                self.rejoin_needed = False
                self.state = MemberState.STABLE
                self._enable_heartbeat()
            gen = self._generation
            logger.info("applying a group assignment that arrived after the poll timed out")
            await self._on_join_complete_async(gen.generation_id, gen.member_id, gen.protocol, task.value)
        return await join_group_async(self, timeout_ms)

    cls.need_rejoin = patched_need_rejoin
    cls.join_group_async = patched_join_group_async
    setattr(cls, _PATCHED, True)
    return True


def stable_offset(consumer: KafkaConsumer, tp: Any) -> StableOffset | None:
    """The LSO of an assigned partition as ``consumer``'s fetches saw it (``apply()`` first).

    None until a fetch response for ``tp`` arrived, when ``tp`` is not assigned, or when this
    kafka-python does not fit the patch. The broker leaves a partition out of a fetch response
    (incremental fetch sessions) while nothing about it changes, so ``stuck_s`` runs on the
    local clock from the response that showed the LSO last move (or the gap open), not from the
    latest response. Call it from the thread that polls.
    """
    state = _partition_state(getattr(consumer, "_subscription", None), to_kafka(tp))
    seen = getattr(state, _LSO, None)
    if seen is None:
        return None
    hw, lso, since = seen
    return StableOffset(hw, lso, time.monotonic() - since if lso < hw else 0.0)


def _track_last_stable_offset() -> bool:
    """Patch ``Fetcher`` to keep each fetch response's LSO on the partition's state."""
    cls: Any = Fetcher
    if getattr(cls, _LSO_PATCHED, False):
        return True
    if not hasattr(cls, "_parse_fetched_data"):
        logger.warning("kafka-python's fetcher has changed; the last stable offset is not tracked")
        return False
    parse_fetched_data = cls._parse_fetched_data

    def patched_parse_fetched_data(self: Any, completed_fetch: Any) -> Any:
        _note_stable_offset(self, completed_fetch)
        return parse_fetched_data(self, completed_fetch)

    cls._parse_fetched_data = patched_parse_fetched_data
    setattr(cls, _LSO_PATCHED, True)
    return True


def _note_stable_offset(fetcher: Any, completed_fetch: Any) -> None:
    data = getattr(completed_fetch, "partition_data", None)
    hw = getattr(data, "high_watermark", None)
    lso = getattr(data, "last_stable_offset", None)
    if getattr(data, "error_code", None) != 0 or not isinstance(hw, int) or not isinstance(lso, int):
        return
    if hw < 0 or lso < 0:
        return  # not known to the broker (or fetch v3 and below, which has no LSO)
    tp = getattr(completed_fetch, "topic_partition", None)
    state = _partition_state(getattr(fetcher, "_subscriptions", None), tp)
    if state is None:
        return
    # Stuck since the response that showed the LSO move, or the first records appear past it.
    since = time.monotonic()
    prev: tuple[int, int, float] | None = getattr(state, _LSO, None)
    if prev is not None and prev[1] == lso and prev[1] < prev[0]:
        since = prev[2]  # records were already waiting past this same LSO
    setattr(state, _LSO, (hw, lso, since))


def _partition_state(subscriptions: Any, tp: Any) -> Any:
    """kafka-python's ``TopicPartitionState`` of an assigned partition, or None."""
    assignment = getattr(subscriptions, "assignment", None)
    return assignment.get(tp) if isinstance(assignment, dict) else None


_PARTITION_CACHE_MAX = 1_000_000  # keys; cleared (and refilled) past this


class KafkaPythonConsumer(KafkaConsumer):  # type: ignore[misc]
    """kafka-python's consumer with the group join fix applied (``apply``) and the layer's calls,
    in the layer's types and errors."""

    client = "kafka-python"

    def __init__(self, **config: Any) -> None:
        apply()  # without it a join can silently keep no partitions
        config.setdefault("partition_assignment_strategy", [CooperativeStickyAssignor])
        try:
            super().__init__(**config)
        except kerr.KafkaError as exc:
            raise translate(exc) from exc

    def group_settled(self) -> bool:
        """Whether the consumer is a joined group member with no rebalance under way (read from
        the coordinator's state; True when that is not available, so a changed client never makes
        a healthy service look wedged)."""
        state = getattr(getattr(self, "_coordinator", None), "state", MemberState.STABLE)
        return bool(state is MemberState.STABLE)

    def stable_offset(self, tp: TopicPartition) -> StableOffset | None:
        return stable_offset(self, tp)

    @translated
    def subscribe(self, topics: Any = (), pattern: Any = None, listener: Any = None) -> None:
        if listener is not None and not isinstance(listener, ConsumerRebalanceListener):
            listener = _Listener(listener)
        super().subscribe(topics, pattern=pattern, listener=listener)

    @translated
    def poll(self, timeout_ms: int = 0, max_records: int | None = None, update_offsets: bool = True) -> Any:
        polled = super().poll(timeout_ms=timeout_ms, max_records=max_records, update_offsets=update_offsets)
        return records_from_kafka(polled) if polled else {}

    def assignment(self) -> set[TopicPartition]:
        return {from_kafka(tp) for tp in super().assignment()}

    def paused(self) -> set[TopicPartition]:
        return {from_kafka(tp) for tp in super().paused()}

    def pause(self, *partitions: TopicPartition) -> None:
        super().pause(*(to_kafka(tp) for tp in partitions))

    def resume(self, *partitions: TopicPartition) -> None:
        super().resume(*(to_kafka(tp) for tp in partitions))

    @translated
    def commit(self, offsets: Any = None, timeout_ms: int | None = None) -> Any:
        return super().commit(
            offsets if offsets is None else offsets_to_kafka(offsets), timeout_ms=timeout_ms
        )

    @translated
    def commit_async(self, offsets: Any = None, callback: Any = None) -> Any:
        def done(offs: Any, response: Any) -> None:
            if isinstance(response, BaseException):
                response = translate(response)
            if isinstance(offs, dict):
                offs = {from_kafka(tp): om for tp, om in offs.items()}
            callback(offs, response)

        return super().commit_async(
            offsets if offsets is None else offsets_to_kafka(offsets), callback if callback is None else done
        )

    @translated
    def committed(self, partition: TopicPartition, timeout_ms: int | None = None) -> int | None:
        return super().committed(to_kafka(partition), timeout_ms=timeout_ms)  # type: ignore[no-any-return]

    @translated
    def seek(self, partition: TopicPartition, offset: int) -> None:
        super().seek(to_kafka(partition), offset)

    @translated
    def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        super().seek_to_beginning(*(to_kafka(tp) for tp in partitions))

    @translated
    def seek_to_end(self, *partitions: TopicPartition) -> None:
        super().seek_to_end(*(to_kafka(tp) for tp in partitions))

    @translated
    def position(self, partition: TopicPartition, timeout_ms: int | None = None) -> int | None:
        return super().position(to_kafka(partition), timeout_ms=timeout_ms)  # type: ignore[no-any-return]

    def highwater(self, partition: TopicPartition) -> int | None:
        return super().highwater(to_kafka(partition))  # type: ignore[no-any-return]

    @translated
    def assign(self, partitions: list[TopicPartition]) -> None:
        super().assign([to_kafka(tp) for tp in partitions])

    @translated
    def end_offsets(self, partitions: list[TopicPartition], timeout_ms: int | None = None) -> Any:
        ends = super().end_offsets([to_kafka(tp) for tp in partitions], timeout_ms=timeout_ms)
        return {from_kafka(tp): o for tp, o in ends.items()}

    @translated
    def close(self, autocommit: bool = True, timeout_ms: int | None = None) -> None:
        super().close(autocommit=autocommit, timeout_ms=timeout_ms)


class KafkaPythonProducer(KafkaProducer):  # type: ignore[misc]
    """kafka-python's producer with the layer's calls. Delivery failures go to ``on_error``."""

    client = "kafka-python"

    def __init__(self, **config: Any) -> None:
        try:
            super().__init__(**config)
        except kerr.KafkaError as exc:
            raise translate(exc) from exc
        self.on_error: ErrorCallback = unhandled
        self._partition_of: dict[bytes, int] = {}
        self._sorted_partitions: list[int] = []

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        try:
            future = self.send(
                topic, key=key, value=value, partition=partition, headers=list(headers) if headers else None
            )
        except kerr.KafkaError as exc:
            raise translate(exc) from exc
        future.add_errback(self._failed)

    def _failed(self, exc: BaseException) -> None:
        self.on_error(translate(exc))

    def key_partitions(self, topic: str, keys: list[bytes]) -> list[int | None]:
        """Each key's partition as ``DefaultPartitioner`` (murmur2, as the Java client) picks it,
        cached per key so that the pure-Python hash runs once per key rather than once per
        record; the cache is dropped when the topic's partition count changes. ``None`` (the
        partitioner decides) with a custom partitioner or unknown metadata."""
        if type(self.config.get("partitioner")) is not DefaultPartitioner:
            return [None] * len(keys)
        try:
            known = self.partitions_for(topic)
        except kerr.KafkaError:
            return [None] * len(keys)
        if not known:
            return [None] * len(keys)
        if len(known) != len(self._sorted_partitions):
            self._partition_of.clear()
            self._sorted_partitions = sorted(known)
        n = len(self._sorted_partitions)
        cache = self._partition_of
        out: list[int | None] = []
        for k in keys:
            p = cache.get(k)
            if p is None:
                p = cache[k] = self._sorted_partitions[(murmur2(k) & 0x7FFFFFFF) % n]
                if len(cache) > _PARTITION_CACHE_MAX:
                    cache.clear()
                    cache[k] = p
            out.append(p)
        return out

    @translated
    def flush_within(self, timeout_s: float | None = None) -> None:
        self.flush(timeout=timeout_s)

    @translated
    def init_transactions(self) -> None:
        super().init_transactions()

    @translated
    def begin_transaction(self) -> None:
        super().begin_transaction()

    @translated
    def close(self, timeout: float | None = None, null_logger: bool = False) -> None:
        super().close(timeout=timeout, null_logger=null_logger)

    @translated
    def commit_transaction_with(
        self, offsets: dict[TopicPartition, OffsetAndMetadata], group_metadata: Any, timeout_ms: int
    ) -> None:
        """Add ``offsets`` to the open transaction and commit it, each step bounded by
        ``timeout_ms``: ``send_offsets_to_transaction`` and ``commit_transaction`` wait without a
        timeout in kafka-python 3.0, and a request lost across a broker restart never completes,
        so the transaction manager's results are awaited here with one."""
        tm = self._transaction_manager
        if offsets:
            self._await(tm.send_offsets_to_transaction(offsets_to_kafka(offsets), group_metadata), timeout_ms)
        self._await(tm.begin_commit(), timeout_ms)

    def _await(self, result: Any, timeout_ms: int) -> None:
        self._sender.wakeup()
        if not result.wait(timeout_ms=timeout_ms):
            raise kerr.KafkaTimeoutError(f"no answer to a transactional request in {timeout_ms} ms")

    def abandon(self) -> None:
        """Close at once without delivering what is queued, and wait until every queued record's
        callback has run (their errors then belong to an aborted transaction)."""
        try:
            self.close(timeout=0)
        except Exception as exc:  # kafka-python: close(0) raises from its flush before stopping
            logger.info("closing the abandoned producer: %s", exc)
        sender = getattr(self, "_sender", None)
        if sender is not None and sender.is_alive():
            sender.force_close()
            sender.join(10)


def make_reader(settings: Any, role: str) -> Any:
    """The reader outside any group (``stream_infer.kafka.make_reader``)."""
    from stream_infer.kafka.kafka_python_admin import KafkaPythonReader

    return KafkaPythonReader(settings, role)


def connect_admin(settings: Any, timeout_s: float) -> Any:
    """The admin client (``stream_infer.kafka.connect_admin``)."""
    from stream_infer.kafka.kafka_python_admin import connect_admin as connect

    return connect(settings, timeout_s)


__all__ = [
    "KafkaPythonConsumer",
    "KafkaPythonProducer",
    "StableOffset",
    "apply",
    "connect_admin",
    "make_reader",
    "stable_offset",
    "translate",
]
