"""The commit path. Its order is the delivery guarantee, so it is written down here.

The offset invariant: an input offset is committed (or sent to the transaction) only past
records whose effects are finished: their predictions flushed (or in the transaction), their
state in the changelog, or the record itself dead-lettered. ``track`` is therefore called by the
run loop after a poll's records were ingested (decoded, windowed, handed to the inference
thread, bad ones dead-lettered), never at poll time; a poll whose ingest raised is never
tracked, so no exception path (shutdown included) can commit past it. The checkpoint then
drains the inference thread and flushes the producer before the offsets go out, so "handed
over" becomes "finished" before the commit. After a failure that is not about one record the
service stops without a checkpoint: the next owner replays from the last commit.

at-least-once (default)::

    1. drain     the inference thread runs every queued window; predictions are sent
    2. flush     predictions and dead letters acknowledged by the broker (acks=all)
    3. changelog one record per entity touched since the last checkpoint, tombstones for
                 evicted ones; flushed
    4. commit    the consumed offsets (asynchronously for the periodic checkpoints; waited for
                 at shutdown)

The periodic checkpoints run steps 2-4 on a background thread (``commit-path``): the source
thread only drains, takes the changelog snapshot and the offsets (both as of the drain), and
goes back to polling, decoding and windowing while the flush, changelog and commit are in
flight; the offsets go out (``commit_async``, from the source thread) once the background part
is done. A checkpoint due while the previous one is still in flight waits for the next turn of
the loop. Checkpoints in rebalance callbacks, at shutdown and before a rewind first wait for the
one in flight, then run in full on the calling thread.

A crash anywhere before 4 replays the input from the previous commit. Entities whose changelog
record already holds the newer state drop the replayed samples as duplicates (seq); the others
recompute the same predictions from the same state, so duplicates are confined to the last
commit interval and identifiable by (entity, seq).

exactly-once::

    1. drain     as above, inside the open transaction
    2. changelog as above, inside the transaction
    3. offsets   send_offsets_to_transaction(offsets, consumer group metadata)
    4. commit    commit_transaction(); begin_transaction() for the next interval

Predictions, changelog and offsets become visible to ``read_committed`` readers together or
not at all. The periodic checkpoints run steps 3-4 (and the next ``begin_transaction``) on the
background thread; meanwhile the sink holds new predictions and dead letters at its gate (they
belong to the next transaction), and the source thread polls, decodes and windows on. A transaction that fails, or whose steps 3-4 get no answer within
``kafka.request_timeout_ms`` (a broker outage; kafka-python 3.0 can also lose a transactional
request across a broker restart and would wait forever: each client bounds the wait, see
``stream_infer.kafka``), is abandoned and the instance rewinds::

    1. a new producer with the same transactional id: ``init_transactions`` fences the old one
       and aborts its open transaction (its predictions and changelog records vanish), or waits
       until a commit that reached the coordinator before the outage has completed
    2. every assigned partition seeks back to its committed offset, read from the broker (not
       from memory: the abandoned commit may have succeeded)
    3. the state of those partitions is dropped and restored from the (committed) changelog,
       read after the offsets, so it is never older than the position it resumes from

so the replayed input recomputes exactly what was aborted. A lost assignment (the group dropped
this member, e.g. its session expired across a broker restart) abandons the open transaction the
same way: the lost partitions' state is dropped without a checkpoint, and their replay must not
publish into a transaction that already holds its first results. Only ``ProducerFencedError``
(another live instance owns the transactional id) is fatal: the process exits.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from tenacity import (
    retry,
    retry_if_exception_type,
    retry_if_not_exception_type,
    stop_after_delay,
    wait_exponential,
)

from stream_infer.config import Settings
from stream_infer.errors import SinkError
from stream_infer.kafka import Consumer, Producer, make_producer
from stream_infer.kafka.access import authorization_cause
from stream_infer.kafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    KafkaError,
    ProducerFencedError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)
from stream_infer.kafka.types import OffsetAndMetadata, TopicPartition
from stream_infer.metrics import Metrics
from stream_infer.pipeline.sink import Sink
from stream_infer.state.models import ModelStates
from stream_infer.state.store import EntityStore

logger = logging.getLogger(__name__)

# The group moved on (a rebalance): this commit cannot succeed now, and must not block poll().
_GROUP_ERRORS = (RebalanceInProgressError, CommitFailedError, IllegalGenerationError, UnknownMemberIdError)


@dataclass
class _InFlight:
    """A periodic checkpoint whose background part (flush, changelog, commit) is under way."""

    done: Future[None]
    offsets: dict[TopicPartition, OffsetAndMetadata]
    started: float  # perf_counter at the checkpoint's start
    records: int  # changelog records


class Checkpointer:
    """Runs the commit path over its collaborators: the group consumer (offsets), the sink (and
    its producer: flushes, transactions), the entity store (changelog snapshots), ``drain`` (the
    inference thread's barrier), ``restore`` (reload partitions' state from the changelog, for
    the exactly-once rewind; returns how many entities), the metrics and the settings."""

    def __init__(
        self,
        *,
        consumer: Consumer,
        sink: Sink,
        store: EntityStore | ModelStates,
        drain: Callable[[], None],
        restore: Callable[[set[int]], int],
        metrics: Metrics,
        settings: Settings,
    ) -> None:
        self.consumer = consumer
        self.sink = sink
        self.store = store
        self.drain = drain
        self.restore = restore
        self.metrics = metrics
        self.settings = settings
        self.eos = settings.delivery.guarantee == "exactly-once"
        self.offsets: dict[TopicPartition, int] = {}  # next offset to read, per partition
        self._committed: dict[TopicPartition, int] = {}
        self._producer_generation = 0
        self.closed = False
        # Set when a transaction was abandoned inside a rebalance callback, where the rewind
        # cannot run (it needs blocking consumer calls); the run loop rewinds before ingesting.
        self.rewind_pending = False
        self._in_flight: _InFlight | None = None
        self._background = ThreadPoolExecutor(1, thread_name_prefix="commit-path")
        if self.eos:
            self.begin()

    @property
    def producer(self) -> Producer:
        return self.sink.producer

    def begin(self) -> None:
        """Initialise transactions on the (new) producer and open the first transaction.
        ``init_transactions`` is idempotent once it succeeded."""
        self.producer.init_transactions()
        self.producer.begin_transaction()

    def track(self, polled: dict[TopicPartition, list[Any]]) -> None:
        """Mark a poll's records as committable. Call only once every record of ``polled`` was
        ingested (see the offset invariant above); records of a partition arrive in offset
        order, so the last one per partition is enough."""
        for tp, recs in polled.items():
            if recs:
                self.offsets[tp] = recs[-1].offset + 1

    def forget(self, partitions: set[TopicPartition]) -> None:
        for tp in partitions:
            self.offsets.pop(tp, None)
            self._committed.pop(tp, None)

    def checkpoint(self, in_callback: bool = False, wait_commit: bool = True) -> None:
        """Run the commit path. ``wait_commit`` false (the periodic checkpoints): steps 2-4 run
        on the background thread and this returns once the snapshot is taken (``settle`` then
        sends the at-least-once offsets, asynchronously: polling need not wait a round trip).
        ``in_callback``: a rebalance callback, which runs on kafka-python's IO thread where a
        blocking commit is not allowed; at-least-once offsets are committed asynchronously. That
        is safe because the offsets go last: if such a commit is lost, the input replays into the
        newer changelog state and the replayed samples are dropped by input offset
        (``replayed``); the partition is committed again at the next checkpoint."""
        if self.closed or self.rewind_pending:
            return
        background = not wait_commit and not in_callback
        if self._in_flight is not None:
            if background:
                return  # the previous one is still in flight: the next turn of the loop
            self.settle(wait=True, in_callback=in_callback)
            if self.rewind_pending:
                return
        t0 = time.perf_counter()
        self.drain()
        s = self.settings
        store = self.store
        expired = store.expire_idle(time.monotonic(), s.entities.idle_ttl_s)
        if expired:
            self.metrics.evicted.labels("ttl").inc(expired)
        self.metrics.entities(len(store), store.on_disk)
        self.metrics.disk_bytes.set(store.disk_bytes)
        if self.eos:
            self.sink.hold()  # from here on, predictions belong to the next transaction
        try:
            records = self.store.snapshot_dirty()
            offsets = {
                tp: OffsetAndMetadata(o, "", -1)
                for tp, o in self.offsets.items()
                if self._committed.get(tp) != o
            }
            group = self.consumer.group_metadata() if self.eos and offsets else None
            if background:
                work = self._transaction if self.eos else self._flush_and_changelog
                self._in_flight = _InFlight(
                    self._background.submit(work, records, offsets, group), offsets, t0, len(records)
                )
                return
        except BaseException:
            self.sink.release()  # nothing was committed: the caller's failure path takes over
            raise
        try:
            if self.eos:
                self._transaction(records, offsets, group)
            else:
                self._flush_and_changelog(records, offsets, group)
        except (KafkaError, SinkError) as exc:
            if not self.eos:
                raise
            self._transaction_failed(exc, in_callback)
            return
        if not self.eos:
            if offsets and in_callback:
                self.consumer.commit_async(offsets, callback=self._async_done)
            elif offsets and not self._commit(offsets):
                offsets = {}
        self._done(offsets, t0, len(records))

    def _flush_and_changelog(
        self, records: list[tuple[bytes, bytes | None, int]], offsets: Any = None, group: Any = None
    ) -> None:
        """At-least-once steps 2-3: predictions acknowledged, then the changelog written and
        acknowledged (the offsets go out after this returns)."""
        self.sink.flush()
        self.sink.changelog(records)
        self.sink.flush()

    def _transaction(
        self,
        records: list[tuple[bytes, bytes | None, int]],
        offsets: dict[TopicPartition, OffsetAndMetadata],
        group: Any,
    ) -> None:
        """Exactly-once steps 2-4 with the sink held: the changelog into the open transaction,
        the offsets, the commit, and the next transaction begun; then the sink lets the held
        predictions through."""
        self.sink.changelog(records)
        producer = self.producer
        producer.commit_transaction_with(offsets, group, self.settings.kafka.request_timeout_ms)
        self.sink.raise_errors()
        producer.begin_transaction()
        self.sink.release()

    def settle(self, wait: bool = False, in_callback: bool = False) -> None:
        """Finish the checkpoint in flight, if any, once its background part is done (or at
        once, waiting for it, when ``wait``): at-least-once offsets are committed
        (asynchronously), an exactly-once failure is handled as a failed transaction. Called by
        the run loop on every turn."""
        fl = self._in_flight
        if fl is None or not (wait or fl.done.done()):
            return
        self._in_flight = None
        try:
            fl.done.result()
        except (KafkaError, SinkError) as exc:
            if not self.eos:
                raise
            self._transaction_failed(exc, in_callback)
            return
        offsets = {tp: om for tp, om in fl.offsets.items() if tp in self.offsets}  # still owned
        if offsets and not self.eos:
            self.consumer.commit_async(offsets, callback=self._async_done)
        self._done(offsets, fl.started, fl.records)

    def _done(self, offsets: dict[TopicPartition, OffsetAndMetadata], t0: float, records: int) -> None:
        for tp, om in offsets.items():
            self._committed[tp] = om.offset
        self.metrics.commits.inc()
        self.metrics.commit_time.observe(time.perf_counter() - t0)
        if records or offsets:
            logger.debug("checkpoint: %d state records, %d partitions", records, len(offsets))

    def _transaction_failed(self, exc: BaseException, in_callback: bool) -> None:
        """A transaction that failed or got no answer: abandoned, then the rewind (at once, or
        by the run loop when in a callback). Fencing and refused ACLs are not rewound: they end
        the run."""
        self.sink.discard_until_replaced()  # what the held predictions belonged to is aborted
        if isinstance(exc, ProducerFencedError):
            raise exc
        self.metrics.kafka_errors.labels("transaction").inc()
        if authorization_cause(exc) is not None:
            raise exc  # a rewind would replay into the same refusal: stop, commit nothing
        logger.warning(
            "transaction abandoned (%s: %s); rewinding to the last committed offsets and state",
            type(exc).__name__,
            exc,
        )
        self.rewind_pending = True
        if not in_callback:
            self.rewind()

    def close(self) -> None:
        """No more checkpoints; a background part still running is waited for."""
        self.closed = True
        self._background.shutdown(wait=True)

    def abandon(self, why: str) -> None:
        """Exactly-once: give up the open transaction without committing it; the run loop
        rewinds (aborting it) before it ingests again. For state dropped without a checkpoint
        (lost partitions), whose replayed input must not add to a transaction that already
        holds its first results. No-op at-least-once, where the replay's duplicates are allowed."""
        if self.eos and not self.closed and not self.rewind_pending:
            self.metrics.kafka_errors.labels("transaction").inc()
            logger.warning(
                "transaction abandoned (%s); rewinding to the last committed offsets and state", why
            )
            self.rewind_pending = True

    def rewind(self) -> None:
        """Back to the last committed transaction: fence and replace the producer (aborting the
        open transaction), seek every assigned partition to its committed offset, and reload
        those partitions' state from the changelog. Runs on the source thread, drained."""
        if self._in_flight is not None:  # its outcome no longer matters: it is rewound too
            fl, self._in_flight = self._in_flight, None
            with contextlib.suppress(Exception):
                fl.done.result()
            self.sink.discard_until_replaced()
        self.drain()
        self.replace_producer()
        consumer = self.consumer
        assigned = set(consumer.assignment())
        self.store.rewind({tp.partition for tp in assigned})
        self.offsets.clear()
        # The broker, not memory, says where the last transaction ended: an abandoned commit
        # may have gone through after all (its EndTxn reached the coordinator before the
        # outage, only the answer was lost). The new producer's init_transactions has waited
        # for that transaction to complete, so offsets read now are final; they are read before
        # the changelog, so the restored state is never older than the offsets it resumes from
        # (a newer state only drops the replayed samples, by input offset).
        self._committed.clear()
        for tp in assigned:
            offset = self._fetch_committed(tp)
            if offset is None:
                if self.settings.kafka.auto_offset_reset == "earliest":
                    consumer.seek_to_beginning(tp)
                else:
                    consumer.seek_to_end(tp)
            else:
                consumer.seek(tp, offset)
                self.offsets[tp] = self._committed[tp] = offset
        n = self.restore({tp.partition for tp in assigned})
        self.rewind_pending = False
        logger.info("rewound %d partitions to their last commit; restored %d entities", len(assigned), n)

    def replace_producer(self) -> None:
        """A fresh transactional producer with the same transactional id (fencing the old one),
        for the exactly-once rewind. Call only while the inference thread is drained."""
        self.producer.abandon()  # its queued records' callbacks have all run when it returns
        self.sink.replace_producer(self._transactional_producer())
        self.begin()

    @retry(
        retry=retry_if_exception_type(KafkaError),
        wait=wait_exponential(0.5, max=5),
        stop=stop_after_delay(300),
        reraise=True,
        before_sleep=lambda rs: logger.warning(
            "no new transactional producer yet (broker away?), retrying: %s",
            rs.outcome.exception() if rs.outcome else None,
        ),
    )
    def _transactional_producer(self) -> Producer:
        """A producer with transactions initialised; retried while the broker is away (the
        constructor itself fails when it cannot bootstrap)."""
        s = self.settings
        self._producer_generation += 1
        producer = make_producer(
            s,
            s.transactional_id,
            role=f"producer-{self._producer_generation}",
            dead_letter_max_bytes=self.sink.dead_letter_max_bytes,
        )
        try:
            producer.init_transactions()
        except BaseException:
            with contextlib.suppress(Exception):
                producer.abandon()
            raise
        return producer

    @retry(
        retry=retry_if_exception_type(KafkaError),
        wait=wait_exponential(0.2, max=5),
        stop=stop_after_delay(120),
        reraise=True,
    )
    def _fetch_committed(self, tp: TopicPartition) -> int | None:
        offset = self.consumer.committed(tp, timeout_ms=self.settings.kafka.request_timeout_ms)
        return None if offset is None else int(offset)

    def _async_done(self, offsets: Any, response: Any) -> None:
        if isinstance(response, Exception):
            self.metrics.kafka_errors.labels("commit").inc()
            logger.info("asynchronous offset commit failed (retried at the next checkpoint): %s", response)
            for tp in offsets:  # not committed after all: the next checkpoint sends it again
                self._committed.pop(tp, None)

    def _commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> bool:
        """Commit offsets; transient broker errors are retried with backoff. A commit refused
        because a rebalance is under way is skipped: the state is already checkpointed, and
        the next checkpoint (or the revocation callback, which the next poll runs) commits."""
        try:
            self._commit_retrying(offsets)
            return True
        except _GROUP_ERRORS as exc:
            self.metrics.kafka_errors.labels("commit").inc()
            logger.info(
                "offset commit deferred (%s); it is retried at the next checkpoint", type(exc).__name__
            )
            return False

    @retry(
        retry=retry_if_exception_type(KafkaError) & retry_if_not_exception_type(_GROUP_ERRORS),
        wait=wait_exponential(0.2, max=5),
        stop=stop_after_delay(120),
        reraise=True,
    )
    def _commit_retrying(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        try:
            self.consumer.commit(offsets)
        except KafkaError as exc:
            if not isinstance(exc, _GROUP_ERRORS):
                self.metrics.kafka_errors.labels("commit").inc()
                logger.warning("offset commit failed, retrying: %s", exc)
            raise
