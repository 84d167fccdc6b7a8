"""Both Kafka clients against the real broker, side by side: a key lands on the same partition
whichever client publishes it (switching ``kafka.client`` does not move an entity's predictions
or state), and records read by either client are the same."""

from __future__ import annotations

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.partitioner.default import murmur2

from stream_infer.kafka import make_producer
from tests.streaming import settings_for

pytestmark = pytest.mark.integration

CLIENTS = ["kafka-python", "confluent-kafka"]


@pytest.mark.parametrize("client", CLIENTS)
def test_keys_land_on_the_java_clients_partition(kafka_bootstrap, new_topic, client):
    topic = new_topic("keys", partitions=7)
    s = settings_for(kafka_bootstrap, topic, kafka={"client": client})
    producer = make_producer(s)
    errors: list[BaseException] = []
    producer.on_error = errors.append
    keys = [f"entity-{i:04d}".encode() for i in range(300)]
    parts = producer.key_partitions(topic, keys)
    for k, part in zip(keys, parts, strict=True):
        producer.produce(topic, k, b"v", part)
    producer.flush_within(30)
    producer.close(10)
    assert not errors
    c = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=None, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in range(7)]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    seen: dict[bytes, int] = {}
    while len(seen) < len(keys):
        batch = c.poll(timeout_ms=2000)
        assert batch, f"read {len(seen)} of {len(keys)} records"
        for tp, recs in batch.items():
            seen.update((r.key, tp.partition) for r in recs)
    c.close()
    assert seen == {k: (murmur2(k) & 0x7FFFFFFF) % 7 for k in keys}


@pytest.mark.parametrize("client", CLIENTS)
def test_the_group_consumer_reads_every_record_in_order(kafka_bootstrap, new_topic, client):
    from stream_infer.kafka import make_consumer

    topic = new_topic("order", partitions=3)
    s = settings_for(kafka_bootstrap, topic, kafka={"client": client})
    producer = make_producer(settings_for(kafka_bootstrap, topic))
    sent = [(f"e{i % 11}".encode(), str(i).encode()) for i in range(2000)]
    for k, v in sent:
        producer.produce(topic, k, v, None, [("h", b"1")])
    producer.flush_within(30)
    producer.close(10)
    consumer = make_consumer(s)
    consumer.subscribe([topic])
    got: dict[bytes, list[bytes]] = {}
    try:
        for _ in range(300):
            for tp, recs in consumer.poll(timeout_ms=200).items():
                assert [r.offset for r in recs] == sorted(r.offset for r in recs)
                for r in recs:
                    assert (
                        r.topic == topic and r.partition == tp.partition and list(r.headers) == [("h", b"1")]
                    )
                    got.setdefault(r.key, []).append(r.value)
            if sum(map(len, got.values())) >= len(sent):
                break
    finally:
        consumer.close(autocommit=False)
    want: dict[bytes, list[bytes]] = {}
    for k, v in sent:
        want.setdefault(k, []).append(v)
    assert got == want
