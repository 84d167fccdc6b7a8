"""Sink.publish: one prediction per window, keyed by entity, on the partition the default
partitioner would pick (computed once per entity, not per prediction), in the document of the
model's head (classification, regression, anomaly; schema versions 2 and 1)."""

import json
from importlib.resources import files

import jsonschema
import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from kafka.partitioner.default import DefaultPartitioner, murmur2

from stream_infer.errors import ModelError
from stream_infer.kafka.kafka_python import KafkaPythonProducer
from stream_infer.model.heads import Head, make_head
from stream_infer.pipeline.sink import Sink
from stream_infer.records import WindowBatch
from tests.reference import published

SCHEMA = json.loads((files("stream_infer") / "schemas" / "prediction.schema.json").read_text())


class FakeProducer:
    """kafka-python's producer as the sink sees it: its own key partitioning, no network."""

    key_partitions = KafkaPythonProducer.key_partitions

    def __init__(self, partitions=(0, 1, 2), partitioner=None):
        self.config = {"partitioner": partitioner or DefaultPartitioner()}
        self.partitions = set(partitions)
        self.sent = []
        self._partition_of = {}
        self._sorted_partitions = []

    def partitions_for(self, topic):
        return self.partitions

    def produce(self, topic, key, value, partition=None, headers=None):
        self.sent.append((topic, key, value, partition))


def chunk(entities, seqs):
    n = len(entities)
    return WindowBatch(
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
            "v": 2,
            "entity": e,
            "seq": s,
            "event_time_ms": 1000 + s,
            "emit_time_ms": int(emit[0]),
            "head": "classification",
            "label": ["a", "b"][int(sc.argmax())],
            "scores": pytest.approx(published(sc).tolist(), abs=1e-6),
            "model": "m@1",
        }
        jsonschema.validate(doc, SCHEMA)


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


def _docs(head: Head, y: np.ndarray) -> list[dict]:
    p = FakeProducer()
    Sink(p, "out", "dlq", "cl", "m@1", head).publish(
        chunk([f"e{i}" for i in range(len(y))], range(len(y))), y
    )
    return [orjson.loads(v) for _, _, v, _ in p.sent]


@settings(max_examples=60, deadline=None)
@given(
    y=hnp.arrays(
        np.float32, st.tuples(st.integers(1, 8), st.integers(1, 6)), elements=st.floats(-80, 80, width=32)
    ),
    top_k=st.integers(0, 8),
    logits=st.booleans(),
)
def test_classification_documents_are_probabilities_that_validate(
    y: np.ndarray, top_k: int, logits: bool
) -> None:
    labels = tuple(f"c{j}" for j in range(y.shape[1]))
    for doc, row in zip(_docs(Head("classification", labels, top_k=top_k, logits=logits), y), y, strict=True):
        jsonschema.validate(doc, SCHEMA)
        assert sum(doc["scores"]) == pytest.approx(1.0, abs=1e-5)
        assert doc["scores"][labels.index(doc["label"])] == max(doc["scores"])
        assert doc["label"] == labels[int(row.argmax())]
        assert ("logits" in doc) == logits and (not logits or doc["logits"] == row.tolist())
        if top_k:
            assert [t["label"] for t in doc["top_k"]][0] == doc["label"]
            assert len(doc["top_k"]) == min(top_k, len(labels))
            got = [t["score"] for t in doc["top_k"]]
            assert got == sorted(got, reverse=True)
        else:
            assert "top_k" not in doc


def test_schema_version_1_publishes_the_original_document_exactly() -> None:
    y = np.array([[-3.1, 6.2], [2.0, 1.0]], np.float32)
    docs = _docs(Head("classification", ("a", "b"), schema_version=1), y)
    v1 = json.loads((files("stream_infer") / "schemas" / "prediction.v1.schema.json").read_text())
    for doc, row in zip(docs, y, strict=True):
        jsonschema.validate(doc, v1)
        assert set(doc) == {"entity", "seq", "event_time_ms", "emit_time_ms", "scores", "label", "model"}
        assert doc["scores"] == row.tolist()
    with pytest.raises(ModelError, match="schema_version 1 is for classification"):
        Head("regression", ("x+1",), schema_version=1)


def test_regression_and_anomaly_documents() -> None:
    y = np.array([[315.5, 316.25], [1.0, -2.0]], np.float32)
    docs = _docs(make_head(["co2+1", "co2+2"], {"kind": "regression", "horizon": 2}), y)
    for doc, row in zip(docs, y, strict=True):
        jsonschema.validate(doc, SCHEMA)
        assert doc["head"] == "regression" and doc["values"] == {"co2+1": row[0], "co2+2": row[1]}
    head = make_head(["score"], {"kind": "anomaly", "threshold": 0.5})
    docs = _docs(head, np.array([[0.75], [0.5], [-1.0]], np.float32))
    for doc in docs:
        jsonschema.validate(doc, SCHEMA)
    assert [d["anomaly"] for d in docs] == [True, False, False]
    assert {d["threshold"] for d in docs} == {0.5}


@pytest.mark.parametrize(
    ("labels", "head", "error"),
    [
        (["a"], {"kind": "ranking"}, "head kind must be one of"),
        (["score"], {"kind": "anomaly"}, "needs a finite number as head.threshold"),
        (["score"], {"kind": "anomaly", "threshold": float("nan")}, "finite number"),
        (["s1", "s2"], {"kind": "anomaly", "threshold": 1.0}, "one output"),
        ([], {"kind": "regression"}, "names no output"),
        (["x+1", "x+1"], {"kind": "regression"}, "names an output twice"),
    ],
)
def test_bad_heads_are_refused_in_one_line(labels: list[str], head: dict, error: str) -> None:
    with pytest.raises(ModelError, match=error):
        make_head(labels, head)
