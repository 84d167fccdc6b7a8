"""Rebalancing: what happens to entities when the group moves partitions.

Revoked: finish in-flight work, checkpoint, drop. Assigned: restore from the changelog, then
process. Lost: abandon what is not committed, drop. The ``Restorer`` also serves the
exactly-once rewind (``Checkpointer.rewind``), which reloads the partitions it rewinds.

kafka-python 3 runs the callbacks on the consumer's IO thread while the source thread is
blocked in ``poll`` (or ``close``); librdkafka runs them inside ``poll`` on the source thread.
Either way they may touch the entity store: the inference thread is drained first. Heartbeats
wait while they run, so restores must finish well within ``session_timeout_ms``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from stream_infer.health import Health
from stream_infer.kafka import Consumer
from stream_infer.kafka.types import RebalanceListener, TopicPartition
from stream_infer.metrics import Metrics
from stream_infer.pipeline.checkpoint import Checkpointer
from stream_infer.state.models import ModelStates
from stream_infer.state.store import EntityStore

logger = logging.getLogger(__name__)

# partitions -> the changelog's latest record per key in them: key -> (partition, value or None)
ReadChangelog = Callable[[set[int]], Mapping[bytes, tuple[int, bytes | None]]]


class Restorer:
    """Loads partitions' entities from the changelog into the store (drained)."""

    def __init__(
        self, store: EntityStore | ModelStates, read_changelog: ReadChangelog, metrics: Metrics
    ) -> None:
        self.store = store
        self.read_changelog = read_changelog
        self.metrics = metrics

    def restore(self, partitions: set[int]) -> int:
        """Load the changelog state of entities in ``partitions``; returns how many."""
        r = self.store.restore(self.read_changelog(partitions), time.monotonic())
        m = self.metrics
        if r.not_restorable:
            m.resets.labels("state_not_restorable").inc(r.not_restorable)
        if r.spilled:
            m.paged_out.inc(r.spilled)
        m.restored.inc(r.restored)
        m.entities(len(self.store), self.store.on_disk)
        if r.upgraded:
            logger.info(
                "restored %d entities from state another model wrote (model.keep_state_on_upgrade)",
                r.upgraded,
            )
        return r.restored

    def drop(self, partitions: set[int]) -> None:
        """Forget the partitions' entities; their changelog records stay for the next owner."""
        self.store.drop_partitions(partitions)
        self.metrics.entities(len(self.store), self.store.on_disk)


class Rebalancer(RebalanceListener):
    """The group consumer's rebalance listener (``Consumer.subscribe(listener=...)``)."""

    def __init__(
        self,
        consumer: Consumer,
        checkpointer: Checkpointer,
        restorer: Restorer,
        drain: Callable[[], None],
        metrics: Metrics,
        health: Health,
    ) -> None:
        self.consumer = consumer
        self.checkpointer = checkpointer
        self.restorer = restorer
        self.drain = drain
        self.metrics = metrics
        self.health = health

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.metrics.rebalances.labels("revoked").inc()
        if not revoked or self.checkpointer.closed:
            return
        self.checkpointer.checkpoint(in_callback=True)
        parts = {tp.partition for tp in revoked}
        self.restorer.drop(parts)
        self.checkpointer.forget(revoked)
        logger.info("revoked partitions %s", sorted(parts))
        self._assigned_gauge()

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.metrics.rebalances.labels("assigned").inc()
        if assigned:
            self.drain()
            parts = {tp.partition for tp in assigned}
            n = self.restorer.restore(parts)
            logger.info("assigned partitions %s; restored %d entities", sorted(parts), n)
        self._assigned_gauge()

    def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        """The group dropped this member (a session expired, e.g. across a broker restart):
        another member may already own the partitions, so nothing is committed and their
        state is dropped. Under exactly-once the open transaction holds work on that state
        since the last commit; it is abandoned (aborted by the rewind before the next ingest),
        or the replay from the last commit would publish the same predictions into it again."""
        self.metrics.rebalances.labels("lost").inc()
        if self.checkpointer.closed:  # shutting down (a client may call back from close)
            return
        self.drain()
        self.checkpointer.abandon("the group dropped this member")
        self.restorer.drop({tp.partition for tp in lost})
        self.checkpointer.forget(lost)
        logger.info("lost partitions %s", sorted(tp.partition for tp in lost))
        self._assigned_gauge()

    def _assigned_gauge(self) -> None:
        n = len(self.consumer.assignment())
        self.metrics.assigned.set(n)
        self.health.partitions_assigned = n > 0
        self.metrics.ready.set(1 if self.health.ready else 0)
