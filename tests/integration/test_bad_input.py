"""Bad input and bad state never stop the service: malformed messages of every kind go to the
dead-letter topic with their reason and origin, a failing engine batch is isolated, and state
written by another model version is reset instead of restored. In-process, with the
LinearEngine (a real stateful step with a hand-computable reference)."""

from __future__ import annotations

import io
from collections import Counter
from typing import Any

import numpy as np
import orjson
import pytest
from kafka import KafkaProducer
from PIL import Image

from stream_infer.model.card import ModelCard
from stream_infer.testing import LinearEngine
from tests.reference import published
from tests.streaming import RunningService, predictions, read_topic, settings_for

pytestmark = pytest.mark.integration

W, K, F = 4, 2, 3
TS0 = 1_700_000_000_000


def sensor_card(version: str = "1") -> ModelCard:
    return ModelCard(
        name="lin",
        version=version,
        kind="sensor",
        window=W,
        hop=K,
        sample_shape=[F],
        labels=["a", "b"],
        lstm_layers=1,
        hidden_size=4,
    )


def frame_card() -> ModelCard:
    return ModelCard(
        name="linframe",
        version="1",
        kind="frame",
        window=1,
        hop=1,
        sample_shape=[1, 8, 8],
        labels=["a", "b"],
        lstm_layers=1,
        hidden_size=4,
    )


def ref_hops(card: ModelCard, x: np.ndarray, first_seq: int = 0) -> dict[int, np.ndarray]:
    """seq of each hop's last sample -> LinearEngine output, stepped from zero state."""
    eng = LinearEngine(tuple(card.input_shape))
    wins = np.stack([x[i : i + card.window] for i in range(0, len(x) - card.window + 1, card.hop)])
    out = eng.reference(wins)
    return {first_seq + card.window - 1 + i * card.hop: out[i] for i in range(len(out))}


Msg = tuple[bytes | None, bytes | None, list[tuple[str, bytes]], str | None]  # key, value, headers, reason


def _good_json(e: str, i: int, v: np.ndarray) -> Msg:
    return e.encode(), orjson.dumps({"seq": i, "ts": TS0 + i, "values": v.tolist()}), [], None


def _bad_json(i: int, rng: np.random.Generator) -> Msg:
    """One malformed JSON-format message of kind ``i % 16``, with the reason it must get."""
    key = f"ent-{i % 5}".encode()  # the good entities' keys: a bad message must not touch them
    ok = [1.0, 2.0, 3.0]
    kind = i % 16
    doc: Any
    if kind == 0:
        return key, bytes(rng.integers(0, 256, 40, dtype=np.uint8)) + b"\xff{", [], "undecodable"
    if kind == 1:
        return key, None, [], "undecodable"  # a tombstone
    if kind == 2:
        doc, reason = {"seq": 5000 + i, "values": [1.0, 2.0]}, "wrong_shape"
    elif kind == 3:
        doc, reason = [], "wrong_shape"
    elif kind == 4:
        doc, reason = {"seq": 5000 + i, "values": [1.0, "x", 3.0]}, "wrong_dtype"
    elif kind == 5:
        doc, reason = {"seq": 5000 + i, "values": [1.0, None, True]}, "wrong_dtype"
    elif kind == 6:
        doc, reason = {"seq": 5000 + i, "values": [1.0, 1e39, 3.0]}, "non_finite"  # float32 overflow
    elif kind == 7:
        doc, reason = {"seq": 5000 + i, "values": [-1e300, 0.0, 3.0]}, "non_finite"
    elif kind == 8:
        doc, reason = {"seq": 5000 + i, "values": ok, "pad": "x" * 3000}, "oversized"
    elif kind == 9:
        return None, orjson.dumps({"seq": 1, "values": ok}), [], "missing_key"
    elif kind == 10:
        return b"\xff\xfe\xfd", orjson.dumps({"seq": 1, "values": ok}), [], "bad_key"
    elif kind == 11:
        doc, reason = {"seq": 5000 + i, "ts": "yesterday", "values": ok}, "bad_timestamp"
    elif kind == 12:
        doc, reason = {"seq": 5000 + i, "ts": -5, "values": ok}, "bad_timestamp"
    elif kind == 13:
        doc, reason = {"seq": -1, "values": ok}, "bad_seq"
    elif kind == 14:
        doc, reason = {"seq": "7", "values": ok}, "bad_seq"
    else:
        doc = [{"seq": j, "values": [1, 2, 3]} for j in range(51)]
        reason = "too_many_samples"
    return key, orjson.dumps(doc), [("trace", b"t-%d" % i)], reason


def _good_f32(e: str, i: int, v: np.ndarray) -> Msg:
    return e.encode(), v.astype("<f4").tobytes(), [("seq", b"%d" % i), ("ts", b"%d" % (TS0 + i))], None


def _bad_f32(i: int, rng: np.random.Generator) -> Msg:
    key = f"ent-{i % 5}".encode()
    hdr = [("seq", b"%d" % (5000 + i)), ("ts", b"%d" % TS0)]
    row = np.array([1.0, 2.0, 3.0], "<f4")
    kind = i % 8
    if kind == 0:
        return key, row.tobytes()[:7], hdr, "wrong_shape"
    if kind == 1:
        return key, b"", hdr, "wrong_shape"
    if kind == 2:
        return key, np.array([1.0, np.nan, 3.0], "<f4").tobytes(), hdr, "non_finite"
    if kind == 3:
        return key, np.array([np.inf, 2.0, 3.0], "<f4").tobytes(), hdr, "non_finite"
    if kind == 4:
        return key, row.tobytes(), [("ts", b"1")], "bad_seq"  # no seq header
    if kind == 5:
        return key, row.tobytes(), [("seq", b"abc")], "bad_seq"
    if kind == 6:
        return key, row.tobytes(), [("seq", b"%d" % (5000 + i)), ("ts", b"later")], "bad_timestamp"
    return key, np.tile(row, 400).tobytes(), hdr, "oversized"


def _png(a: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a.astype(np.uint8), mode="L").save(buf, format=fmt)
    return buf.getvalue()


def _good_image(e: str, i: int, v: np.ndarray) -> Msg:
    return e.encode(), _png(v[0]), [("seq", b"%d" % i), ("ts", b"%d" % (TS0 + i))], None


def _bad_image(i: int, rng: np.random.Generator) -> Msg:
    key = f"ent-{i % 5}".encode()
    hdr = [("seq", b"%d" % (5000 + i)), ("ts", b"%d" % TS0)]
    img = _png(np.full((8, 8), 9))
    kind = i % 5
    if kind == 0:
        return key, bytes(rng.integers(0, 256, 64, dtype=np.uint8)), hdr, "bad_image"
    if kind == 1:
        return key, img[: len(img) // 2], hdr, "bad_image"  # truncated PNG
    if kind == 2:
        return key, _png(np.full((8, 8), 9), "GIF"), hdr, "bad_image"  # not JPEG or PNG
    if kind == 3:
        return key, img, [("ts", b"1")], "bad_seq"
    return None, img, hdr, "missing_key"


FORMATS = {
    # format: (card, good message, bad message, number of bad messages, per-sample shape)
    "json": (sensor_card(), _good_json, _bad_json, 10_000, (F,)),
    "f32": (sensor_card(), _good_f32, _bad_f32, 2_000, (F,)),
    "image": (frame_card(), _good_image, _bad_image, 300, (1, 8, 8)),
}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_malformed_flood_goes_to_the_dead_letter_topic_and_good_entities_match_the_reference(
    kafka_bootstrap, new_topic, fmt
):
    card, good, bad, n_bad, shape = FORMATS[fmt]
    rng = np.random.default_rng(7)
    n, n_ent = 41, 5
    if fmt == "image":
        data = {f"ent-{e}": rng.integers(0, 256, (n, *shape)).astype(np.float32) for e in range(n_ent)}
    else:
        data = {f"ent-{e}": rng.normal(size=(n, *shape)).astype(np.float32) for e in range(n_ent)}
    goods = [good(e, i, x[i]) for i in range(n) for e, x in data.items()]
    bads = [bad(i, rng) for i in range(n_bad)]
    # interleave: the bad ones spread evenly through the good stream
    order = sorted(
        [(j * len(bads) / len(goods), 0, m) for j, m in enumerate(goods)]
        + [(j, 1, m) for j, m in enumerate(bads)],
        key=lambda t: (t[0], t[1]),
    )
    topic = new_topic(f"flood-{fmt}", partitions=2)
    s = settings_for(
        kafka_bootstrap,
        topic,
        input={"format": fmt, "max_message_bytes": 2048, "max_samples_per_message": 50},
        batcher={"max_batch": 64, "max_wait_ms": 5},
    )
    expected: dict[tuple[int, int], Msg] = {}
    with RunningService(s, engine=LinearEngine(tuple(card.input_shape)), card=card) as rs:
        p = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5, max_request_size=4_000_000)
        futs = [(m, p.send(topic, key=m[0], value=m[1], headers=m[2])) for _, _, m in order]
        p.flush()
        for m, f in futs:
            md = f.get(30)
            if m[3] is not None:
                expected[(md.partition, md.offset)] = m
        p.close()
        n_hops = {e: len(ref_hops(card, x)) for e, x in data.items()}
        recs = read_topic(kafka_bootstrap, s.topics.output, sum(n_hops.values()))
        dlq = read_topic(kafka_bootstrap, s.dead_letter_topic, n_bad, timeout_s=90)
        assert rs.service.worker.error is None and rs.thread.is_alive()
        invalid = {
            sm.labels["reason"]: sm.value
            for sm in rs.registry.collect()
            for sm in sm.samples
            if sm.name == "stream_infer_invalid_events_total"
        }
    # every good hop once, equal to the reference
    got: dict[str, dict[int, Any]] = {}
    for pr in predictions(recs):
        assert pr["seq"] not in got.setdefault(pr["entity"], {}), "duplicate prediction"
        got[pr["entity"]][pr["seq"]] = pr["scores"]
    for e, x in data.items():
        ref = ref_hops(card, x)
        assert sorted(got.get(e, {})) == sorted(ref), e
        np.testing.assert_allclose(
            [got[e][q] for q in sorted(ref)], [published(ref[q]) for q in sorted(ref)], atol=1e-5
        )
    # every bad message in the dead-letter topic, once, with its reason, origin and content
    assert len(dlq) == n_bad
    seen = set()
    for r in dlq:
        h = dict(r.headers)
        assert h["source.topic"].decode() == topic
        where = (int(h["source.partition"]), int(h["source.offset"]))
        assert where in expected and where not in seen, where
        seen.add(where)
        key, value, headers, reason = expected[where]
        assert h["error.reason"].decode() == reason, (where, h["error.detail"])
        assert (r.key, r.value) == (key, value)
        assert [hd for hd in r.headers if not hd[0].startswith(("error.", "source."))] == headers
    by_reason = Counter(m[3] for m in bads)
    assert len(by_reason) == {"json": 10, "f32": 5, "image": 3}[fmt]
    for reason, count in by_reason.items():
        assert invalid.get(reason) == count, reason


def test_engine_failure_is_retried_then_isolated_and_other_entities_are_served(kafka_bootstrap, new_topic):
    topic = new_topic("poison", partitions=1)
    rng = np.random.default_rng(3)
    n = 21
    data = {f"ent-{e}": rng.normal(size=(n, F)).astype(np.float32) for e in range(6)}
    data["poison"] = np.full((n, F), 7.0, np.float32)  # every window's mean is 7.0: the engine fails
    msgs = [
        (e, {"seq": i, "ts": TS0 + i, "values": x[i].tolist()}) for i in range(n) for e, x in data.items()
    ]
    s = settings_for(kafka_bootstrap, topic, batcher={"max_batch": 64, "max_wait_ms": 50})
    engine = LinearEngine((W, F), fail_when=7.0)
    card = sensor_card()
    good_hops = sum(len(ref_hops(card, x)) for e, x in data.items() if e != "poison")
    poison_hops = len(ref_hops(card, data["poison"]))
    with RunningService(s, engine=engine, card=card) as rs:
        p = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=20)
        for e, doc in msgs:
            p.send(topic, key=e.encode(), value=orjson.dumps(doc))
        p.close()
        recs = read_topic(kafka_bootstrap, s.topics.output, good_hops)
        assert rs.service.worker.error is None and rs.thread.is_alive()
        metrics = {sm.name: sm.value for m in rs.registry.collect() for sm in m.samples}
    preds = predictions(recs)
    assert len(preds) == good_hops and all(pr["entity"] != "poison" for pr in preds)
    for pr in preds:
        ref = ref_hops(card, data[pr["entity"]])
        np.testing.assert_allclose(pr["scores"], published(ref[pr["seq"]]), atol=1e-5)
    assert metrics["stream_infer_isolated_windows_total"] == poison_hops
    # each failing batch: one call, one retry, then the halves down to the poisoned window
    assert metrics["stream_infer_engine_errors_total"] >= 2 * poison_hops


def test_state_of_another_model_version_is_reset_not_restored(kafka_bootstrap, new_topic):
    topic = new_topic("version", partitions=2)
    rng = np.random.default_rng(5)
    n = 46
    data = {f"ent-{e}": rng.normal(size=(n, F)).astype(np.float32) for e in range(6)}

    def feed(lo: int, hi: int) -> None:
        p = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
        for i in range(lo, hi):
            for e, x in data.items():
                doc = {"seq": i, "ts": TS0 + i, "values": x[i].tolist()}
                p.send(topic, key=e.encode(), value=orjson.dumps(doc))
        p.close()

    total = 0

    def run(version: str, lo: int, hi: int, hops: int) -> tuple[list[dict[str, Any]], dict[str, float]]:
        """Serve ``version`` while samples [lo, hi) arrive; its predictions and counters."""
        nonlocal total
        total += hops * len(data)
        s = settings_for(kafka_bootstrap, topic)
        with RunningService(s, engine=LinearEngine((W, F)), card=sensor_card(version)) as rs:
            rs.wait_ready()
            feed(lo, hi)
            recs = read_topic(kafka_bootstrap, s.topics.output, total)
            resets = {
                sm.labels.get("reason", ""): sm.value
                for m in rs.registry.collect()
                for sm in m.samples
                if sm.name == "stream_infer_entity_resets_total"
            }
            restored = rs.registry.get_sample_value("stream_infer_state_restored_entities_total")
        assert len(recs) == total
        return [pr for pr in predictions(recs) if lo <= pr["seq"] < hi], {
            **resets,
            "restored": restored or 0.0,
        }

    p1, _ = run("1", 0, 20, 9)  # hops at seq 3, 5, ..., 19
    # Same version after a restart: restored, the hops continue from the carried state.
    p2, m2 = run("1", 20, 30, 5)  # 21, ..., 29: the windows span the restart
    assert m2["restored"] == len(data) and m2.get("state_not_restorable", 0) == 0
    full = {e: ref_hops(sensor_card(), x) for e, x in data.items()}
    for pr in p1 + p2:
        np.testing.assert_allclose(pr["scores"], published(full[pr["entity"]][pr["seq"]]), atol=1e-5)
    # Plus a corrupt record in the changelog; then version 2: neither is restored.
    s = settings_for(kafka_bootstrap, topic)
    p = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    p.send(s.changelog_topic, key=b"junk", value=b"SIST\x01garbage", partition=0)
    p.close()
    p3, m3 = run("2", 30, n, 7)  # from zero: 33, 35, ..., 45
    assert m3["state_not_restorable"] == len(data) + 1
    assert m3["restored"] == 0
    fresh = {e: ref_hops(sensor_card(), x[30:], first_seq=30) for e, x in data.items()}
    assert len(p3) == sum(len(v) for v in fresh.values())
    for pr in p3:
        assert pr["model"] == "lin@2"
        np.testing.assert_allclose(pr["scores"], published(fresh[pr["entity"]][pr["seq"]]), atol=1e-5)
