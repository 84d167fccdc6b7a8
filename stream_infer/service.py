"""The service: wires the pipeline and runs the loop; the stages do the work.

    source (consumer) -> ingest (decode, dead letters, admission, windows) -> worker (batcher,
    engine, state slab) -> sink (producer); checkpoint (the commit path) and rebalance (drop,
    restore) close the loop; config, metrics, health at the edges.

Threads: the source thread (``run``) polls and ingests, and starts checkpoints; the inference
thread runs the engine and publishes; the commit path's thread finishes periodic checkpoints;
rebalance callbacks run inside ``poll`` (librdkafka) or on kafka-python's IO thread. Slot
eviction, restores and checkpoints happen only while the inference thread is drained, so a slot
is never reused under a window in flight.
"""

from __future__ import annotations

import gc
import logging
import queue
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client import REGISTRY, CollectorRegistry

from stream_infer.backends import Engine, open_engine
from stream_infer.config import ServedModel, Settings
from stream_infer.errors import ConfigError
from stream_infer.health import Health, serve_http
from stream_infer.kafka import Consumer, await_partitions, make_consumer, make_producer
from stream_infer.kafka.access import denied
from stream_infer.kafka.compacted import read_changelog
from stream_infer.kafka.topics import dead_letter_limit_bytes, ensure_topics
from stream_infer.kafka.types import TopicPartition
from stream_infer.metrics import Metrics
from stream_infer.model.card import ModelCard, load_card
from stream_infer.model.heads import make_head
from stream_infer.pipeline.batcher import Batcher
from stream_infer.pipeline.checkpoint import Checkpointer
from stream_infer.pipeline.decode import Decoder
from stream_infer.pipeline.ingest import Ingest, Route
from stream_infer.pipeline.lanes import Lane, Lanes, Workers
from stream_infer.pipeline.rebalance import Rebalancer, Restorer
from stream_infer.pipeline.sink import Outlet, Sink
from stream_infer.pipeline.source import Source
from stream_infer.pipeline.worker import InferenceWorker
from stream_infer.state.disk import DiskTier
from stream_infer.state.inspection import entity_document, partition_for, state_names, tensor_summary
from stream_infer.state.models import ModelStates
from stream_infer.state.slab import make_state_slab
from stream_infer.state.store import EntityStore, ModelShape

logger = logging.getLogger(__name__)

ENTITY_ANSWER_TIMEOUT_S = 5.0


@dataclass
class _EntityRequest:
    """One ``GET /entities/<id>``, waiting for the source thread's answer."""

    entity: str
    tensors: bool
    done: threading.Event = field(default_factory=threading.Event)
    answer: tuple[int, dict[str, Any]] = (503, {})


class Service:
    """Wiring and the run loop. ``start`` builds the Kafka-facing stages; ``wire`` builds the
    pipeline behind the source (tests and ``evaluate`` call it with an in-memory producer)."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine | None = None,
        registry: CollectorRegistry | None = REGISTRY,
        card: ModelCard | None = None,
        cards: Mapping[str, ModelCard] | None = None,
    ) -> None:
        """``card``: the primary's card, ``cards``: the others' by name (default: read from the
        artifacts)."""
        self.settings = settings
        self.served = served = settings.served_models
        self.card = card = card or load_card(served[0].artifact)
        given = dict(cards or {})
        self.cards = {
            m.name: card if i == 0 else given.get(m.name) or load_card(m.artifact)
            for i, m in enumerate(served)
        }
        _check_same_input(self.cards)
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
        self._entity_requests: queue.SimpleQueue[_EntityRequest] = queue.SimpleQueue()
        self._input_partitions = 0
        out = settings.output
        # How predictions are published; a setting the model's head cannot take (schema
        # version 1 for a forecaster) is refused here, before anything starts.
        self.heads = {
            name: make_head(
                c.labels, c.head, top_k=out.top_k, logits=out.logits, schema_version=out.schema_version
            )
            for name, c in self.cards.items()
        }
        self.head = self.heads[served[0].name]
        inp = settings.input
        self.decoder = Decoder(
            inp.format,
            tuple(card.sample_shape),
            inp.max_message_bytes,
            inp.max_samples_per_message,
            inp.schema_registry(),
        )
        self.shapes = {m.name: _model_shape(self.cards[m.name], m.keep_state_on_upgrade) for m in served}
        self.model_shape = self.shapes[served[0].name]
        for note in settings.kafka.insecure():
            logger.warning(note)
        self.metrics.slot_capacity.set(settings.entities.max_entities)
        self.metrics.model.info(
            {
                "name": card.name,
                "version": card.version,
                "kind": card.kind,
                "backend": settings.model.backend,
                "device": settings.model.device,
            }
        )

    # --- wiring ---

    def start(self) -> None:
        """Connect, load the engine and subscribe; ``run`` then processes until ``stop``."""
        s = self.settings
        if self.registry is not None and s.metrics.port >= 0:
            lookup = self.entity_lookup if s.metrics.entity_api else None
            self._http = serve_http(self.health, s.metrics.port, s.metrics.host, self.registry, lookup)
        ensure_topics(s)
        engine = self._engine or _open(self.served[0], s.batcher.max_batch)
        eos = s.delivery.guarantee == "exactly-once"
        dl_bytes = dead_letter_limit_bytes(s)
        self.wire(
            engine,
            make_producer(s, s.transactional_id if eos else None, dead_letter_max_bytes=dl_bytes),
            dead_letter_max_bytes=dl_bytes,
        )
        self._input_partitions = len(await_partitions(s, s.topics.input))
        self.consumer: Consumer = make_consumer(s)
        self.source = Source(
            self.consumer,
            self.metrics,
            self.health,
            queued=lambda: self.workers.queued,
            max_queue_windows=s.batcher.max_queue_windows,
            poll_timeout_ms=s.kafka.poll_timeout_ms,
        )
        restorer = Restorer(self.states, lambda parts: read_changelog(s, parts), self.metrics)
        self.checkpointer = Checkpointer(
            consumer=self.consumer,
            sink=self.sink,
            store=self.states,
            drain=self.workers.drain,
            restore=restorer.restore,
            metrics=self.metrics,
            settings=s,
        )
        rebalancer = Rebalancer(
            self.consumer, self.checkpointer, restorer, self.workers.drain, self.metrics, self.health
        )
        # Everything loaded so far (the engine, the model, the libraries) lives as long as the
        # process: out of the collector's way, so that a full collection no longer walks it
        # (a pause the p99 latency would show).
        gc.collect()
        gc.freeze()
        self.workers.start()
        self.health.engine_loaded = True
        self.consumer.subscribe([s.topics.input], listener=rebalancer)
        self._started = True

    def wire(
        self,
        engine: Engine,
        producer: Any,
        dead_letter_max_bytes: int | None = None,
        engines: Mapping[str, Engine] | None = None,
    ) -> None:
        """Build the pipeline behind the source: per model (``pipeline.lanes``) an entity store
        and an inference thread (not started), then the sink and ingest. ``engine`` is the
        primary's; ``engines`` the others' by name (opened from their artifacts if missing). ``start`` calls it with the real producer; tests and offline
        replays call it with a ``testing.ListProducer`` and feed ``ingest`` themselves."""
        s = self.settings
        self.engine = engine
        ent = s.entities
        self.sink = Sink(
            producer,
            s.topics.output,
            s.dead_letter_topic,
            s.changelog_topic,
            self.card.model_id,
            self.head,
            **({} if dead_letter_max_bytes is None else {"dead_letter_max_bytes": dead_letter_max_bytes}),
        )
        if s.metrics.entity_api:
            self.sink.keep_last(2 * ent.max_entities)
        given = dict(engines or {})
        lanes = []
        for i, m in enumerate(self.served):
            eng = engine if i == 0 else given.get(m.name) or _open(m, s.batcher.max_batch)
            slab = make_state_slab(eng.spec.device, ent.max_entities, eng.spec.states, m.state_slab)
            disk = None
            if ent.on_full == "page":
                where = (
                    ent.disk_path if i == 0 or ent.disk_path is None else ent.disk_path / "models" / m.name
                )
                disk = DiskTier(where, ent.disk_max_bytes)
            store = EntityStore(
                ent.max_entities, self.shapes[m.name], slab, ent.max_seq_gap, ent.max_seq_rewind, disk
            )
            topic = s.shadow_topic(m) if m.role == "shadow" else s.topics.output
            card = self.cards[m.name]
            outlet = Outlet(topic, card.model_id, self.heads[m.name])
            lanes.append(Lane(m, card, self.heads[m.name], eng, store, slab, outlet))
        self.lanes = group = Lanes(lanes, self.sink, self.metrics)
        workers = [
            InferenceWorker(
                ln.engine,
                ln.slab,
                Batcher(s.batcher.max_batch, s.batcher.max_wait_ms),
                self.sink,
                self.metrics,
                model=ln.name,
                publish=group.publisher(ln),
                output_metrics=ln.role != "shadow",
            )
            for ln in lanes
        ]
        for ln, w in zip(lanes, workers, strict=True):
            ln.worker = w
        self.metrics.disk_capacity.set(ent.disk_max_bytes if ent.on_full == "page" else 0)
        self.store = lanes[0].store
        self.states = ModelStates({ln.name: ln.store for ln in lanes})
        self.worker = workers[0]
        self.workers = Workers(workers)
        self.ingest = Ingest(
            self.decoder,
            self.store,
            self.sink,
            self.metrics,
            hand_off=self.worker.submit,
            drain=self.worker.drain,
            dead_letter_topic=s.dead_letter_topic,
            others=[
                Route(ln.store, w.submit, w.drain, group.runs(ln), ln.role == "canary", ln.name)
                for ln, w in zip(lanes[1:], workers[1:], strict=True)
            ],
            model=lanes[0].name,
            control_messages=s.input.control_messages,
        )

    def drain(self) -> None:
        """Wait until the inference thread has run and published every window handed to it
        (``InferenceWorker.drain``)."""
        self.workers.drain()

    # --- GET /entities/<id> ---

    def entity_lookup(self, entity: str, tensors: bool) -> tuple[int, dict[str, Any]]:
        """``GET /entities/<id>`` (called on the HTTP thread): (status, JSON document).

        The store, the slab and the sink's last predictions belong to the pipeline's threads, so
        the HTTP thread does not read them: it queues the request and the run loop answers it on
        the source thread between polls, after draining the inference thread (``_serve_entities``)
        -- the same discipline as a checkpoint, with no lock on the hot path. An answer that does
        not come within ``ENTITY_ANSWER_TIMEOUT_S`` (the loop is blocked or stopping) is a 503."""
        req = _EntityRequest(entity, tensors)
        self._entity_requests.put(req)
        if not req.done.wait(ENTITY_ANSWER_TIMEOUT_S):
            return 503, {"entity": entity, "reason": "the run loop did not answer in time"}
        return req.answer

    def _serve_entities(self) -> None:
        """Answer the queued ``GET /entities/<id>`` requests (the source thread, between polls)."""
        if self._entity_requests.empty():
            return
        self.workers.drain()
        while True:
            try:
                req = self._entity_requests.get_nowait()
            except queue.Empty:
                return
            try:
                req.answer = self.describe_entity(req.entity, req.tensors)
            except Exception as exc:
                logger.warning("GET /entities/%s failed: %s", req.entity, exc)
                req.answer = (500, {"entity": req.entity, "reason": f"{type(exc).__name__}: {exc}"})
            req.done.set()

    def describe_entity(self, entity: str, tensors: bool = False) -> tuple[int, dict[str, Any]]:
        """One entity as this pod holds it; only on the source thread with the inference thread
        drained (``_serve_entities``)."""
        n = self._input_partitions
        part = partition_for(entity, n) if n else -1
        consumer = getattr(self, "consumer", None)
        owned = (
            consumer is not None and TopicPartition(self.settings.topics.input, part) in consumer.assignment()
        )
        view = self.store.describe(entity, time.monotonic())
        held = self.store.tensors_of(entity) if view is not None else None
        names = state_names(self.model_shape.states)
        last = self.sink.last_predictions or {}
        raw = last.get(entity)
        status, doc = entity_document(
            entity,
            part if part >= 0 else (view.partition if view is not None else -1),
            owned,
            view,
            list(zip(names, held or (), strict=False)),
            orjson.loads(raw) if raw is not None else None,
            tensors,
        )
        if status == 200 and len(self.lanes.lanes) > 1:
            doc["models"] = {ln.name: self._lane_view(ln, entity, tensors) for ln in self.lanes.lanes}
        return status, doc

    def _lane_view(self, lane: Lane, entity: str, tensors: bool) -> dict[str, Any] | None:
        """One model's state of ``entity`` (several models on the stream), None if it holds none."""
        view = lane.store.describe(entity, time.monotonic())
        if view is None:
            return None
        held = lane.store.tensors_of(entity) or ()
        names = state_names(self.shapes[lane.name].states)
        return {
            "role": lane.role,
            "model": lane.card.model_id,
            "last_seq": view.last_seq,
            "samples_in_segment": view.samples_in_segment,
            "fresh": view.fresh,
            "states": [tensor_summary(n, a, tensors) for n, a in zip(names, held, strict=False)],
        }

    @property
    def metrics_port(self) -> int | None:
        return self._http.server_port if self._http is not None else None

    # --- lifecycle ---

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
        """The loop: poll -> ingest -> mark the poll committable -> backpressure -> checkpoint
        when due -> lag when due."""
        if not self._started:
            self.start()
        s = self.settings
        commit_s = s.delivery.commit_interval_ms / 1000.0
        next_commit = time.monotonic() + commit_s
        next_lag = time.monotonic()
        source, checkpointer = self.source, self.checkpointer
        clean = False
        try:
            serve_entities = self.settings.metrics.entity_api
            while not self._stop.is_set():
                if serve_entities:
                    self._serve_entities()
                polled = source.poll()
                if polled is None:
                    continue  # the broker is away
                if checkpointer.rewind_pending:
                    # A transaction failed or was abandoned in a rebalance callback: what was
                    # just polled is refetched after the rewind seeks back.
                    checkpointer.rewind()
                    continue
                if polled:
                    self.ingest(source.records(polled))
                    # Only now: every record of the poll is windowed, handed on or dead-lettered.
                    checkpointer.track(polled)
                source.backpressure()
                checkpointer.settle()  # a background checkpoint that finished: its offsets
                now = time.monotonic()
                if now >= next_commit:
                    checkpointer.checkpoint(wait_commit=False)
                    next_commit = time.monotonic() + commit_s
                if now >= next_lag:
                    source.update_lag()
                    next_lag = now + s.metrics.lag_interval_s
            clean = True
        finally:
            self._shutdown(clean)

    def _shutdown(self, clean: bool) -> None:
        """Stop polling, drain, publish, checkpoint, commit, close; within the grace period.

        After a failure (``clean`` false) nothing is checkpointed: what the failed poll left
        half done replays from the last commit, as after kill -9."""
        self.health.stopping = True
        self._start_grace_timer()
        timer = self._grace_timer
        assert timer is not None
        try:
            if self._started and clean and self.workers.error is None:
                self.checkpointer.checkpoint()
            elif self._started and not clean:
                logger.error("stopping after a failure: no checkpoint; input replays from the last commit")
        finally:
            if self._started:
                self.checkpointer.close()
            try:
                if self._started:
                    self.workers.stop()
                    self.consumer.close(autocommit=False)
                    self.sink.close()
                    for ln in self.lanes.lanes:
                        ln.engine.close()
                    self.states.close()
            finally:
                timer.cancel()
                if self._http is not None:
                    self._http.shutdown()
                logger.info("stopped")


def _open(m: ServedModel, max_batch: int) -> Engine:
    return open_engine(
        m.artifact, m.backend, m.device, max_batch=max(max_batch, 1), card_sha256=m.card_sha256
    )


def _model_shape(card: ModelCard, keep_state_on_upgrade: bool) -> ModelShape:
    return ModelShape(
        card.model_id,
        card.window,
        card.hop,
        tuple(card.sample_shape),
        tuple(card.state_shape),
        keep_state_on_upgrade,
        card.states,
    )


def _check_same_input(cards: Mapping[str, ModelCard]) -> None:
    """Every model on one stream reads the same samples."""
    (first, card), *rest = cards.items()
    for name, other in rest:
        if tuple(other.sample_shape) != tuple(card.sample_shape):
            raise ConfigError(
                f"models: {name} takes samples of shape {list(other.sample_shape)}, the primary "
                f"{first} {list(card.sample_shape)}: every model on one stream reads the same input"
            )


def _overrun(grace_s: float) -> None:
    logger.error("shutdown exceeded the %.0fs grace period; exiting (uncommitted input replays)", grace_s)
    import os

    os._exit(70)
