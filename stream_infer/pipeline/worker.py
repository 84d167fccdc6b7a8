"""The inference thread: batcher -> state gather -> engine -> state scatter -> sink.

The source thread submits window batches; this thread owns the batcher and the state slab while
the pipeline runs. ``drain`` is the barrier the commit path and rebalances use: it returns once
every window submitted before it has been run and its prediction handed to the producer, and
the thread then idles until the next submit, so the caller may touch the slab safely.

Engine failures: a failed call is retried once; if it fails again the batch is split in halves
until the failing windows are isolated. Those are dropped and counted, the others are served.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream_infer.backends.base import Engine
from stream_infer.errors import EngineError, PipelineError
from stream_infer.kafka.access import authorization_cause
from stream_infer.metrics import Metrics
from stream_infer.pipeline.batcher import Batcher
from stream_infer.pipeline.sink import Sink
from stream_infer.records import WindowBatch
from stream_infer.state.slab import StateSlab

logger = logging.getLogger(__name__)


@dataclass
class _Barrier:
    done: threading.Event = field(default_factory=threading.Event)


_STOP = object()

# (windows, engine outputs) -> emit times [B] (ms): how one model's batch is published
Publish = Callable[[WindowBatch, np.ndarray], np.ndarray]


class InferenceWorker(threading.Thread):
    def __init__(
        self,
        engine: Engine,
        slab: StateSlab,
        batcher: Batcher,
        sink: Sink,
        metrics: Metrics,
        *,
        model: str = "default",
        publish: Publish | None = None,
        output_metrics: bool = True,
    ) -> None:
        """``model``: the model's name in the per-model metrics. ``publish``: how a batch's
        outputs are published and counted (a model among several, ``pipeline.lanes``); default:
        to the output topic through ``sink``. ``output_metrics``: feed the stream's own latency,
        batch and engine metrics (off for a shadow, whose hops never reach the output)."""
        super().__init__(name=f"inference-{model}" if model != "default" else "inference", daemon=True)
        self.engine = engine
        self.slab = slab
        self.batcher = batcher
        self.sink = sink
        self.metrics = metrics
        self.error: BaseException | None = None
        # Each counter has one writer (submit: the source thread; run: this thread), so reading
        # their difference from either thread needs no lock and never drifts.
        self._submitted = 0
        self._done = 0
        self._q: queue.Queue[Any] = queue.Queue()
        self._input_shape = engine.spec.input_shape
        self._cuda = engine.spec.device.startswith("cuda")
        self._publish = publish
        self._output_metrics = output_metrics
        self._m_engine = metrics.model_engine_time.labels(model)
        self._m_batch = metrics.model_batch_size.labels(model)
        self._m_latency = metrics.model_latency.labels(model)

    @property
    def queued(self) -> int:
        """Windows submitted and not yet run."""
        return self._submitted - self._done

    # --- called from the source thread ---

    def submit(self, wb: WindowBatch) -> None:
        if len(wb):
            self._submitted += len(wb)
            self._q.put(wb)

    def drain(self, timeout_s: float | None = None) -> None:
        """Block until every window submitted so far has been run and published. The
        thread's failure is the pipeline's, not a record's: raised as ``PipelineError``."""
        b = _Barrier()
        self._q.put(b)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            while not b.done.wait(0.1):
                self._check()
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError("inference did not drain in time")
            self._check()
        except PipelineError:
            raise
        except Exception as exc:
            raise PipelineError(f"the inference thread failed: {type(exc).__name__}: {exc}") from exc

    def stop(self) -> None:
        self._q.put(_STOP)
        self.join(timeout=30)

    def _check(self) -> None:
        if self.error is not None:
            raise self.error
        if not self.is_alive():
            raise RuntimeError("the inference thread has stopped")

    # --- the thread ---

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # surfaced to the source thread by _check()
            if authorization_cause(exc) is not None:  # an ACL revoked: named by the run loop
                logger.error("inference thread stopped: %s", exc)
            else:
                logger.exception("inference thread failed")
            self.error = exc

    def _loop(self) -> None:
        b = self.batcher
        while True:
            d = b.deadline()
            timeout = None if d is None else max(0.0, d - time.monotonic())
            try:
                item = self._q.get(timeout=timeout)
            except queue.Empty:
                item = None
            if item is _STOP:
                self._run_all()
                return
            if isinstance(item, _Barrier):
                self._run_all()
                item.done.set()
                continue
            if item is not None:
                b.add(item)
                # Take everything already queued before deciding, so batches fill up.
                while True:
                    try:
                        nxt = self._q.get_nowait()
                    except queue.Empty:
                        break
                    if isinstance(nxt, WindowBatch):
                        b.add(nxt)
                        continue
                    # A control item met while filling: handle it now, in queue order.
                    self._run_all()
                    if nxt is _STOP:
                        return
                    nxt.done.set()
                    break
            while b.ready(time.monotonic()):
                self._step()
            self.metrics.queue_depth.set(b.pending)

    def _run_all(self) -> None:
        while self.batcher.pending:
            self._step()
        self.metrics.queue_depth.set(0)

    def _step(self) -> None:
        chunk = self.batcher.take()
        if chunk is None:
            return
        started = time.monotonic()
        if self._output_metrics:
            self.metrics.queue_wait.observe_many(started - chunk.enqueued_s)
            self.metrics.batch_size.observe(len(chunk))
        self._m_batch.observe(len(chunk))
        y = self._run(chunk, retry=True)
        self._done += len(chunk)
        if y is None:
            return
        if self._publish is None:
            self.metrics.predictions.inc(len(y[0]))

    def _run(self, chunk: WindowBatch, retry: bool) -> tuple[np.ndarray] | None:
        """Step the engine for ``chunk`` and publish; isolate failures. Returns published scores."""
        slots = chunk.slots
        if chunk.fresh.any():
            self.slab.zero(slots[chunk.fresh])
        states = self.slab.gather(slots)
        x = chunk.x.reshape(len(chunk), *self._input_shape)
        t0 = time.perf_counter()
        try:
            y, *nxt = self._infer(x, *states)
        except Exception as exc:
            self.metrics.engine_errors.inc()
            if retry:
                logger.warning("engine failed on a batch of %d, retrying once: %s", len(chunk), exc)
                return self._run(chunk, retry=False)
            if len(chunk) == 1:
                self.metrics.isolated.inc()
                logger.error(
                    "engine failed on entity %s seq %d; window dropped: %s",
                    chunk.entities[0],
                    int(chunk.seq[0]),
                    exc,
                )
                return None
            half = len(chunk) // 2
            idx = np.arange(len(chunk))
            outs = [self._run(chunk.select(part), retry=False) for part in (idx[:half], idx[half:])]
            kept = [o[0] for o in outs if o is not None]
            return (np.concatenate(kept),) if kept else None
        took = time.perf_counter() - t0
        self._m_engine.observe(took)
        self.slab.scatter(slots, *nxt)
        emit_ms = self.sink.publish(chunk, y) if self._publish is None else self._publish(chunk, y)
        latency = (emit_ms - chunk.event_ms) / 1000.0
        if self._output_metrics:
            self.metrics.engine_time.observe(took)
            self.metrics.event_to_publish.observe_many(latency)
        self._m_latency.observe_many(latency)
        return (y,)

    def _infer(self, x: np.ndarray, *states: Any) -> tuple[Any, ...]:
        if not self._cuda:
            y, *nxt = self.engine.infer(x, *states)
            if not (np.isfinite(y).all()):
                raise EngineError("engine produced non-finite outputs")
            return (y, *nxt)
        import torch

        xt = torch.from_numpy(x).to(self.engine.spec.device, non_blocking=True)
        y, *nxt = self.engine.infer(xt, *states)
        return (y.float().cpu().numpy(), *nxt)
