"""Every metric stream-infer exports, defined once against an injected registry.

Tests build a fresh ``CollectorRegistry`` and read samples from it; the service uses the global
one. Per-prediction histograms are fed a whole batch at a time through ``BatchHistogram`` (numpy
bucketing), so metrics cost O(batches), not O(predictions), in Python.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

import numpy as np
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Info, Summary
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

PREFIX = "stream_infer"

LATENCY_BUCKETS_S = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
ENGINE_BUCKETS_S = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
INVALID_REASONS = (
    "missing_key",
    "bad_key",
    "oversized",
    "undecodable",
    "wrong_shape",
    "wrong_dtype",
    "non_finite",
    "bad_timestamp",
    "bad_seq",
    "bad_reset",
    "bad_image",
    "too_many_samples",
    "unknown_schema",
    "unsupported_schema",
    "internal_error",
    "over_capacity",
    "control_disabled",
    "bad_control",
)
DROP_REASONS = ("duplicate_seq", "older_seq", "replayed")  # stream_infer.state.windows.DROPS
# stream_infer.state.windows.SEGMENTS, then the state a restore could not use
RESET_REASONS = ("seq_gap", "seq_restart", "seq_outlier", "explicit_reset", "state_not_restorable")
EVICT_REASONS = ("ttl",)  # deletion; the slot cap pages out to the disk tier instead
REBALANCE_KINDS = ("assigned", "revoked", "lost")
KAFKA_OPS = ("poll", "commit")
CONTROL_KINDS = ("reset", "set-state")  # stream_infer.pipeline.control.KINDS

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class BatchHistogram(Collector):
    """A label-less histogram that takes a numpy array of observations per call."""

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry | None
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.upper = np.asarray(list(buckets) + [np.inf], dtype=np.float64)
        self._counts = np.zeros(len(self.upper), dtype=np.int64)
        self._sum = 0.0
        self._lock = threading.Lock()
        if registry is not None:
            registry.register(self)

    def observe_many(self, values: np.ndarray) -> None:
        if values.size == 0:
            return
        idx = np.searchsorted(self.upper, values, side="left")
        counts = np.bincount(idx, minlength=len(self.upper))
        total = float(values.sum())
        with self._lock:
            self._counts += counts
            self._sum += total

    def observe(self, value: float) -> None:
        self.observe_many(np.asarray([value], dtype=np.float64))

    @property
    def count(self) -> int:
        return int(self._counts.sum())

    def snapshot(self) -> tuple[list[tuple[str, float]], float]:
        """(cumulative buckets, sum) as exposed."""
        with self._lock:
            cumulative = np.cumsum(self._counts)
            total = self._sum
        return [(_le(u), float(n)) for u, n in zip(self.upper, cumulative, strict=True)], total

    def collect(self) -> Iterable[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation)
        family.add_metric([], *self.snapshot())
        yield family

    def describe(self) -> Iterable[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation)


class ModelBatchHistogram(Collector):
    """``BatchHistogram`` with a ``model`` label: one child per model on the stream."""

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry | None
    ) -> None:
        self.name = name
        self.documentation = documentation
        self._buckets = tuple(buckets)
        self._children: dict[str, BatchHistogram] = {}
        self._lock = threading.Lock()
        if registry is not None:
            registry.register(self)

    def labels(self, model: str) -> BatchHistogram:
        with self._lock:
            child = self._children.get(model)
            if child is None:
                child = self._children[model] = BatchHistogram(
                    self.name, self.documentation, self._buckets, None
                )
            return child

    def collect(self) -> Iterable[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=["model"])
        with self._lock:
            children = list(self._children.items())
        for model, child in children:
            family.add_metric([model], *child.snapshot())
        yield family

    def describe(self) -> Iterable[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=["model"])


def _le(upper: float) -> str:
    return "+Inf" if np.isinf(upper) else repr(float(upper))


class Metrics:
    """The service's metrics. One instance per service; pass ``registry`` in tests."""

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        r = registry
        p = PREFIX
        self.registry = registry
        # --- latency and throughput (fed per batch) ---
        self.event_to_publish = BatchHistogram(
            f"{p}_event_to_publish_seconds",
            "Event time of a window's last sample to the prediction being handed to the producer.",
            LATENCY_BUCKETS_S,
            r,
        )
        self.queue_wait = BatchHistogram(
            f"{p}_queue_wait_seconds",
            "Time a completed window waited for its engine call.",
            LATENCY_BUCKETS_S,
            r,
        )
        self.engine_time = Histogram(
            f"{p}_engine_seconds", "Wall time of one engine call.", buckets=ENGINE_BUCKETS_S, registry=r
        )
        self.batch_size = Histogram(
            f"{p}_batch_size", "Windows per engine call.", buckets=BATCH_BUCKETS, registry=r
        )
        self.commit_time = Histogram(
            f"{p}_commit_seconds",
            "Checkpoint duration: drain, flush, changelog, offset commit.",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.poll_gap = Histogram(
            f"{p}_poll_gap_seconds",
            "Time from the return of one poll to the start of the next: decoding, windowing, "
            "back-pressure and checkpoints, during which nothing is fetched.",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.messages = Counter(f"{p}_messages", "Kafka messages consumed.", registry=r)
        self.events = Counter(f"{p}_events", "Samples (events) decoded from valid messages.", registry=r)
        self.predictions = Counter(f"{p}_predictions", "Predictions published.", registry=r)
        self.invalid = Counter(
            f"{p}_invalid_events", "Invalid messages, sent to the dead-letter topic.", ["reason"], registry=r
        )
        self.dead_letters = Counter(
            f"{p}_dead_letters", "Messages written to the dead-letter topic.", registry=r
        )
        self.dropped = Counter(
            f"{p}_dropped_samples",
            "Samples dropped by the sequence rules (a duplicate seq, or an older one within "
            "entities.max_seq_rewind).",
            ["reason"],
            registry=r,
        )
        self.resets = Counter(
            f"{p}_entity_resets",
            "New segments: an entity's window and state started from zero (seq gap, restart, "
            "outlier, explicit reset; state not restorable).",
            ["reason"],
            registry=r,
        )
        self.evicted = Counter(
            f"{p}_entities_evicted",
            "Entities deleted (idle TTL, in memory or on the disk tier), with a changelog tombstone.",
            ["reason"],
            registry=r,
        )
        self.paged_out = Counter(
            f"{p}_entities_paged_out",
            "Entities moved from memory to the disk tier (slot cap) or restored straight to it.",
            registry=r,
        )
        self.paged_in = Counter(
            f"{p}_entities_paged_in", "Entities moved back from the disk tier into memory.", registry=r
        )
        self.thrash = Counter(
            f"{p}_entities_thrash",
            "Page-ins of entities paged out less than a minute before: the working set is larger "
            "than entities.max_entities.",
            registry=r,
        )
        self.refused = Counter(
            f"{p}_entities_refused",
            "New entities refused (their samples dead-lettered as over_capacity): memory and the "
            "disk tier are full, or entities.on_full is refuse_new.",
            registry=r,
        )
        self.split_polls = Counter(
            f"{p}_split_polls",
            "Polls with more distinct entities than slots, admitted in parts (raise max_entities).",
            registry=r,
        )
        self.engine_errors = Counter(f"{p}_engine_errors", "Engine calls that raised.", registry=r)
        self.isolated = Counter(
            f"{p}_isolated_windows", "Windows dropped after isolating an engine failure to them.", registry=r
        )
        self.restored = Counter(
            f"{p}_state_restored_entities", "Entities restored from the state changelog.", registry=r
        )
        self.rebalances = Counter(f"{p}_rebalances", "Partition assignment changes.", ["kind"], registry=r)
        self.commits = Counter(f"{p}_commits", "Checkpoints committed.", registry=r)
        self.kafka_errors = Counter(
            f"{p}_kafka_errors", "Kafka client errors survived (retried).", ["op"], registry=r
        )
        # --- gauges ---
        self.active_entities = Gauge(
            f"{p}_active_entities", "Entities holding a slot (in memory).", registry=r
        )
        self.disk_entities = Gauge(f"{p}_disk_entities", "Entities paged out to the disk tier.", registry=r)
        self.disk_bytes = Gauge(f"{p}_disk_tier_bytes", "Bytes of the disk tier in use.", registry=r)
        self.disk_capacity = Gauge(
            f"{p}_disk_tier_capacity_bytes", "The disk tier's budget (entities.disk_max_bytes).", registry=r
        )
        self.slot_capacity = Gauge(f"{p}_slot_capacity", "Slots available for entities.", registry=r)
        self.lag = Gauge(
            f"{p}_consumer_lag",
            "Messages behind the high watermark, per partition.",
            ["topic", "partition"],
            registry=r,
        )
        # A producer that died inside a transaction holds the input's last stable offset (LSO)
        # until the broker aborts the transaction; read_committed reading stops there.
        self.unstable_records = Gauge(
            f"{p}_input_unstable_records",
            "Input records past the last stable offset (high watermark minus LSO), per partition: "
            "written in transactions still open, not yet readable.",
            ["topic", "partition"],
            registry=r,
        )
        self.lso_stuck = Gauge(
            f"{p}_input_lso_stuck_seconds",
            "How long the input's last stable offset has stayed behind the high watermark without "
            "moving, per partition (0 when nothing waits past it).",
            ["topic", "partition"],
            registry=r,
        )
        self.assigned = Gauge(f"{p}_assigned_partitions", "Partitions assigned to this instance.", registry=r)
        self.paused = Gauge(f"{p}_paused", "1 while input is paused for backpressure.", registry=r)
        self.queue_depth = Gauge(f"{p}_queue_windows", "Windows waiting for the engine.", registry=r)
        self.ready = Gauge(
            f"{p}_ready", "1 once the engine is loaded and partitions are assigned.", registry=r
        )
        self.model = Info(f"{p}_model", "The model being served.", registry=r)
        # --- per model on the stream (``models:``; the single model is "default") ---
        self.model_predictions = Counter(
            f"{p}_model_predictions",
            "Hops each model ran, by where they went: published (output or shadow topic) or "
            "reference (the primary's hops of a canary's entities, for agreement only).",
            ["model", "role", "use"],
            registry=r,
        )
        self.model_engine_time = Histogram(
            f"{p}_model_engine_seconds",
            "Wall time of one engine call, per model.",
            ["model"],
            buckets=ENGINE_BUCKETS_S,
            registry=r,
        )
        self.model_batch_size = Histogram(
            f"{p}_model_batch_size",
            "Windows per engine call, per model.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.model_latency = ModelBatchHistogram(
            f"{p}_model_event_to_publish_seconds",
            "Event time of a window's last sample to its prediction handed to the producer, per model.",
            LATENCY_BUCKETS_S,
            r,
        )
        self.model_agreement = Counter(
            f"{p}_model_agreement_hops",
            "Hops of a shadow or canary compared with the primary's hop of the same entity and "
            "seq: result same or different label.",
            ["model", "result"],
            registry=r,
        )
        self.model_abs_diff = Summary(
            f"{p}_model_score_abs_diff",
            "Mean absolute difference of a shadow's or canary's published scores from the "
            "primary's, per compared hop.",
            ["model"],
            registry=r,
        )
        self.model_info = Info(
            f"{p}_served_model", "Each model on the stream, its role and version.", ["model"], registry=r
        )
        self.control_messages = Counter(
            f"{p}_control_messages",
            "Control messages applied (input.control_messages), by kind: reset or set-state.",
            ["kind"],
            registry=r,
        )
        # Every known label value starts at zero, so each series exists from the first scrape
        # and rate() over it is defined before the first event.
        for family, values in (
            (self.invalid, INVALID_REASONS),
            (self.dropped, DROP_REASONS),
            (self.resets, RESET_REASONS),
            (self.evicted, EVICT_REASONS),
            (self.rebalances, REBALANCE_KINDS),
            (self.kafka_errors, KAFKA_OPS),
            (self.control_messages, CONTROL_KINDS),
        ):
            for v in values:
                family.labels(v)

    def entities(self, in_memory: int, on_disk: int) -> None:
        self.active_entities.set(in_memory)
        self.disk_entities.set(on_disk)

    def keep_partitions(self, assigned: set[tuple[str, str]]) -> None:
        """Remove the per-partition series of partitions not in ``assigned`` ((topic, partition)
        pairs): a revoked partition must not keep its last value, nor an alert firing on it."""
        for gauge in (self.lag, self.unstable_records, self.lso_stuck):
            series = {
                (sample.labels["topic"], sample.labels["partition"])
                for family in gauge.collect()
                for sample in family.samples
            }
            for topic, partition in series - assigned:
                gauge.remove(topic, partition)
