"""The kafka-python implementation of the client layer, and everything stream-infer needs from
kafka-python's internals (nowhere else in the package touches them).

``KafkaPythonConsumer`` and ``KafkaPythonProducer`` are kafka-python's own clients with the few
calls the layer adds (``group_settled``, ``stable_offset``; ``produce`` with one error callback,
``key_partitions``, ``commit_transaction_with``, ``abandon``).

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

import logging
import time
from collections.abc import Sequence
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import Fetcher
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
from kafka.coordinator.consumer import ConsumerCoordinator
from kafka.errors import KafkaError, KafkaProtocolError, KafkaTimeoutError
from kafka.net.transport import KafkaTCPTransport
from kafka.partitioner.default import DefaultPartitioner, murmur2
from kafka.structs import MemberState, OffsetAndMetadata

from stream_infer.kafka.types import ErrorCallback, StableOffset, unhandled

logger = logging.getLogger(__name__)

_PATCHED = "_stream_infer_join_fix"
_LSO_PATCHED = "_stream_infer_lso_tracked"
_LSO = "_stream_infer_lso"  # on kafka-python's per-partition state: (hw, lso, stuck since)
_READ_PATCHED = "_stream_infer_reads_before_close"


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


def stable_offset(consumer: KafkaConsumer, tp: TopicPartition) -> StableOffset | None:
    """The LSO of an assigned partition as ``consumer``'s fetches saw it (``apply()`` first).

    None until a fetch response for ``tp`` arrived, when ``tp`` is not assigned, or when this
    kafka-python does not fit the patch. The broker leaves a partition out of a fetch response
    (incremental fetch sessions) while nothing about it changes, so ``stuck_s`` runs on the
    local clock from the response that showed the LSO last move (or the gap open), not from the
    latest response. Call it from the thread that polls.
    """
    seen = getattr(_partition_state(getattr(consumer, "_subscription", None), tp), _LSO, None)
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
    """kafka-python's consumer with the group join fix applied (``apply``) and the layer's calls."""

    client = "kafka-python"

    def __init__(self, **config: Any) -> None:
        apply()  # without it a join can silently keep no partitions
        config.setdefault("partition_assignment_strategy", [CooperativeStickyAssignor])
        super().__init__(**config)

    def group_settled(self) -> bool:
        """Whether the consumer is a joined group member with no rebalance under way (read from
        the coordinator's state; True when that is not available, so a changed client never makes
        a healthy service look wedged)."""
        state = getattr(getattr(self, "_coordinator", None), "state", MemberState.STABLE)
        return bool(state is MemberState.STABLE)

    def stable_offset(self, tp: TopicPartition) -> StableOffset | None:
        return stable_offset(self, tp)


class KafkaPythonProducer(KafkaProducer):  # type: ignore[misc]
    """kafka-python's producer with the layer's calls. Delivery failures go to ``on_error``."""

    client = "kafka-python"

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
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
        self.send(
            topic, key=key, value=value, partition=partition, headers=list(headers) if headers else None
        ).add_errback(self.on_error)

    def key_partitions(self, topic: str, keys: list[bytes]) -> list[int | None]:
        """Each key's partition as ``DefaultPartitioner`` (murmur2, as the Java client) picks it,
        cached per key so that the pure-Python hash runs once per key rather than once per
        record; the cache is dropped when the topic's partition count changes. ``None`` (the
        partitioner decides) with a custom partitioner or unknown metadata."""
        if type(self.config.get("partitioner")) is not DefaultPartitioner:
            return [None] * len(keys)
        try:
            known = self.partitions_for(topic)
        except KafkaError:
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

    def flush_within(self, timeout_s: float | None = None) -> None:
        self.flush(timeout=timeout_s)

    def commit_transaction_with(
        self, offsets: dict[TopicPartition, OffsetAndMetadata], group_metadata: Any, timeout_ms: int
    ) -> None:
        """Add ``offsets`` to the open transaction and commit it, each step bounded by
        ``timeout_ms``: ``send_offsets_to_transaction`` and ``commit_transaction`` wait without a
        timeout in kafka-python 3.0, and a request lost across a broker restart never completes,
        so the transaction manager's results are awaited here with one."""
        tm = self._transaction_manager
        if offsets:
            self._await(tm.send_offsets_to_transaction(offsets, group_metadata), timeout_ms)
        self._await(tm.begin_commit(), timeout_ms)

    def _await(self, result: Any, timeout_ms: int) -> None:
        self._sender.wakeup()
        if not result.wait(timeout_ms=timeout_ms):
            raise KafkaTimeoutError(f"no answer to a transactional request in {timeout_ms} ms")

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


__all__ = ["KafkaPythonConsumer", "KafkaPythonProducer", "StableOffset", "apply", "stable_offset"]
