"""The source: the group consumer as the run loop sees it. Polls (riding out a broker that is
away), applies backpressure (pauses the assigned partitions while the inference thread's queue
is over its bound, resumes at half), publishes the lag gauges and watches the group for a
rebalance that never finishes (``/healthz`` then fails)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from stream_infer.health import Health
from stream_infer.kafka import Consumer
from stream_infer.kafka.access import authorization_cause
from stream_infer.kafka.errors import KafkaError
from stream_infer.kafka.types import ConsumedRecord
from stream_infer.metrics import Metrics

logger = logging.getLogger(__name__)

Polled = dict  # TopicPartition -> list[ConsumedRecord], as the consumer returns them


class Source:
    def __init__(
        self,
        consumer: Consumer,
        metrics: Metrics,
        health: Health,
        queued: Callable[[], int],
        max_queue_windows: int,
        poll_timeout_ms: int,
    ) -> None:
        self.consumer = consumer
        self.metrics = metrics
        self.health = health
        self.queued = queued  # windows waiting for the inference thread
        self.max_queue_windows = max_queue_windows
        # Not shorter: kafka-python 3.0 cannot finish a group join inside very short polls
        # (it restarts the join on every poll), and batching deadlines live in the worker.
        self.poll_timeout_ms = poll_timeout_ms
        self._polled_at: float | None = None

    def poll(self) -> Polled | None:
        """One poll: partition -> records (empty when nothing came), or None when the broker
        is away (counted and logged; the client reconnects with backoff). A missing or revoked
        ACL is raised: retrying cannot help."""
        if self._polled_at is not None:
            self.metrics.poll_gap.observe(time.monotonic() - self._polled_at)
        try:
            polled = self.consumer.poll(timeout_ms=self.poll_timeout_ms)
        except KafkaError as exc:
            if authorization_cause(exc) is not None:
                raise
            self.metrics.kafka_errors.labels("poll").inc()
            logger.warning("poll failed, retrying: %s", exc)
            time.sleep(0.5)
            return None
        self._polled_at = time.monotonic()
        self.health.beat()
        self._watch_group()
        return polled

    @staticmethod
    def records(polled: Polled) -> list[ConsumedRecord]:
        return [r for recs in polled.values() for r in recs]

    def _watch_group(self) -> None:
        was_wedged = self.health.wedged
        self.health.group_settled(self.consumer.group_settled())
        if self.health.wedged and not was_wedged:
            logger.error(
                "the consumer has not settled in its group for %.0f s (rebalance timeout plus a "
                "session): /healthz now fails so that the process is restarted",
                self.health.group_timeout_s,
            )

    def backpressure(self) -> None:
        """Pause every assigned partition while more than ``max_queue_windows`` windows wait for
        the inference thread; resume when half of that is left."""
        assigned = self.consumer.assignment()
        if not assigned:
            return
        paused = self.consumer.paused()
        queued = self.queued()
        if queued > self.max_queue_windows and not paused:
            self.consumer.pause(*assigned)
            self.metrics.paused.set(1)
        elif paused and queued <= self.max_queue_windows // 2:
            self.consumer.resume(*paused)
            self.metrics.paused.set(0)

    def update_lag(self) -> None:
        """Per assigned input partition: the lag behind the high watermark, and the records that
        open transactions hold past the last stable offset, with how long it has been stuck
        (``Consumer.stable_offset``). Revoked partitions' series are removed."""
        m = self.metrics
        consumer = self.consumer
        assigned = consumer.assignment()
        m.keep_partitions({(tp.topic, str(tp.partition)) for tp in assigned})
        for tp in assigned:
            labels = (tp.topic, str(tp.partition))
            stable = consumer.stable_offset(tp)
            if stable is not None:
                m.unstable_records.labels(*labels).set(stable.unstable_records)
                m.lso_stuck.labels(*labels).set(stable.stuck_s)
            hw = consumer.highwater(tp)
            if hw is None:
                continue
            try:
                pos = consumer.position(tp, timeout_ms=100)
            except Exception:
                continue
            if pos is not None:
                m.lag.labels(*labels).set(max(0, hw - pos))
