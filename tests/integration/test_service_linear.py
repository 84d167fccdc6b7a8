"""The running service against the real broker, with the LinearEngine (known reference)."""

import json
import urllib.request
from importlib.resources import files

import jsonschema
import numpy as np
import pytest

from stream_infer.model.card import ModelCard
from stream_infer.testing import LinearEngine
from tests.reference import published
from tests.streaming import RunningService, predictions, produce_json, read_topic, settings_for

pytestmark = pytest.mark.integration

W, K, F = 4, 2, 3


def card() -> ModelCard:
    return ModelCard(
        name="lin",
        version="1",
        kind="sensor",
        window=W,
        hop=K,
        sample_shape=[F],
        labels=["a", "b"],
        lstm_layers=1,
        hidden_size=4,
    )


def series(n_entities: int, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"ent-{i}": rng.normal(size=(n, F)).astype(np.float32) for i in range(n_entities)}


def messages(data: dict[str, np.ndarray], per_message: int = 1):
    n = len(next(iter(data.values())))
    for start in range(0, n, per_message):
        for e, x in data.items():
            chunk = [
                {"seq": i, "ts": 1_700_000_000_000 + i, "values": x[i].tolist()}
                for i in range(start, min(n, start + per_message))
            ]
            yield e, chunk if per_message > 1 else chunk[0]


def reference(data):
    eng = LinearEngine((W, F))
    out = {}
    for e, x in data.items():
        wins = np.stack([x[i : i + W] for i in range(0, len(x) - W + 1, K)])
        out[e] = eng.reference(wins)
    return out


@pytest.mark.parametrize("per_message", [1, 5])
def test_every_hop_gets_one_prediction_equal_to_the_reference(kafka_bootstrap, new_topic, per_message):
    topic = new_topic("lin", partitions=3)
    data = series(12, 21)
    s = settings_for(kafka_bootstrap, topic, batcher={"max_batch": 16, "max_wait_ms": 5})
    n_hops = (21 - W) // K + 1
    with RunningService(s, engine=LinearEngine((W, F)), card=card()) as rs:
        produce_json(kafka_bootstrap, topic, messages(data, per_message))
        recs = read_topic(kafka_bootstrap, s.topics.output, 12 * n_hops)
        port = rs.service.metrics_port
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    preds = predictions(recs)
    assert len(preds) == 12 * n_hops
    ref = reference(data)
    by_entity = {}
    for p, r in zip(preds, recs, strict=True):
        assert r.key.decode() == p["entity"]
        by_entity.setdefault(p["entity"], []).append(p)
    schema = json.loads((files("stream_infer") / "schemas" / "prediction.schema.json").read_text())
    for p in preds:
        jsonschema.validate(p, schema)
    for e, ps in by_entity.items():
        assert [p["seq"] for p in ps] == list(range(W - 1, 21, K))  # per-entity order kept
        np.testing.assert_allclose([p["scores"] for p in ps], published(ref[e]), atol=1e-5)
        assert all(p["model"] == "lin@1" for p in ps)
    count = [ln for ln in body.splitlines() if ln.startswith("stream_infer_event_to_publish_seconds_count")]
    assert float(count[0].split()[-1]) == len(preds)


def test_bad_messages_go_to_the_dead_letter_topic_and_good_ones_are_served(kafka_bootstrap, new_topic):
    topic = new_topic("bad", partitions=2)
    data = series(4, 9, seed=1)
    good = list(messages(data))
    bad = [
        ("ent-0", b"not json"),
        ("ent-1", {"seq": 100, "values": [1.0, 2.0]}),  # wrong shape
        ("ent-2", {"seq": 101, "values": [1.0, "x", 3.0]}),  # wrong dtype
        ("ent-3", {"seq": 102, "values": [1.0, 1e39, 3.0]}),  # overflows float32: non-finite
        ("ent-3", {"seq": 103, "ts": "yesterday", "values": [1.0, 2.0, 3.0]}),  # bad timestamp
        (None, {"seq": 1, "values": [1.0, 2.0, 3.0]}),  # missing key
    ]
    mixed = []
    for i, m in enumerate(good):
        mixed.append(m)
        if i % 6 == 0 and bad:
            mixed.append(bad.pop())
    mixed.extend(bad)
    s = settings_for(kafka_bootstrap, topic)
    n_hops = (9 - W) // K + 1
    with RunningService(s, engine=LinearEngine((W, F)), card=card()) as rs:
        produce_json(kafka_bootstrap, topic, mixed)
        recs = read_topic(kafka_bootstrap, s.topics.output, 4 * n_hops)
        dlq = read_topic(kafka_bootstrap, s.dead_letter_topic, 6)
        body = urllib.request.urlopen(f"http://127.0.0.1:{rs.service.metrics_port}/metrics").read().decode()
    preds = predictions(recs)
    ref = reference(data)
    assert len(preds) == 4 * n_hops
    for p in preds:
        idx = (p["seq"] - (W - 1)) // K
        np.testing.assert_allclose(p["scores"], published(ref[p["entity"]][idx]), atol=1e-5)
    reasons = sorted(dict(r.headers)["error.reason"].decode() for r in dlq)
    assert reasons == sorted(
        ["undecodable", "wrong_shape", "wrong_dtype", "non_finite", "bad_timestamp", "missing_key"]
    )
    for r in dlq:
        h = dict(r.headers)
        assert h["source.topic"].decode() == topic and int(h["source.offset"]) >= 0
    assert 'stream_infer_invalid_events_total{reason="wrong_shape"} 1.0' in body
