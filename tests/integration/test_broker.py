import pytest
from kafka import KafkaConsumer, KafkaProducer

pytestmark = pytest.mark.integration


def test_produce_and_consume_through_the_real_broker(kafka_bootstrap, new_topic):
    topic = new_topic("roundtrip", partitions=2)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for i in range(100):
        producer.send(topic, key=f"k{i % 7}".encode(), value=str(i).encode())
    producer.flush()
    producer.close()
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
        consumer_timeout_ms=10_000,
    )
    got = []
    for r in consumer:
        got.append(int(r.value))
        if len(got) == 100:
            break
    consumer.close()
    got.sort()
    assert got == list(range(100))
