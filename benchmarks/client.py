"""The Kafka clients' own ceilings on the same broker: produce-only and consume-only messages/s
for kafka-python (what the service uses) and confluent-kafka (librdkafka) for comparison.

    python -m benchmarks.client [--quick]

Messages are the replayer's BasicMotions JSON samples (one sample per message, ~130 bytes),
keyed by entity. Producers use the service's settings (acks=all, idempotence, linger 5 ms,
256 KiB batches); consumers the service's fetch settings and ``read_committed``. kafka-python's
consumer checks each batch's CRC32C; it is timed with the CRC check on and off, and the JSON
records whether the C ``crc32c`` module is installed (without it the check runs in pure Python).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks.common import (
    ARTIFACTS,
    OUT_DIR,
    Report,
    Stat,
    bench_main,
    ensure_broker,
    figure,
    new_topic_name,
    save,
    topics,
)


def crc_impl() -> str:
    from kafka.record import util

    return "c (crc32c module)" if getattr(util, "crc32c_c", None) is not None else "pure python"


def kafka_python_consume(servers: str, topic: str, n: int, settings: Any, check_crcs: bool = True) -> float:
    from kafka import KafkaConsumer, TopicPartition

    k = settings.kafka
    c = KafkaConsumer(
        bootstrap_servers=servers.split(","),
        client_id="bench-kp-consume",
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        max_poll_records=k.max_poll_records,
        fetch_max_bytes=k.fetch_max_bytes,
        max_partition_fetch_bytes=k.max_partition_fetch_bytes,
        check_crcs=check_crcs,
    )
    try:
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or ())]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        got = 0
        t0 = 0.0  # set at the first record: timed while records flow, as the service is
        deadline = time.monotonic() + 300
        while got < n and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=100).values():
                t0 = t0 or time.monotonic()
                got += len(recs)
                for r in recs:
                    r.value  # noqa: B018  (touch it, as any consumer would)
        if got < n:
            raise TimeoutError(f"kafka-python consumed {got} of {n}")
        return n / (time.monotonic() - t0)
    finally:
        c.close()


def confluent_consume(servers: str, topic: str, n: int) -> float:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer(
        {
            "bootstrap.servers": servers,
            "group.id": f"bench-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "fetch.max.bytes": 52_428_800,
            "max.partition.fetch.bytes": 4_194_304,
        }
    )
    try:
        md = c.list_topics(topic, timeout=10)
        parts = sorted(md.topics[topic].partitions)
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        got = 0
        t0 = 0.0  # set at the first record: timed while records flow, as the service is
        deadline = time.monotonic() + 300
        while got < n and time.monotonic() < deadline:
            msgs = c.consume(num_messages=10_000, timeout=0.1)
            if msgs:
                t0 = t0 or time.monotonic()
                for m in msgs:
                    if m.error() is None:
                        m.value()
                        got += 1
        if got < n:
            raise TimeoutError(f"confluent-kafka consumed {got} of {n}")
        return n / (time.monotonic() - t0)
    finally:
        c.close()


def kafka_python_produce(topic: str, payloads: list[tuple[bytes, bytes]], settings: Any) -> float:
    from stream_infer.kafka.kafka_python import KafkaPythonProducer

    p = KafkaPythonProducer(**settings.kafka.client_kwargs("producer"), acks="all", enable_idempotence=True)
    try:
        p.partitions_for(topic)  # metadata first: not part of the timing
        t0 = time.monotonic()
        for key, value in payloads:
            p.send(topic, key=key, value=value)
        p.flush()
        return len(payloads) / (time.monotonic() - t0)
    finally:
        p.close()


def confluent_produce(servers: str, topic: str, payloads: list[tuple[bytes, bytes]]) -> float:
    from confluent_kafka import Producer

    p = Producer(
        {
            "bootstrap.servers": servers,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "batch.size": 262_144,
            "queue.buffering.max.messages": 2_000_000,
        }
    )
    p.list_topics(topic, timeout=10)
    t0 = time.monotonic()
    for i, (key, value) in enumerate(payloads):
        while True:
            try:
                p.produce(topic, value=value, key=key)
                break
            except BufferError:
                p.poll(0.01)
        if i % 1000 == 0:
            p.poll(0)
    if p.flush(120):
        raise RuntimeError("confluent-kafka did not deliver everything")
    return len(payloads) / (time.monotonic() - t0)


def run(
    quick: bool = False, repeats: int | None = None, out_dir: Path = OUT_DIR, plots: bool = True
) -> Report:
    servers = ensure_broker()
    repeats = repeats or (1 if quick else 3)
    case = harness.Case(1000, 1, 50 if quick else 400)
    report = Report(
        "client",
        {
            "messages_consumed": case.messages,
            "messages_produced": case.messages // 4,
            "message": "one BasicMotions JSON sample, keyed by entity",
            "entities": case.entities,
            "partitions": harness.PARTITIONS,
            "repeats": repeats,
            "kafka_python_crc32c": crc_impl(),
            "quick": quick,
        },
        columns=["client", "operation", "messages/s", "spread"],
    )
    art = ARTIFACTS / "basicmotions-cnnlstm"
    src = new_topic_name("client-src")
    dst = new_topic_name("client-dst")
    with topics(servers, [src, dst], harness.PARTITIONS):
        harness.load_case(servers, src, case)
        settings = harness.service_settings(servers, src, art)
        payloads = [
            (k, v)
            for k, v, _ in harness.records(
                harness.sensor_data(case.entities, case.samples_per_entity), "json", 1
            )
        ]
        results: dict[tuple[str, str], list[float]] = {}
        for _ in range(repeats):
            for key, fn in (
                (
                    ("kafka-python", "consume"),
                    lambda: kafka_python_consume(servers, src, case.messages, settings),
                ),
                (
                    ("kafka-python", "consume, check_crcs=False"),
                    lambda: kafka_python_consume(servers, src, case.messages, settings, check_crcs=False),
                ),
                (("confluent-kafka", "consume"), lambda: confluent_consume(servers, src, case.messages)),
                (
                    ("kafka-python", "produce"),
                    lambda: kafka_python_produce(dst, payloads[: len(payloads) // 4], settings),
                ),
                (
                    ("confluent-kafka", "produce"),
                    lambda: confluent_produce(servers, dst, payloads[: len(payloads) // 4]),
                ),
            ):
                results.setdefault(key, []).append(fn())
    for (client, op), vals in results.items():
        st = Stat(vals)
        report.rows.append(
            {
                "client": client,
                "operation": op,
                "messages/s": st.median,
                "spread": f"{min(vals):,.0f}..{max(vals):,.0f}",
            }
        )
    med = {k: Stat(v).median for k, v in results.items()}
    report.ratios["confluent / kafka-python, consume"] = (
        med[("confluent-kafka", "consume")] / med[("kafka-python", "consume")]
    )
    report.ratios["confluent / kafka-python, produce"] = (
        med[("confluent-kafka", "produce")] / med[("kafka-python", "produce")]
    )
    report.notes.append(f"kafka-python's CRC32C: {crc_impl()}")
    if plots:
        fig, ax, path = figure(report, "ceilings", out_dir)
        labels = [f"{r['client']}\n{r['operation']}" for r in report.rows]
        ax.barh(labels, [r["messages/s"] for r in report.rows], color="tab:blue")
        ax.set_xlabel("messages / s (median)")
        ax.set_title("Kafka client ceilings on the local broker")
        ax.grid(True, axis="x", alpha=0.3)
        save(report, fig, path)
    return report


def main(argv: list[str] | None = None) -> int:
    return bench_main(__doc__, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
