"""The service: wires source -> decode -> windows -> worker (batcher, engine, state) -> sink.

Threads: the source thread (``run``) polls, decodes, maintains windows and slots, runs the
commit path and rebalance callbacks; the inference thread runs the engine and publishes. Slot
eviction, restores and checkpoints happen only while the inference thread is drained, so a slot
is never reused under a window in flight.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections import defaultdict
from typing import Any

import numpy as np
from kafka import ConsumerRebalanceListener, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from prometheus_client import REGISTRY, CollectorRegistry
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential

from stream_infer import changelog
from stream_infer.backends import Engine, load_engine
from stream_infer.batcher import Batcher
from stream_infer.checkpoint import Checkpointer
from stream_infer.config import Settings
from stream_infer.decode import Decoder
from stream_infer.errors import ConfigError, StateError
from stream_infer.health import Health, serve_http
from stream_infer.metrics import Metrics
from stream_infer.model.card import ModelCard, load_card
from stream_infer.records import InvalidMessage
from stream_infer.sink import Sink, make_producer
from stream_infer.slots import SlotTable
from stream_infer.source import group_settled, make_consumer, read_changelog
from stream_infer.state import make_state_slab
from stream_infer.topics import ensure_topics
from stream_infer.windows import WindowStore
from stream_infer.worker import InferenceWorker

logger = logging.getLogger(__name__)


class Service:
    def __init__(
        self,
        settings: Settings,
        engine: Engine | None = None,
        registry: CollectorRegistry | None = REGISTRY,
        card: ModelCard | None = None,
    ) -> None:
        self.settings = settings
        self.card = card or load_card(settings.model.artifact)
        self.registry = registry
        self.metrics = Metrics(registry)
        k = settings.kafka
        # A rebalance the broker has not finished within the rebalance timeout plus a session
        # will not finish: /healthz then fails and the pod is restarted.
        self.health = Health(group_timeout_s=(k.max_poll_interval_ms + k.session_timeout_ms) / 1000)
        self._engine = engine
        self._stop = threading.Event()
        self._grace_timer: threading.Timer | None = None
        self._producer_generation = 0
        self._http: Any = None
        self._started = False
        self.stats: dict[str, int] = defaultdict(int)
        self._bad_logged: dict[str, float] = {}
        card = self.card
        ent = settings.entities
        self.decoder = Decoder(
            settings.input.format,
            tuple(card.sample_shape),
            settings.input.max_message_bytes,
            settings.input.max_samples_per_message,
        )
        self.slots = SlotTable(ent.max_entities)
        self.windows = WindowStore(
            ent.max_entities, card.window, card.hop, tuple(card.sample_shape), ent.max_seq_gap
        )
        self.dirty = np.zeros(ent.max_entities, dtype=bool)  # touched since the last checkpoint
        self.tombstones: dict[str, int] = {}  # entity -> partition, deleted since the last checkpoint
        self.metrics.slot_capacity.set(ent.max_entities)
        self.metrics.model.info(
            {
                "name": card.name,
                "version": card.version,
                "kind": card.kind,
                "backend": settings.model.backend,
                "device": settings.model.device,
            }
        )

    # --- lifecycle ---

    def start(self) -> None:
        """Connect, load the engine and subscribe; ``run`` then processes until ``stop``."""
        s = self.settings
        if self.registry is not None and s.metrics.port >= 0:
            self._http = serve_http(self.health, s.metrics.port, s.metrics.host, self.registry)
        ensure_topics(s)
        engine = self._engine or load_engine(
            s.model.artifact, s.model.backend, s.model.device, max_batch=max(s.batcher.max_batch, 1)
        )
        self.engine = engine
        L, hd = self.card.state_shape
        self.slab = make_state_slab(engine.spec.device, s.entities.max_entities, L, hd)
        eos = s.delivery.guarantee == "exactly-once"
        self.producer = make_producer(s, s.transactional_id if eos else None)
        self.sink = Sink(
            self.producer,
            s.topics.output,
            s.dead_letter_topic,
            s.changelog_topic,
            self.card.model_id,
            self.card.labels,
        )
        self.worker = InferenceWorker(
            engine, self.slab, Batcher(s.batcher.max_batch, s.batcher.max_wait_ms), self.sink, self.metrics
        )
        _await_metadata(s)
        self.consumer = make_consumer(s)
        self.checkpointer = Checkpointer(self, eos)
        self.worker.start()
        self.health.engine_loaded = True
        self.consumer.subscribe([s.topics.input], listener=_Listener(self))
        self._started = True

    @property
    def metrics_port(self) -> int | None:
        return self._http.server_port if self._http is not None else None

    def stop(self) -> None:
        """Ask the run loop to finish: drain, publish, checkpoint, commit, close."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: stop, and exit (code 70) if the shutdown is not done within
        ``shutdown_grace_s`` of the signal, even if the run loop is blocked on the broker."""

        def handler(*_: Any) -> None:
            self._start_grace_timer()
            self.stop()

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, handler)

    def _start_grace_timer(self) -> None:
        if self._grace_timer is None:
            grace = self.settings.shutdown_grace_s
            self._grace_timer = threading.Timer(grace, _overrun, args=(grace,))
            self._grace_timer.daemon = True
            self._grace_timer.start()

    def replace_producer(self) -> None:
        """A fresh transactional producer with the same transactional id (fencing the old one),
        for the exactly-once rewind. Call only while the inference thread is drained."""
        old = self.producer
        try:
            old.close(timeout=0)
        except Exception as exc:  # kafka-python: close(0) raises from its flush before stopping
            logger.info("closing the abandoned producer: %s", exc)
        sender = getattr(old, "_sender", None)  # wait until its records' callbacks have all run
        if sender is not None and sender.is_alive():
            sender.force_close()
            sender.join(10)
        self.producer = self._transactional_producer()
        self.sink.replace_producer(self.producer)
        self.checkpointer.begin()

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
    def _transactional_producer(self) -> KafkaProducer:
        """A producer with transactions initialised; retried while the broker is away (the
        constructor itself fails when it cannot bootstrap)."""
        s = self.settings
        self._producer_generation += 1
        producer = make_producer(s, s.transactional_id, role=f"producer-{self._producer_generation}")
        try:
            producer.init_transactions()
        except BaseException:
            with contextlib.suppress(Exception):
                producer.close(timeout=0)
            raise
        return producer

    def run(self) -> None:
        if not self._started:
            self.start()
        s = self.settings
        commit_s = s.delivery.commit_interval_ms / 1000.0
        next_commit = time.monotonic() + commit_s
        next_lag = time.monotonic()
        # Not shorter: kafka-python 3.0 cannot finish a group join inside very short polls
        # (it restarts the join on every poll), and batching deadlines live in the worker.
        poll_ms = s.kafka.poll_timeout_ms
        try:
            while not self._stop.is_set():
                try:
                    polled = self.consumer.poll(timeout_ms=poll_ms)
                except KafkaError as exc:  # broker away: the client reconnects with backoff
                    self.metrics.kafka_errors.labels("poll").inc()
                    logger.warning("poll failed, retrying: %s", exc)
                    time.sleep(0.5)
                    continue
                self.health.beat()
                self._watch_group()
                if self.checkpointer.rewind_pending:
                    # A transaction failed in a rebalance callback: what was just polled is
                    # refetched after the rewind seeks back.
                    self.checkpointer.rewind()
                    continue
                if polled:
                    self.checkpointer.track(polled)
                    self._ingest([r for recs in polled.values() for r in recs])
                self._backpressure()
                now = time.monotonic()
                if now >= next_commit:
                    self.checkpointer.checkpoint(wait_commit=False)
                    next_commit = time.monotonic() + commit_s
                if now >= next_lag:
                    self._update_lag()
                    next_lag = now + s.metrics.lag_interval_s
        finally:
            self._shutdown()

    def _watch_group(self) -> None:
        was_wedged = self.health.wedged
        self.health.group_settled(group_settled(self.consumer))
        if self.health.wedged and not was_wedged:
            logger.error(
                "the consumer has not settled in its group for %.0f s (rebalance timeout plus a "
                "session): /healthz now fails so that the process is restarted",
                self.health.group_timeout_s,
            )

    def _shutdown(self) -> None:
        """Stop polling, drain, publish, checkpoint, commit, close; within the grace period."""
        self.health.stopping = True
        self._start_grace_timer()
        timer = self._grace_timer
        assert timer is not None
        try:
            if self._started and self.worker.error is None:
                self.checkpointer.checkpoint()
        finally:
            if self._started:
                self.checkpointer.closed = True
            try:
                if self._started:
                    self.worker.stop()
                    self.consumer.close(autocommit=False)
                    self.sink.close()
                    self.engine.close()
            finally:
                timer.cancel()
                if self._http is not None:
                    self._http.shutdown()
                logger.info("stopped")

    # --- the source side ---

    def _ingest(self, records: list[Any]) -> None:
        m = self.metrics
        m.messages.inc(len(records))
        res = self.decoder.decode(records)
        if res.invalid:
            self._dead_letter(res.invalid)
        batch = res.samples
        if not len(batch):
            return
        m.events.inc(len(batch))
        now = time.monotonic()
        missing = self.slots.missing(batch.entities)
        if len(missing) > self.slots.free:
            self._evict_lru(len(missing) - self.slots.free)
        slots, new = self.slots.assign(batch.entities, batch.partition, now)
        if len(new):
            self.windows.reset(new)
        wb, st = self.windows.push(slots, batch.seq, batch.event_ms, batch.values, batch.entities)
        self.dirty[slots] = True
        if st.duplicates:
            m.dropped.labels("duplicate_or_older_seq").inc(st.duplicates)
        if st.resets:
            m.resets.labels("seq_gap").inc(st.resets)
        self.worker.submit(wb)
        m.active_entities.set(len(self.slots))

    def _dead_letter(self, invalid: list[InvalidMessage]) -> None:
        self.sink.dead_letter(invalid)
        self.metrics.dead_letters.inc(len(invalid))
        now = time.monotonic()
        for msg in invalid:
            self.metrics.invalid.labels(msg.reason).inc()
            self.stats[f"invalid.{msg.reason}"] += 1
            # One line per bad message, rate-limited per reason; never a stack trace.
            if now - self._bad_logged.get(msg.reason, 0.0) > 1.0:
                self._bad_logged[msg.reason] = now
                logger.warning(
                    "invalid message %s[%d]@%d: %s %s (to %s; similar ones this second "
                    "are counted, not logged)",
                    msg.topic,
                    msg.partition,
                    msg.offset,
                    msg.reason,
                    msg.detail[:200],
                    self.settings.dead_letter_topic,
                )

    def _backpressure(self) -> None:
        limit = self.settings.batcher.max_queue_windows
        assigned = self.consumer.assignment()
        if not assigned:
            return
        paused = self.consumer.paused()
        if self.worker.queued > limit and not paused:
            self.consumer.pause(*assigned)
            self.metrics.paused.set(1)
        elif paused and self.worker.queued <= limit // 2:
            self.consumer.resume(*paused)
            self.metrics.paused.set(0)

    def _update_lag(self) -> None:
        for tp in self.consumer.assignment():
            hw = self.consumer.highwater(tp)
            if hw is None:
                continue
            try:
                pos = self.consumer.position(tp, timeout_ms=100)
            except Exception:
                continue
            if pos is not None:
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, hw - pos))

    # --- slots: eviction, drop, restore (only while drained) ---

    def _evict_lru(self, needed: int) -> None:
        """Make room for ``needed`` new entities, evicting 10% extra to amortise the drain."""
        self.worker.drain()
        n = min(len(self.slots), needed + max(1, self.slots.capacity // 10))
        victims = self.slots.least_recent(n)
        self._evict(victims, "lru")

    def evict_idle(self) -> None:
        victims = self.slots.idle(time.monotonic(), self.settings.entities.idle_ttl_s)
        if len(victims):
            self._evict(victims, "ttl")

    def _evict(self, slots: np.ndarray, reason: str) -> None:
        parts = self.slots.partition[slots].tolist()
        for e, p in zip(self.slots.release(slots), parts, strict=True):
            self.tombstones[e] = p
        self._clear(slots)
        self.metrics.evicted.labels(reason).inc(len(slots))
        self.metrics.active_entities.set(len(self.slots))

    def _clear(self, slots: np.ndarray) -> None:
        self.windows.reset(slots)
        self.slab.zero(slots)
        self.dirty[slots] = False

    def drop_partitions(self, partitions: set[int]) -> None:
        slots = self.slots.of_partitions(partitions)
        self.slots.release(slots)
        self._clear(slots)
        self.metrics.active_entities.set(len(self.slots))

    def restore_partitions(self, partitions: set[int]) -> int:
        """Load the changelog state of entities in ``partitions``; returns how many."""
        latest = read_changelog(self.settings, partitions)
        card = self.card
        now = time.monotonic()
        restored = 0
        for key, (part, value) in latest.items():
            if value is None:
                continue
            entity = key.decode("utf-8", "replace")
            try:
                st = changelog.decode(
                    value, card.model_id, card.window, tuple(card.sample_shape), card.state_shape
                )
            except StateError as exc:
                self.metrics.resets.labels("state_not_restorable").inc()
                logger.info("not restoring %s: %s", entity, exc)
                continue
            if self.slots.free == 0:
                self._evict(self.slots.least_recent(max(1, self.slots.capacity // 10)), "lru")
            s = self.slots.put(entity, part, now)
            idx = np.asarray([s])
            self.windows.tail[s] = st.tail
            self.windows.count[s] = st.count
            self.windows.last_seq[s] = st.last_seq
            self.windows.last_event_ms[s] = st.event_ms
            self.windows.fresh[s] = st.fresh
            self.slab.write(idx, st.h[:, None, :], st.c[:, None, :])
            restored += 1
        self.metrics.restored.inc(restored)
        self.metrics.active_entities.set(len(self.slots))
        return restored


class _Listener(ConsumerRebalanceListener):
    """Revoked: finish in-flight work, checkpoint, drop. Assigned: restore, then process.

    kafka-python 3 runs these on the consumer's IO thread while the source thread is blocked
    in ``poll`` (or ``close``), so they may touch the slots and windows; the inference thread is
    drained first. Heartbeats wait while they run: restores must finish well within
    ``session_timeout_ms``.
    """

    def __init__(self, service: Service) -> None:
        self.svc = service

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        svc = self.svc
        svc.metrics.rebalances.labels("revoked").inc()
        if not revoked or svc.checkpointer.closed:
            return
        svc.checkpointer.checkpoint(in_callback=True)
        parts = {tp.partition for tp in revoked}
        svc.drop_partitions(parts)
        svc.checkpointer.forget(revoked)
        logger.info("revoked partitions %s", sorted(parts))
        self._assigned_gauge()

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        svc = self.svc
        svc.metrics.rebalances.labels("assigned").inc()
        if assigned:
            svc.worker.drain()
            parts = {tp.partition for tp in assigned}
            n = svc.restore_partitions(parts)
            logger.info("assigned partitions %s; restored %d entities", sorted(parts), n)
        self._assigned_gauge()

    def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        # Another member may already own them: drop without committing.
        svc = self.svc
        svc.metrics.rebalances.labels("lost").inc()
        svc.worker.drain()
        svc.drop_partitions({tp.partition for tp in lost})
        svc.checkpointer.forget(lost)
        self._assigned_gauge()

    def _assigned_gauge(self) -> None:
        n = len(self.svc.consumer.assignment())
        self.svc.metrics.assigned.set(n)
        self.svc.health.partitions_assigned = n > 0
        self.svc.metrics.ready.set(1 if self.svc.health.ready else 0)


def _await_metadata(settings: Settings, timeout_s: float = 30.0) -> None:
    """Wait until the broker serves the input topic's partitions.

    Asked through a throwaway client: a group consumer that joins before the topic's metadata is
    known gets an empty assignment, and (kafka-python 3.0) fetching all-topic metadata on the
    group consumer itself triggers a rejoin that can stall.
    """
    from kafka import KafkaConsumer

    probe = KafkaConsumer(**settings.kafka.client_kwargs("probe"), group_id=None, enable_auto_commit=False)
    try:
        deadline = time.monotonic() + timeout_s
        while not probe.partitions_for_topic(settings.topics.input):
            if time.monotonic() > deadline:
                raise ConfigError(f"no partition metadata for input topic {settings.topics.input!r}")
            time.sleep(0.1)
    finally:
        probe.close()


def _overrun(grace_s: float) -> None:
    logger.error("shutdown exceeded the %.0fs grace period; exiting (uncommitted input replays)", grace_s)
    import os

    os._exit(70)
