"""Several models on one stream: a lane per model, fanned out from one ingest.

Each model on the stream (``models:``, docs/models.md) gets a lane: its own entity store
(windows and carried state), engine, inference thread and batcher, and a ``publish`` that knows
its role:

* the primary runs every entity; it publishes the hops of the entities no canary serves, and
  offers the others to the agreement count as the reference;
* a canary runs the entities the router gives it and publishes them to the output topic;
* a shadow runs every entity and publishes to its own topic.

All lanes share the one producer, so under exactly-once every model's predictions, every
model's changelog records and the input offsets commit in the same transaction. ``Workers``
is the group of inference threads the checkpoint and rebalance paths drain as one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from stream_infer.backends.base import Engine
from stream_infer.config import ServedModel
from stream_infer.metrics import Metrics
from stream_infer.model.card import ModelCard
from stream_infer.model.heads import Head
from stream_infer.pipeline.agreement import Agreement
from stream_infer.pipeline.routing import PRIMARY, Router
from stream_infer.pipeline.sink import Outlet, Sink
from stream_infer.pipeline.worker import InferenceWorker, Publish
from stream_infer.records import WindowBatch
from stream_infer.state.slab import StateSlab
from stream_infer.state.store import EntityStore


@dataclass
class Lane:
    """One model on the stream and everything it runs with."""

    spec: ServedModel
    card: ModelCard
    head: Head
    engine: Engine
    store: EntityStore
    slab: StateSlab
    outlet: Outlet
    worker: InferenceWorker | None = None  # built once ``Lanes`` gives its ``publisher``

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def role(self) -> str:
        return self.spec.role


class Lanes:
    """The lanes of one stream, the primary first, with their router and agreement count."""

    def __init__(self, lanes: Sequence[Lane], sink: Sink, metrics: Metrics) -> None:
        self.lanes = list(lanes)
        self.sink = sink
        self.metrics = metrics
        self.canaries = [ln for ln in self.lanes if ln.role == "canary"]
        self.shadows = [ln for ln in self.lanes if ln.role == "shadow"]
        self.router = Router([ln.spec.fraction for ln in self.canaries])
        self.agreement = Agreement(metrics) if len(self.lanes) > 1 else None
        for ln in self.lanes:
            metrics.model_info.labels(ln.name).info(
                {"role": ln.role, "model_id": ln.card.model_id, "topic": ln.outlet.topic}
            )
            for use in ("published", "reference") if ln.role == "primary" else ("published",):
                metrics.model_predictions.labels(ln.name, ln.role, use)
            if ln.role != "primary":  # every series exists from the first scrape
                for result in ("same", "different"):
                    metrics.model_agreement.labels(ln.name, result)
                metrics.model_abs_diff.labels(ln.name)

    @property
    def primary(self) -> Lane:
        return self.lanes[0]

    def runs(self, lane: Lane) -> Callable[[list[str]], np.ndarray] | None:
        """Which entities of a batch ``lane`` runs (None: all)."""
        if lane.role != "canary":
            return None
        k = self.canaries.index(lane)
        router = self.router
        return lambda entities: router.route(entities) == k

    def publisher(self, lane: Lane) -> Publish | None:
        """How ``lane``'s batches are published and counted; None: the plain path (one model)."""
        if len(self.lanes) == 1:
            return None
        if lane.role == "primary":
            return self._primary_publish(lane)
        return self._other_publish(lane)

    def _primary_publish(self, lane: Lane) -> Publish:
        sink, m, router, agreement = self.sink, self.metrics, self.router, self.agreement
        assert agreement is not None
        published = m.model_predictions.labels(lane.name, lane.role, "published")
        reference = m.model_predictions.labels(lane.name, lane.role, "reference")
        canaries, shadows = self.canaries, self.shadows

        def publish(chunk: WindowBatch, y: np.ndarray) -> np.ndarray:
            ents = chunk.entities
            seqs = chunk.seq.tolist()
            for sh in shadows:
                agreement.offer(sh.name, True, lane.head, ents, seqs, y)
            if not canaries:
                emit = sink.publish(chunk, y)
                n = len(chunk)
            else:
                route = router.route(ents)
                for k, can in enumerate(canaries):
                    idx = np.flatnonzero(route == k)
                    if len(idx):
                        agreement.offer(
                            can.name, True, lane.head, [ents[i] for i in idx], [seqs[i] for i in idx], y[idx]
                        )
                own = np.flatnonzero(route == PRIMARY)
                n = len(own)
                if n == len(chunk):
                    emit = sink.publish(chunk, y)
                else:
                    emit = np.full(len(chunk), time.time_ns() // 1_000_000, dtype=np.int64)
                    if n:
                        emit[:] = sink.publish(chunk.select(own), y[own])[0]
                if len(chunk) > n:
                    reference.inc(len(chunk) - n)
            m.predictions.inc(n)
            published.inc(n)
            return emit

        return publish

    def _other_publish(self, lane: Lane) -> Publish:
        sink, m, agreement = self.sink, self.metrics, self.agreement
        assert agreement is not None
        published = m.model_predictions.labels(lane.name, lane.role, "published")
        outlet = lane.outlet
        to_output = lane.role == "canary"

        def publish(chunk: WindowBatch, y: np.ndarray) -> np.ndarray:
            emit = sink.publish(chunk, y, outlet)
            agreement.offer(lane.name, False, lane.head, chunk.entities, chunk.seq.tolist(), y)
            if to_output:
                m.predictions.inc(len(chunk))
            published.inc(len(chunk))
            return emit

        return publish


class Workers:
    """Every lane's inference thread, started, drained and stopped as one."""

    def __init__(self, workers: Sequence[InferenceWorker]) -> None:
        self.workers = list(workers)

    @property
    def queued(self) -> int:
        """The longest queue: back-pressure holds the input when any model falls behind."""
        return max(w.queued for w in self.workers)

    @property
    def error(self) -> BaseException | None:
        return next((w.error for w in self.workers if w.error is not None), None)

    def start(self) -> None:
        for w in self.workers:
            w.start()

    def drain(self, timeout_s: float | None = None) -> None:
        for w in self.workers:
            w.drain(timeout_s)

    def stop(self) -> None:
        for w in self.workers:
            w.stop()
