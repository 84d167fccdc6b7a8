"""Sink.publish: one prediction per window, keyed by entity, on the partition the default
partitioner would pick (computed once per entity, not per prediction)."""

import numpy as np
import orjson
from kafka.partitioner.default import DefaultPartitioner, murmur2

from stream_infer.batcher import Chunk
from stream_infer.sink import Sink


class _Future:
    def add_errback(self, fn):
        return self


class FakeProducer:
    def __init__(self, partitions=(0, 1, 2), partitioner=None):
        self.config = {"partitioner": partitioner or DefaultPartitioner()}
        self.partitions = set(partitions)
        self.sent = []

    def partitions_for(self, topic):
        return self.partitions

    def send(self, topic, key=None, value=None, partition=None, headers=None):
        self.sent.append((topic, key, value, partition))
        return _Future()


def chunk(entities, seqs):
    n = len(entities)
    return Chunk(
        np.arange(n),
        list(entities),
        np.asarray(seqs, np.int64),
        np.asarray([1000 + s for s in seqs], np.int64),
        np.zeros(n, bool),
        np.zeros((n, 2, 1), np.float32),
        np.zeros(n),
    )


def default_partition(key: bytes, n: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % n


def test_predictions_carry_the_documented_fields_and_the_default_partition():
    p = FakeProducer()
    sink = Sink(p, "out", "dlq", "cl", "m@1", ["a", "b"])
    ents = [f"sensor-{i:05d}" for i in range(50)]
    scores = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32)
    emit = sink.publish(chunk(ents, range(50)), scores)
    assert len(p.sent) == 50 and (emit == emit[0]).all()
    for (topic, key, value, part), e, s, sc in zip(p.sent, ents, range(50), scores, strict=True):
        doc = orjson.loads(value)
        assert topic == "out" and key == e.encode()
        assert part == default_partition(key, 3)
        assert doc == {
            "entity": e,
            "seq": s,
            "event_time_ms": 1000 + s,
            "emit_time_ms": int(emit[0]),
            "scores": sc.tolist(),
            "label": ["a", "b"][int(sc.argmax())],
            "model": "m@1",
        }


def test_partition_cache_follows_a_change_in_the_partition_count():
    p = FakeProducer(partitions=(0, 1))
    sink = Sink(p, "out", "dlq", "cl", "m@1", ["a", "b"])
    ents = [f"e{i}" for i in range(40)]
    sink.publish(chunk(ents, range(40)), np.zeros((40, 2), np.float32))
    p.partitions = {0, 1, 2, 3, 4}
    sink.publish(chunk(ents, range(40)), np.zeros((40, 2), np.float32))
    parts = [s[3] for s in p.sent]
    assert parts[:40] == [default_partition(e.encode(), 2) for e in ents]
    assert parts[40:] == [default_partition(e.encode(), 5) for e in ents]


def test_a_custom_partitioner_is_left_to_the_producer():
    class Mine(DefaultPartitioner):
        pass

    p = FakeProducer(partitioner=Mine())
    sink = Sink(p, "out", "dlq", "cl", "m@1", ["a", "b"])
    sink.publish(chunk(["x", "y"], [1, 2]), np.zeros((2, 2), np.float32))
    assert [s[3] for s in p.sent] == [None, None]
