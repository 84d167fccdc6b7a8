"""Dead letters always fit their topic: a created dead-letter topic takes the largest input
message, an existing smaller one gets truncated values, and a record the producer refuses is
sent again shorter instead of stopping the service."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer
from kafka.admin import ConfigResource, ConfigResourceType

from stream_infer.config import Settings, load_settings
from stream_infer.errors import ConfigError, SinkError
from stream_infer.kafka import make_producer, max_request_bytes
from stream_infer.kafka.errors import MessageSizeTooLargeError
from stream_infer.kafka.kafka_python import KafkaPythonProducer
from stream_infer.kafka.topics import (
    dead_letter_limit_bytes,
    dead_letter_rule,
    ensure_topics,
    max_dead_letter_value_bytes,
)
from stream_infer.pipeline.sink import DEAD_LETTER_HEADROOM_BYTES, Sink
from stream_infer.records import InvalidMessage
from tests.streaming import client_choice

BIG = 300 * 1024  # a 300 KiB bad message


def settings(bootstrap: str, input_topic: str, client: str | None = None, **topics: Any) -> Settings:
    name = f"dl-{uuid.uuid4().hex[:8]}"  # a client id of its own (kafka-python 3 shares one per id)
    chosen = {"client": client} if client else client_choice()
    return load_settings(
        kafka={
            "bootstrap_servers": bootstrap,
            "client_id": name,
            "group_id": name,
            "startup_timeout_s": 20,
            **chosen,
        },
        topics={"input": input_topic, "output": f"{input_topic}.out", **topics},
    )


def invalid(
    value: bytes | None, key: bytes | None = b"ent-1", headers: Any = (), offset: int = 7
) -> InvalidMessage:
    return InvalidMessage(
        topic="sensor-events",
        partition=0,
        offset=offset,
        key=key,
        value=value,
        headers=list(headers),
        reason="oversized",
        detail="value larger than input.max_message_bytes",
    )


def topic_max_message_bytes(bootstrap: str, topic: str) -> int:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id=f"dl-describe-{uuid.uuid4().hex[:6]}")
    try:
        res = ConfigResource(ConfigResourceType.TOPIC, topic, ["max.message.bytes"])
        described = admin.describe_configs([res], config_filter="all")
        return int(described["topic"][topic]["max.message.bytes"]["value"])
    finally:
        admin.close()


def read_all(bootstrap: str, topic: str, expect: int, timeout_s: float = 30) -> list[Any]:
    c = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        client_id=f"dl-reader-{uuid.uuid4().hex[:6]}",
        group_id=None,
        auto_offset_reset="earliest",
    )
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < expect and time.monotonic() < deadline:
        for recs in c.poll(timeout_ms=200).values():
            out.extend(recs)
    c.close()
    return sorted(out, key=lambda r: r.offset)


def headers_of(record: Any) -> dict[str, bytes]:
    return dict(record.headers)


@pytest.mark.integration
def test_a_created_dead_letter_topic_takes_the_largest_input_message(kafka_bootstrap: str) -> None:
    s = settings(kafka_bootstrap, f"dl-fresh-{uuid.uuid4().hex[:8]}")
    assert "will be created with max.message.bytes" in dead_letter_rule(s)
    try:
        ensure_topics(s)
        created = topic_max_message_bytes(kafka_bootstrap, s.dead_letter_topic)
        assert created >= s.input.max_message_bytes + DEAD_LETTER_HEADROOM_BYTES
        # Nothing a valid-sized bad message carries is cut.
        assert dead_letter_limit_bytes(s) == s.input.max_message_bytes
        assert dead_letter_rule(s) == (
            f"dead letters: topic {s.dead_letter_topic} max.message.bytes {created}; "
            f"values over {s.input.max_message_bytes} bytes are truncated"
        )
    finally:
        admin = KafkaAdminClient(
            bootstrap_servers=kafka_bootstrap, client_id=f"dl-del-{uuid.uuid4().hex[:6]}"
        )
        with contextlib.suppress(Exception):
            admin.delete_topics([s.topics.input, s.topics.output, s.dead_letter_topic, s.changelog_topic])
        admin.close()


@pytest.mark.integration
def test_a_small_existing_dead_letter_topic_gets_truncated_values_not_a_failed_flush(
    kafka_bootstrap: str, new_topic: Any, caplog: pytest.LogCaptureFixture
) -> None:
    dlq = new_topic("dl-small", 1, **{"max.message.bytes": "65536"})
    s = settings(kafka_bootstrap, new_topic("dl-in"), dead_letter=dlq)
    with caplog.at_level(logging.WARNING, logger="stream_infer.kafka.topics"):
        limit = dead_letter_limit_bytes(s)
        assert dead_letter_limit_bytes(s) == limit  # asked twice, warned once
    warnings = [r.getMessage() for r in caplog.records if r.name == "stream_infer.kafka.topics"]
    assert len(warnings) == 1 and dlq in warnings[0] and "65536" in warnings[0] and "truncated" in warnings[0]
    assert 0 < limit <= 65536 - 1024
    assert f"max.message.bytes 65536; values over {limit} bytes are truncated" in dead_letter_rule(s)

    value = bytes(range(256)) * (BIG // 256)
    many_headers = [(f"h{i}", b"x" * 1000) for i in range(40)]  # 40 KB of original headers
    producer = make_producer(s)
    sink = Sink(producer, s.topics.output, dlq, s.changelog_topic, "m@1", ["a"], dead_letter_max_bytes=limit)
    try:
        assert sink.dead_letter([invalid(value), invalid(b"small", headers=many_headers, offset=8)]) == 2
        sink.flush(30)  # the broker took both
    finally:
        sink.close()
    big, small = read_all(kafka_bootstrap, dlq, 2)
    assert big.value == value[:limit]
    assert headers_of(big)["error.value_truncated"] == b"307200"
    assert headers_of(big)["error.reason"] == b"oversized" and headers_of(big)["source.offset"] == b"7"
    assert small.value == b"small" and "error.value_truncated" not in headers_of(small)
    assert headers_of(small)["error.headers_dropped"] == b"40" and "h0" not in headers_of(small)


@pytest.mark.integration
@pytest.mark.parametrize(("max_request_size", "kept"), [(150_000, 98_304), (20_000, None)])
def test_a_dead_letter_the_producer_refuses_is_sent_shorter(
    kafka_bootstrap: str, new_topic: Any, max_request_size: int, kept: int | None
) -> None:
    """kafka-python raises MessageSizeTooLargeError from ``send`` for a record over its
    ``max_request_size``: the dead letter goes again with a tenth of the limit, then no value."""
    dlq = new_topic("dl-refused")
    producer = KafkaPythonProducer(
        bootstrap_servers=kafka_bootstrap,
        client_id=f"dl-tiny-{uuid.uuid4().hex[:6]}",
        max_request_size=max_request_size,
        acks="all",
    )
    sink = Sink(producer, "out", dlq, "cl", "m@1", ["a"])  # the default limit, 960 KiB
    value = b"v" * BIG
    try:
        sink.dead_letter([invalid(value), invalid(value, key=None, offset=8)])
        sink.flush(30)
    finally:
        sink.close()
    keyed, keyless = read_all(kafka_bootstrap, dlq, 2)
    for rec in (keyed, keyless):
        assert headers_of(rec)["error.value_truncated"] == b"307200"
    if kept is None:
        assert keyed.value is None and keyless.value == b""  # a record needs a key or a value
    else:
        assert keyed.value == value[:kept] and keyless.value == value[:kept]


@pytest.mark.integration
def test_librdkafka_refusing_a_dead_letter_gets_it_sent_shorter(kafka_bootstrap: str, new_topic: Any) -> None:
    """librdkafka refuses a record over ``message.max.bytes`` in ``produce``: the same retry."""
    dlq = new_topic("dl-refused-rd")
    s = load_settings(
        kafka={"bootstrap_servers": kafka_bootstrap, "client": "confluent-kafka"},
        input={"max_message_bytes": 100_000},  # the producer takes records up to 1 MiB
    )
    limit = max_request_bytes(s) + 200_000  # more than the producer takes in one record
    sink = Sink(make_producer(s), "out", dlq, "cl", "m@1", ["a"], dead_letter_max_bytes=limit)
    value = b"v" * (limit + 10)
    try:
        sink.dead_letter([invalid(value)])
        sink.flush(30)
    finally:
        sink.close()
    (rec,) = read_all(kafka_bootstrap, dlq, 1)
    assert rec.value == value[: limit // 10]
    assert headers_of(rec)["error.value_truncated"] == str(len(value)).encode()


class _RefusingProducer:
    def __init__(self) -> None:
        self.tries: list[int | None] = []

    def produce(self, topic: str, key: Any, value: Any, partition: Any = None, headers: Any = None) -> None:
        self.tries.append(None if value is None else len(value))
        raise MessageSizeTooLargeError("refused")


def test_a_producer_that_refuses_even_an_empty_dead_letter_is_a_sink_error() -> None:
    producer = _RefusingProducer()
    sink = Sink(producer, "out", "dlq", "cl", "m@1", ["a"], dead_letter_max_bytes=100_000)  # type: ignore[arg-type]
    with pytest.raises(SinkError, match="refuses"):
        sink.dead_letter([invalid(b"v" * BIG)])
    assert producer.tries == [100_000, 10_000, None]


def test_the_value_limit_leaves_the_headroom_and_respects_the_request_size() -> None:
    s = load_settings()
    assert max_dead_letter_value_bytes(s, s.input.max_message_bytes + DEAD_LETTER_HEADROOM_BYTES) == (
        s.input.max_message_bytes
    )
    assert max_dead_letter_value_bytes(s, 1_048_576) == 1_048_576 - DEAD_LETTER_HEADROOM_BYTES
    assert max_dead_letter_value_bytes(s, 65_536) == 32_768  # small topics: half for the value
    huge = 10 * max_request_bytes(s)
    assert max_dead_letter_value_bytes(s, huge) == max_request_bytes(s) - DEAD_LETTER_HEADROOM_BYTES


@pytest.mark.integration
@pytest.mark.parametrize("client", ["kafka-python", "confluent-kafka"])
def test_the_request_size_rule_is_the_producers(kafka_bootstrap: str, client: str) -> None:
    s = settings(kafka_bootstrap, "unused", client=client)
    producer = make_producer(s)
    try:
        key = "max_request_size" if client == "kafka-python" else "message.max.bytes"
        assert producer.config[key] == max_request_bytes(s)  # type: ignore[attr-defined]
    finally:
        producer.close()


@pytest.mark.integration
def test_a_missing_input_topic_is_created_with_the_configured_partitions_and_said_so(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    s = settings(kafka_bootstrap, f"in-fresh-{uuid.uuid4().hex[:8]}", input_partitions=3)
    with caplog.at_level(logging.WARNING, logger="stream_infer.kafka.topics"):
        assert ensure_topics(s) == 3
    said = [r.getMessage() for r in caplog.records if "did not exist" in r.getMessage()]
    assert len(said) == 1 and s.topics.input in said[0] and "3 partitions" in said[0], said
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stream_infer.kafka.topics"):
        assert ensure_topics(s) == 3  # it exists now: nothing created, nothing said
    assert not [r for r in caplog.records if "did not exist" in r.getMessage()]
    off = s.model_copy(
        update={"topics": s.topics.model_copy(update={"create": False, "input": "none-" + s.topics.input})}
    )
    with pytest.raises(ConfigError, match="does not exist"):
        ensure_topics(off)
