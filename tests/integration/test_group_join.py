"""kafka-python's group consumer, as the client layer makes it, keeps up with rebalances triggered by metadata changes, even
when a join finishes after the poll that started it stopped waiting (see ``stream_infer.kafka.kafka_python``)."""

from __future__ import annotations

import time

import pytest
from kafka import KafkaAdminClient, TopicPartition
from kafka.admin import NewPartitions

from stream_infer.kafka import make_consumer
from tests.streaming import settings_for

pytestmark = pytest.mark.integration


def _poll_until(consumer, cond, timeout_s: float = 30) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        consumer.poll(timeout_ms=100)
        if cond():
            return True
    return False


def test_a_join_answered_after_the_poll_gave_up_is_applied(kafka_bootstrap, new_topic):
    topic = new_topic("join-race", partitions=1)
    consumer = make_consumer(settings_for(kafka_bootstrap, topic, kafka={"client": "kafka-python"}))
    coord = consumer._coordinator
    try:
        consumer.subscribe([topic])
        assert not consumer.group_settled()  # not joined yet
        assert _poll_until(consumer, lambda: consumer.assignment() == {TopicPartition(topic, 0)})
        assert consumer.group_settled()

        # A second partition: the consumer's metadata learns of it, which calls for a rebalance.
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        admin.create_partitions({topic: NewPartitions(total_count=2)})
        admin.close()
        deadline = time.monotonic() + 30
        while coord._metadata_snapshot.get(topic) != {0, 1}:
            assert time.monotonic() < deadline, "the consumer never saw the new partition"
            consumer._client.cluster.request_update()
            time.sleep(0.2)

        # The poll starts the join and gives up at once; the answer arrives while nobody waits.
        consumer.poll(timeout_ms=0)
        assert coord._join_task is not None, "the poll did not start a join"
        deadline = time.monotonic() + 30
        while not coord._join_task.is_done:
            assert time.monotonic() < deadline, "the join never finished"
            time.sleep(0.05)

        both = {TopicPartition(topic, 0), TopicPartition(topic, 1)}
        assert _poll_until(consumer, lambda: consumer.assignment() == both, timeout_s=20), (
            f"the finished join was dropped: still assigned {consumer.assignment()}"
        )
    finally:
        consumer.close(autocommit=False)
