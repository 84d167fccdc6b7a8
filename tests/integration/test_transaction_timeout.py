"""A producer that dies inside a transaction holds the partition's last stable offset (LSO):
``read_committed`` readers stop there until the broker aborts the transaction, after the
producer's ``transaction_timeout_ms`` plus the broker's abort check. ``stream_infer.kafka.kafka_python.stable_offset``
(the source of ``stream_infer_input_unstable_records`` and ``..._lso_stuck_seconds``) shows it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import ProducerFencedError
from prometheus_client import CollectorRegistry

from stream_infer.kafka import kafka_python
from stream_infer.kafka.kafka_python import StableOffset
from stream_infer.metrics import Metrics
from stream_infer.pipeline.source import Source

pytestmark = pytest.mark.integration

TIMEOUT_MS = 3_000
# The broker's transaction.abort.timed.out.transaction.cleanup.interval.ms (default, kept by
# deploy/local/kafka.sh): how often it looks for transactions past their timeout.
ABORT_CHECK_S = 10.0


def _poll_until(
    consumer: KafkaConsumer, tp: TopicPartition, ok: Callable[[StableOffset], bool], timeout_s: float
) -> tuple[StableOffset, int]:
    """Poll until ``stable_offset`` satisfies ``ok``; returns it and the records polled meanwhile."""
    deadline = time.monotonic() + timeout_s
    polled = 0
    last = None
    while time.monotonic() < deadline:
        polled += sum(len(recs) for recs in consumer.poll(timeout_ms=200).values())
        last = kafka_python.stable_offset(consumer, tp)
        if last is not None and ok(last):
            return last, polled
    raise AssertionError(f"not reached in {timeout_s} s; last seen: {last}")


def _gauges(consumer: KafkaConsumer, tp: TopicPartition) -> tuple[float | None, float | None]:
    """The service's metric update run on ``consumer``: (unstable records, LSO stuck seconds)."""
    registry = CollectorRegistry()
    Source.update_lag(SimpleNamespace(consumer=consumer, metrics=Metrics(registry)))  # type: ignore[arg-type]
    labels = {"topic": tp.topic, "partition": str(tp.partition)}
    return (
        registry.get_sample_value("stream_infer_input_unstable_records", labels),
        registry.get_sample_value("stream_infer_input_lso_stuck_seconds", labels),
    )


@pytest.fixture
def topic_partition(new_topic: Callable[..., str]) -> TopicPartition:
    return TopicPartition(new_topic("lso"), 0)


@pytest.fixture
def reader(kafka_bootstrap: str, topic_partition: TopicPartition) -> Iterator[KafkaConsumer]:
    consumer = kafka_python.KafkaPythonConsumer(
        bootstrap_servers=kafka_bootstrap,
        client_id=f"lso-reader-{topic_partition.topic}",
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    consumer.assign([topic_partition])
    consumer.seek_to_beginning(topic_partition)
    yield consumer
    consumer.close()


def test_a_transaction_left_open_holds_the_lso_until_the_broker_times_it_out(
    kafka_bootstrap: str, topic_partition: TopicPartition, reader: KafkaConsumer
) -> None:
    tp = topic_partition
    producer = KafkaProducer(
        bootstrap_servers=kafka_bootstrap,
        client_id=f"lso-producer-{tp.topic}",
        transactional_id=f"lso-{tp.topic}",
        transaction_timeout_ms=TIMEOUT_MS,
    )
    try:
        producer.init_transactions()
        producer.begin_transaction()
        for i in range(3):
            producer.send(tp.topic, f"committed-{i}".encode(), partition=0)
        producer.commit_transaction()
        # 3 records and the commit marker: all stable, all readable.
        stable, polled = _poll_until(reader, tp, lambda s: s.high_watermark == 4, 20)
        assert stable == StableOffset(4, 4, 0.0) and stable.unstable_records == 0
        assert polled == 3

        # A member killed mid-transaction: records written, neither committed nor aborted.
        begun = time.monotonic()
        producer.begin_transaction()
        for i in range(5):
            producer.send(tp.topic, f"abandoned-{i}".encode(), partition=0)
        producer.flush()
        stable, polled = _poll_until(reader, tp, lambda s: s.high_watermark == 9, 20)
        assert (stable.last_stable_offset, stable.unstable_records) == (4, 5)
        assert polled == 0 and reader.position(tp) == 4  # read_committed stops at the LSO
        time.sleep(1.0)  # nothing changes on the partition, so no fetch response mentions it
        later, polled = _poll_until(reader, tp, lambda s: True, 1)
        assert later.unstable_records == 5 and later.stuck_s >= stable.stuck_s + 1.0 and polled == 0
        records, stuck_s = _gauges(reader, tp)
        assert records == 5 and stuck_s is not None and stuck_s >= later.stuck_s

        # The broker aborts it at its first check past the timeout: an abort marker, LSO = HW.
        horizon_s = TIMEOUT_MS / 1000 + ABORT_CHECK_S + 10.0  # + slack for a loaded host
        stable, polled = _poll_until(reader, tp, lambda s: s.unstable_records == 0, horizon_s)
        unblocked_after_s = time.monotonic() - begun
        assert stable == StableOffset(10, 10, 0.0)
        assert polled == 0 and reader.position(tp) == 10  # the aborted records are never read
        assert _gauges(reader, tp) == (0, 0)
        assert TIMEOUT_MS / 1000 <= unblocked_after_s <= horizon_s

        # The abandoned producer was fenced by the abort: it cannot commit that transaction.
        with ThreadPoolExecutor(1) as pool, pytest.raises(ProducerFencedError):
            pool.submit(producer.commit_transaction).result(timeout=30)
    finally:
        producer.close(timeout=1)
