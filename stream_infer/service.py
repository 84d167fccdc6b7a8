"""The service: wires source -> decode -> windows -> worker (batcher, engine, state) -> sink.

Threads: the source thread (``run``) polls, decodes, maintains windows and slots, runs the
commit path and rebalance callbacks; the inference thread runs the engine and publishes. Slot
eviction, restores and checkpoints happen only while the inference thread is drained, so a slot
is never reused under a window in flight.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from collections import defaultdict
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry

from stream_infer.backends import Engine, open_engine
from stream_infer.config import Settings
from stream_infer.errors import PipelineError, SinkError
from stream_infer.health import Health, serve_http
from stream_infer.kafka import (
    Consumer,
    RebalanceListener,
    TopicPartition,
    await_partitions,
    make_consumer,
    make_producer,
)
from stream_infer.kafka.access import authorization_cause, denied
from stream_infer.kafka.compacted import read_changelog
from stream_infer.kafka.errors import KafkaError
from stream_infer.kafka.topics import dead_letter_limit_bytes, ensure_topics
from stream_infer.kafka.types import ConsumedRecord as Record
from stream_infer.metrics import Metrics
from stream_infer.model.card import ModelCard, load_card
from stream_infer.model.heads import make_head
from stream_infer.pipeline.batcher import Batcher
from stream_infer.pipeline.checkpoint import Checkpointer
from stream_infer.pipeline.decode import Decoder, DecodeResult, internal_error
from stream_infer.pipeline.sink import Sink
from stream_infer.pipeline.worker import InferenceWorker
from stream_infer.records import InvalidMessage, SampleBatch
from stream_infer.state.slab import make_state_slab
from stream_infer.state.store import EntityStore, ModelShape
from stream_infer.state.windows import DROPS, SEGMENTS, PushStats

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
        self._http: Any = None
        self._started = False
        self.stats: dict[str, int] = defaultdict(int)
        self._bad_logged: dict[str, float] = {}
        card = self.card
        ent = settings.entities
        out = settings.output
        # How predictions are published; a setting the model's head cannot take (schema
        # version 1 for a forecaster) is refused here, before anything starts.
        self.head = make_head(
            card.labels, card.head, top_k=out.top_k, logits=out.logits, schema_version=out.schema_version
        )
        self.decoder = Decoder(
            settings.input.format,
            tuple(card.sample_shape),
            settings.input.max_message_bytes,
            settings.input.max_samples_per_message,
            settings.input.schema_registry(),
        )
        self.model_shape = ModelShape(
            card.model_id,
            card.window,
            card.hop,
            tuple(card.sample_shape),
            tuple(card.state_shape),
            settings.model.keep_state_on_upgrade,
            card.states,
        )
        for note in settings.kafka.insecure():
            logger.warning(note)
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
        engine = self._engine or open_engine(
            s.model.artifact,
            s.model.backend,
            s.model.device,
            max_batch=max(s.batcher.max_batch, 1),
            card_sha256=s.model.card_sha256,
        )
        eos = s.delivery.guarantee == "exactly-once"
        dl_bytes = dead_letter_limit_bytes(s)
        self.wire(
            engine,
            make_producer(s, s.transactional_id if eos else None, dead_letter_max_bytes=dl_bytes),
            dead_letter_max_bytes=dl_bytes,
        )
        await_partitions(s, s.topics.input)
        self.consumer: Consumer = make_consumer(s)
        self.checkpointer = Checkpointer(
            consumer=self.consumer,
            sink=self.sink,
            store=self.store,
            drain=self.drain,
            restore=self.restore_partitions,
            metrics=self.metrics,
            settings=s,
        )
        # Everything loaded so far (the engine, the model, the libraries) lives as long as the
        # process: out of the collector's way, so that a full collection no longer walks it
        # (a pause the p99 latency would show).
        gc.collect()
        gc.freeze()
        self.worker.start()
        self.health.engine_loaded = True
        self.consumer.subscribe([s.topics.input], listener=_Listener(self))
        self._started = True

    def wire(self, engine: Engine, producer: Any, dead_letter_max_bytes: int | None = None) -> None:
        """Build the pipeline behind the source: entity store, sink, inference thread (not
        started). ``start`` calls it with the real producer; tests may call it with a
        ``testing.ListProducer`` to run the ingest path in-process."""
        s = self.settings
        self.engine = engine
        ent = s.entities
        slab = make_state_slab(engine.spec.device, ent.max_entities, engine.spec.states)
        self.store = EntityStore(
            ent.max_entities, self.model_shape, slab, ent.max_seq_gap, ent.max_seq_rewind
        )
        self.sink = Sink(
            producer,
            s.topics.output,
            s.dead_letter_topic,
            s.changelog_topic,
            self.card.model_id,
            self.head,
            **({} if dead_letter_max_bytes is None else {"dead_letter_max_bytes": dead_letter_max_bytes}),
        )
        self.worker = InferenceWorker(
            engine, slab, Batcher(s.batcher.max_batch, s.batcher.max_wait_ms), self.sink, self.metrics
        )

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

    def run(self) -> None:
        """Start (unless started) and process until ``stop``. An authorization error, at start
        or mid-stream, ends the run as ``AccessDenied`` naming the ACL; nothing is committed."""
        try:
            self._run()
        except Exception as exc:
            if (refused := denied(exc, self.settings)) is not None:
                raise refused from exc
            raise

    def _run(self) -> None:
        if not self._started:
            self.start()
        s = self.settings
        commit_s = s.delivery.commit_interval_ms / 1000.0
        next_commit = time.monotonic() + commit_s
        next_lag = time.monotonic()
        # Not shorter: kafka-python 3.0 cannot finish a group join inside very short polls
        # (it restarts the join on every poll), and batching deadlines live in the worker.
        poll_ms = s.kafka.poll_timeout_ms
        clean = False
        gap = self.metrics.poll_gap
        polled_at: float | None = None
        try:
            while not self._stop.is_set():
                if polled_at is not None:
                    gap.observe(time.monotonic() - polled_at)
                try:
                    polled = self.consumer.poll(timeout_ms=poll_ms)
                except KafkaError as exc:  # broker away: the client reconnects with backoff
                    if authorization_cause(exc) is not None:
                        raise  # an ACL missing or revoked: retrying cannot help
                    self.metrics.kafka_errors.labels("poll").inc()
                    logger.warning("poll failed, retrying: %s", exc)
                    time.sleep(0.5)
                    continue
                polled_at = time.monotonic()
                self.health.beat()
                self._watch_group()
                if self.checkpointer.rewind_pending:
                    # A transaction failed or was abandoned in a rebalance callback: what was
                    # just polled is refetched after the rewind seeks back.
                    self.checkpointer.rewind()
                    continue
                if polled:
                    self._ingest([r for recs in polled.values() for r in recs])
                    # Only now: every record of the poll is windowed, handed on or dead-lettered.
                    self.checkpointer.track(polled)
                self._backpressure()
                self.checkpointer.settle()  # a background checkpoint that finished: its offsets
                now = time.monotonic()
                if now >= next_commit:
                    self.checkpointer.checkpoint(wait_commit=False)
                    next_commit = time.monotonic() + commit_s
                if now >= next_lag:
                    self._update_lag()
                    next_lag = now + s.metrics.lag_interval_s
            clean = True
        finally:
            self._shutdown(clean)

    def _watch_group(self) -> None:
        was_wedged = self.health.wedged
        self.health.group_settled(self.consumer.group_settled())
        if self.health.wedged and not was_wedged:
            logger.error(
                "the consumer has not settled in its group for %.0f s (rebalance timeout plus a "
                "session): /healthz now fails so that the process is restarted",
                self.health.group_timeout_s,
            )

    def _shutdown(self, clean: bool) -> None:
        """Stop polling, drain, publish, checkpoint, commit, close; within the grace period.

        After a failure (``clean`` false) nothing is checkpointed: what the failed poll left
        half done replays from the last commit, as after kill -9."""
        self.health.stopping = True
        self._start_grace_timer()
        timer = self._grace_timer
        assert timer is not None
        try:
            if self._started and clean and self.worker.error is None:
                self.checkpointer.checkpoint()
            elif self._started and not clean:
                logger.error("stopping after a failure: no checkpoint; input replays from the last commit")
        finally:
            if self._started:
                self.checkpointer.close()
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

    def ingest(self, records: list[Any]) -> None:
        """One poll's records through decode, dead letters and windows (the source side);
        offline replays (``stream_infer.evaluate``) call it with records they make."""
        self._ingest(records)

    def _ingest(self, records: list[Any]) -> None:
        """Decode, dead-letter the bad, window the good and hand completed windows on.

        Poison isolation: an exception from the windowing of a whole poll is retried record by
        record, and a record that still fails is dead-lettered as ``internal_error``; the other
        records go on. Only a ``PipelineError`` (not about one record) escapes."""
        self.metrics.messages.inc(len(records))
        res = self._decode(records)
        if res.invalid:
            self._dead_letter(res.invalid)
        try:
            self._window(res.samples)
        except PipelineError:
            raise
        except Exception as exc:
            logger.warning(
                "windowing a poll of %d records failed (%s: %s); retrying record by record",
                len(records),
                type(exc).__name__,
                exc,
            )
            dead = {(m.partition, m.offset) for m in res.invalid}
            for rec in records:
                if (rec.partition, rec.offset) not in dead:
                    self._ingest_one(rec)

    def _decode(self, records: list[Any]) -> DecodeResult:
        try:
            return self.decoder.decode(records)
        except PipelineError:
            raise
        except Exception as exc:  # decode is built never to raise; if it does, one record at a time
            logger.warning(
                "decoding a poll failed (%s: %s); decoding record by record", type(exc).__name__, exc
            )
            parts = [self._decode_one(r) for r in records]
            invalid = [m for p in parts for m in p.invalid]
            good = [p.samples for p in parts if len(p.samples)]
            batch = SampleBatch.concat(good) if good else self.decoder.decode([]).samples
            return DecodeResult(batch, invalid, len(records))

    def _decode_one(self, rec: Record) -> DecodeResult:
        try:
            return self.decoder.decode([rec])
        except PipelineError:
            raise
        except Exception as exc:
            return DecodeResult(self.decoder.decode([]).samples, [internal_error(rec, exc)], 1)

    def _ingest_one(self, rec: Record) -> None:
        """One record through decode and windowing; any failure dead-letters it."""
        try:
            res = self.decoder.decode([rec])
            if res.invalid:
                self._dead_letter(res.invalid)
            self._window(res.samples)
        except PipelineError:
            raise
        except Exception as exc:
            self._dead_letter([internal_error(rec, exc)])

    def _window(self, batch: SampleBatch) -> None:
        """Admit the samples' entities (evicting the least recently seen when slots run short;
        in parts when one poll holds more entities than there are slots) and push them into
        their windows; completed windows go to the inference thread."""
        if not len(batch):
            return
        m = self.metrics
        store = self.store
        parts = store.parts(batch.entities)
        if len(parts) > 1:
            m.split_polls.inc()
        for lo, hi in parts:
            part = batch.part(lo, hi)
            need = store.shortfall(part.entities)
            if need:
                # Evict 10% extra to amortise the drain; never an entity of this poll while
                # others can go, never one of this part.
                self.drain()
                extra = need + max(1, store.capacity // 10)
                protect = set(batch.entities) if len(parts) == 1 else set(part.entities)
                evicted = store.evict_lru(extra, protect)
                if evicted < need:
                    evicted += store.evict_lru(need - evicted, set(part.entities))
                m.evicted.labels("lru").inc(evicted)
            wb, st = store.push(part, time.monotonic())
            m.events.inc(
                len(part)
            )  # counted once pushed: a poll retried record by record is not counted twice
            if st.duplicates or st.resets:
                self._count_seq_rules(st)
            try:
                self.worker.submit(wb)
            except Exception as exc:
                raise PipelineError(f"handing windows to the inference thread failed: {exc}") from exc
        m.active_entities.set(len(store))

    def drain(self) -> None:
        """Wait until the inference thread has run and published every window handed to it.
        Its failure is the pipeline's, not a record's."""
        try:
            self.worker.drain()
        except Exception as exc:
            raise PipelineError(f"the inference thread failed: {type(exc).__name__}: {exc}") from exc

    def _count_seq_rules(self, st: PushStats) -> None:
        """Count the sequence rules' drops and new segments per reason; log restarts and
        outliers naming the entity (one line per reason and second; the rest are counted)."""
        m = self.metrics
        for reason, n in zip(DROPS, st.dropped, strict=True):
            if n:
                m.dropped.labels(reason).inc(n)
        for reason, n in zip(SEGMENTS, st.segments, strict=True):
            if n:
                m.resets.labels(reason).inc(n)
        now = time.monotonic()
        for entity, reason, last, seq in st.events:
            if now - self._bad_logged.get(reason, 0.0) > 1.0:
                self._bad_logged[reason] = now
                what = "restarted its seq" if reason == "seq_restart" else "sent an outlier seq before"
                logger.warning(
                    "entity %s %s (seq %d after %d): a new segment from zero state (similar ones "
                    "this second are counted, not logged)",
                    entity,
                    what,
                    seq,
                    last,
                    extra={"entity": entity, "reason": reason},
                )

    def _dead_letter(self, invalid: list[InvalidMessage]) -> None:
        """Send to the dead-letter topic, count, and log once per reason and second. The sink
        truncates what would not fit; a send that still fails is the pipeline's failure."""
        try:
            self.sink.dead_letter(invalid)
        except (SinkError, KafkaError) as exc:
            raise PipelineError(f"dead letters cannot be sent: {type(exc).__name__}: {exc}") from exc
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
                    extra=_about(msg),
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
        """Per assigned input partition: the lag behind the high watermark, and the records that
        open transactions hold past the last stable offset, with how long it has been stuck
        (``Consumer.stable_offset``). Revoked partitions' series are removed."""
        m = self.metrics
        assigned = self.consumer.assignment()
        m.keep_partitions({(tp.topic, str(tp.partition)) for tp in assigned})
        for tp in assigned:
            labels = (tp.topic, str(tp.partition))
            stable = self.consumer.stable_offset(tp)
            if stable is not None:
                m.unstable_records.labels(*labels).set(stable.unstable_records)
                m.lso_stuck.labels(*labels).set(stable.stuck_s)
            hw = self.consumer.highwater(tp)
            if hw is None:
                continue
            try:
                pos = self.consumer.position(tp, timeout_ms=100)
            except Exception:
                continue
            if pos is not None:
                m.lag.labels(*labels).set(max(0, hw - pos))

    # --- entities: drop and restore on rebalances (only while drained) ---

    def drop_partitions(self, partitions: set[int]) -> None:
        self.store.drop_partitions(partitions)
        self.metrics.active_entities.set(len(self.store))

    def restore_partitions(self, partitions: set[int]) -> int:
        """Load the changelog state of entities in ``partitions``; returns how many."""
        latest = read_changelog(self.settings, partitions)
        r = self.store.restore(latest, time.monotonic())
        m = self.metrics
        if r.not_restorable:
            m.resets.labels("state_not_restorable").inc(r.not_restorable)
        if r.evicted:
            m.evicted.labels("lru").inc(r.evicted)
        m.restored.inc(r.restored)
        m.active_entities.set(len(self.store))
        if r.upgraded:
            logger.info(
                "restored %d entities from state another model wrote (model.keep_state_on_upgrade)",
                r.upgraded,
            )
        return r.restored


def _about(msg: InvalidMessage) -> dict[str, object]:
    """The log fields of a line about one message (``logging.format: json`` shows them)."""
    entity = msg.key.decode("utf-8", "replace") if msg.key is not None else None
    return {
        "entity": entity,
        "topic": msg.topic,
        "partition": msg.partition,
        "offset": msg.offset,
        "reason": msg.reason,
    }


class _Listener(RebalanceListener):
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
            svc.drain()
            parts = {tp.partition for tp in assigned}
            n = svc.restore_partitions(parts)
            logger.info("assigned partitions %s; restored %d entities", sorted(parts), n)
        self._assigned_gauge()

    def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        """The group dropped this member (a session expired, e.g. across a broker restart):
        another member may already own the partitions, so nothing is committed and their
        state is dropped. Under exactly-once the open transaction holds work on that state
        since the last commit; it is abandoned (aborted by the rewind before the next ingest),
        or the replay from the last commit would publish the same predictions into it again."""
        svc = self.svc
        svc.metrics.rebalances.labels("lost").inc()
        if svc.checkpointer.closed:  # shutting down (a client may call back from close)
            return
        svc.drain()
        svc.checkpointer.abandon("the group dropped this member")
        svc.drop_partitions({tp.partition for tp in lost})
        svc.checkpointer.forget(lost)
        logger.info("lost partitions %s", sorted(tp.partition for tp in lost))
        self._assigned_gauge()

    def _assigned_gauge(self) -> None:
        n = len(self.svc.consumer.assignment())
        self.svc.metrics.assigned.set(n)
        self.svc.health.partitions_assigned = n > 0
        self.svc.metrics.ready.set(1 if self.svc.health.ready else 0)


def _overrun(grace_s: float) -> None:
    logger.error("shutdown exceeded the %.0fs grace period; exiting (uncommitted input replays)", grace_s)
    import os

    os._exit(70)
