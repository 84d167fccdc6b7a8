"""Running the real service against the real broker for benchmarks: data, pre-loading, the
in-process service, draining a backlog, paced replays in a child process, reading predictions.

The service runs in this process (``Service`` on a thread, its own metrics registry); the
paced replayer runs in a spawned child so that its Python does not share the service's GIL.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from benchmarks.common import OffsetWatch, preload
from stream_infer.replay import Format, Stream, messages, payload

PARTITIONS = 4


@dataclass(frozen=True)
class Case:
    entities: int
    samples_per_message: int
    samples_per_entity: int
    fmt: Format = "json"

    @property
    def events(self) -> int:
        return self.entities * self.samples_per_entity

    @property
    def messages(self) -> int:
        return self.entities * math.ceil(self.samples_per_entity / self.samples_per_message)

    def predictions(self, window: int, hop: int) -> int:
        n = self.samples_per_entity
        return self.entities * ((n - window) // hop + 1 if n >= window else 0)

    @property
    def label(self) -> str:
        fmt = "" if self.fmt == "json" else f", {self.fmt}"
        return f"{self.entities:,} entities, {self.samples_per_message} sample(s)/msg{fmt}"


def sensor_data(entities: int, samples_per_entity: int) -> list[Stream]:
    """``entities`` streams replaying BasicMotions recordings (tiled to the length needed)."""
    from stream_infer.model import datasets
    from stream_infer.replay import sensor_streams

    recs = datasets.basic_motions()
    long = [np.resize(v, (samples_per_entity, v.shape[1])).astype(np.float32) for v in recs.values]
    return sensor_streams(long, recs.labels, entities)


def records(
    streams: list[Stream], fmt: Format, samples_per_message: int, first_seq: int = 0
) -> Iterator[tuple[bytes, bytes, list[tuple[str, bytes]] | None]]:
    now = time.time_ns() // 1_000_000
    for key, seq, chunk in messages(streams, fmt, samples_per_message, first_seq):
        value, headers = payload(fmt, seq, chunk, now)
        yield key, value, headers


def load_case(servers: str, topic: str, case: Case) -> int:
    return preload(
        servers,
        topic,
        records(sensor_data(case.entities, case.samples_per_entity), case.fmt, case.samples_per_message),
    )


def service_settings(servers: str, topic: str, artifact: Path, **over: Any) -> Any:
    from stream_infer.config import load_settings

    run = uuid.uuid4().hex[:8]
    base: dict[str, Any] = {
        "kafka": {"bootstrap_servers": servers, "group_id": f"bench-{run}", "client_id": f"bench-{run}"},
        "topics": {"input": topic, "output": f"{topic}.out"},
        "model": {"artifact": str(artifact), "backend": "onnxruntime"},
        "metrics": {"port": 0, "host": "127.0.0.1"},
        "log_level": "WARNING",
    }
    if over.get("models"):
        del base["model"]  # several models: each entry names its own artifact
    for k, v in over.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return load_settings(None, **base)


class InProcessService:
    """A ``Service`` running its loop on a thread; ``stop`` drains, commits and closes it."""

    def __init__(self, settings: Any) -> None:
        from prometheus_client import CollectorRegistry

        from stream_infer.service import Service

        self.registry = CollectorRegistry()
        self.service = Service(settings, registry=self.registry)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="bench-service", daemon=True)

    def _run(self) -> None:
        try:
            self.service.run()
        except BaseException as exc:
            self.error = exc

    def start(self, ready_timeout_s: float = 60.0) -> None:
        self.service.start()
        self._thread.start()
        deadline = time.monotonic() + ready_timeout_s
        while not self.service.health.ready:
            if self.error is not None:
                raise self.error
            if time.monotonic() > deadline:
                raise TimeoutError("the service got no partitions in time")
            time.sleep(0.02)

    def sample(self, name: str) -> float:
        v = self.registry.get_sample_value(name)
        return float(v) if v is not None else 0.0

    def buckets(self, histogram: str) -> dict[float, float]:
        """Cumulative bucket counts of ``histogram``: upper bound (s) -> count."""
        out: dict[float, float] = {}
        for metric in self.registry.collect():
            for smp in metric.samples:
                if smp.name == f"{histogram}_bucket":
                    out[float(smp.labels["le"])] = smp.value
        return out

    def stop(self) -> None:
        self.service.stop()
        self._thread.join(120)
        if self.error is not None:
            raise self.error

    def cleanup_topics(self) -> list[str]:
        s = self.service.settings
        return [s.topics.output, s.dead_letter_topic, s.changelog_topic]


def longest(before: dict[float, float], after: dict[float, float]) -> float:
    """The upper bound of the bucket holding the longest observation made between two readings
    of a histogram (the largest finite bound when it lies beyond them); 0 when there was none."""
    bounds = sorted(after)
    gained = {le: after[le] - before.get(le, 0.0) for le in bounds}
    total = gained[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return 0.0
    first_full = next(le for le in bounds if gained[le] >= total)
    return first_full if first_full != float("inf") else max(le for le in bounds if le != float("inf"))


@dataclass(frozen=True)
class Drain:
    events_per_s: float
    messages_per_s: float
    seconds: float
    predictions: int


def drain_backlog(
    servers: str, settings: Any, case: Case, expect_predictions: int, timeout_s: float = 600.0
) -> tuple[Drain, list[str]]:
    """Start the service on a pre-loaded topic and time it from its first consumed event until
    every expected prediction is on the broker (the output keeping up, not just produced)."""
    svc = InProcessService(settings)
    watch = OffsetWatch(servers, settings.topics.output)
    try:
        base = watch.total()
        svc.start()
        deadline = time.monotonic() + timeout_s
        t0 = None
        while True:
            now = time.monotonic()
            if t0 is None and svc.sample("stream_infer_events_total") > 0:
                t0 = now
            if t0 is not None and watch.total() - base >= expect_predictions:
                break
            if svc.error is not None:
                raise svc.error
            if now > deadline:
                raise TimeoutError(
                    f"only {watch.total() - base} of {expect_predictions} predictions in {timeout_s}s"
                )
            time.sleep(0.02)
        elapsed = time.monotonic() - t0
        return (
            Drain(case.events / elapsed, case.messages / elapsed, elapsed, watch.total() - base),
            svc.cleanup_topics(),
        )
    finally:
        watch.close()
        svc.stop()


def consume_only(servers: str, topic: str, n_messages: int, settings: Any, timeout_s: float = 300.0) -> float:
    """kafka-python's own ceiling on ``topic``: messages/s of a consumer with the service's fetch
    settings that only polls (and touches each record's value), from the first record to the last."""
    from kafka import KafkaConsumer, TopicPartition

    k = settings.kafka
    c = KafkaConsumer(
        bootstrap_servers=servers.split(","),
        client_id="bench-consume-only",
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        max_poll_records=k.max_poll_records,
        fetch_max_bytes=k.fetch_max_bytes,
        max_partition_fetch_bytes=k.max_partition_fetch_bytes,
    )
    try:
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or ())]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        n = 0
        nbytes = 0
        t0 = 0.0  # set at the first record: timed while records flow, as the service is
        deadline = time.monotonic() + timeout_s
        while n < n_messages and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=100).values():
                t0 = t0 or time.monotonic()
                n += len(recs)
                for r in recs:
                    nbytes += len(r.value)
        if n < n_messages:
            raise TimeoutError(f"consume-only read {n} of {n_messages}")
        return n / (time.monotonic() - t0)
    finally:
        c.close()


# --- paced replay in a child process -----------------------------------------------------------


def _replay_child(servers: str, topic: str, case: Case, rate: float, first_seq: int, out: Any) -> None:
    """The replayer's loop (``payload`` per message, event time = send time, paced against a
    monotonic clock) on confluent-kafka when installed: kafka-python's producer tops out near
    the rates being asked for here (see the client benchmark), which would cap the offered load."""
    try:
        from confluent_kafka import Producer
    except ImportError:
        from stream_infer.replay import Replayer

        r = Replayer(servers, topic, case.fmt, case.samples_per_message, rate)
        t0 = time.monotonic()
        n = r.run(sensor_data(case.entities, case.samples_per_entity), progress=False, first_seq=first_seq)
        out.put((n, time.monotonic() - t0))
        r.close()
        return
    streams = sensor_data(case.entities, case.samples_per_entity)
    p = Producer({"bootstrap.servers": servers, "linger.ms": 5, "batch.size": 262_144, "acks": 1})
    p.list_topics(topic, timeout=10)
    sent = 0
    t0 = time.monotonic()
    for key, seq, chunk in messages(streams, case.fmt, case.samples_per_message, first_seq):
        value, headers = payload(case.fmt, seq, chunk, time.time_ns() // 1_000_000)
        p.produce(topic, value=value, key=key, headers=headers)  # type: ignore[arg-type]
        p.poll(0)
        sent += len(chunk)
        ahead = sent / rate - (time.monotonic() - t0)
        if ahead > 0.005:
            time.sleep(ahead)
    p.flush(60)
    out.put((sent, time.monotonic() - t0))


def paced_replay(servers: str, topic: str, case: Case, rate: float, first_seq: int) -> tuple[int, float]:
    """Replay ``case`` at ``rate`` events/s from a spawned process; (events, seconds)."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_replay_child, args=(servers, topic, case, rate, first_seq, q), daemon=True)
    p.start()
    result = q.get(timeout=600)
    p.join(30)
    return result  # type: ignore[no-any-return]


def read_predictions(servers: str, topic: str, expect: int, timeout_s: float = 120.0) -> list[dict[str, Any]]:
    from kafka import KafkaConsumer

    c = KafkaConsumer(
        topic,
        bootstrap_servers=servers.split(","),
        group_id=None,
        auto_offset_reset="earliest",
        client_id="bench-reader",
        max_poll_records=50_000,
    )
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < expect and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=200).values():
                out.extend(orjson.loads(r.value) for r in recs)
    finally:
        c.close()
    return out
