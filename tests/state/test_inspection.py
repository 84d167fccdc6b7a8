"""Entity state you can see: murmur2 partitions, the JSON view (no tensor values unless asked,
404 with a reason), the .npz export/import round trip, the transform hook, shape refusals, the
HTTP route, the sink's bounded last predictions and the service's answer on the source thread."""

import json
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import orjson
import pytest
from kafka.partitioner.default import murmur2 as kafka_murmur2
from prometheus_client import CollectorRegistry

from stream_infer.config import load_settings
from stream_infer.errors import StateError
from stream_infer.health import Health, serve_http
from stream_infer.kafka.types import ConsumedRecord
from stream_infer.metrics import Metrics
from stream_infer.service import Service
from stream_infer.state import codec
from stream_infer.state.inspection import (
    decode_any,
    entity_document,
    export_arrays,
    import_records,
    load_npz,
    load_transform,
    model_shape,
    murmur2,
    partition_for,
    save_npz,
    show_lines,
    state_names,
)
from stream_infer.state.store import EntityView, ModelShape
from stream_infer.testing import LinearEngine, ListProducer, linear_card

W, F, L, HD = 3, 2, 1, 4
SHAPE = ModelShape("old@1", W, 1, (F,), (L, HD))


def changelog_of(n: int, shape: ModelShape = SHAPE, parts: int = 3) -> dict[bytes, tuple[int, bytes | None]]:
    rng = np.random.default_rng(1)
    ents = [f"ent-{i}" for i in range(n)]
    h = rng.normal(size=(L, n, HD)).astype(np.float32)
    c = rng.normal(size=(L, n, HD)).astype(np.float32)
    values = codec.encode_many(
        shape.model_id,
        np.arange(n, dtype=np.int64) + 10,
        np.arange(n, dtype=np.int64) + 1000,
        np.arange(n, dtype=np.int64) + 5,
        np.arange(n) % 2 == 0,
        rng.normal(size=(n, W, F)).astype(np.float32),
        h,
        c,
        specs=shape.states,
        anchor=np.full(n, -1, np.int64),
        offset=np.arange(n, dtype=np.int64) + 100,
    )
    out: dict[bytes, tuple[int, bytes | None]] = {
        e.encode(): (partition_for(e, parts), v) for e, v in zip(ents, values, strict=True)
    }
    out[b"gone"] = (0, None)  # a tombstone: not exported
    return out


def test_murmur2_is_kafkas():
    for key in [b"", b"a", b"ab", b"abc", b"abcd", b"entity-12345", bytes(range(256))]:
        assert murmur2(key) == kafka_murmur2(key)
    assert partition_for("ent-7", 5) == (kafka_murmur2(b"ent-7") & 0x7FFFFFFF) % 5


def test_npz_round_trip_decodes_to_the_same_records(tmp_path):
    latest = changelog_of(7)
    arrays, skipped = export_arrays(latest, SHAPE)
    assert skipped == 0 and len(arrays["entity"]) == 7
    assert arrays["state.h0"].shape == (7, L, HD) and arrays["tail"].shape == (7, W, F)
    path = tmp_path / "states.npz"
    save_npz(path, arrays)
    loaded = load_npz(path)
    new = ModelShape("new@2", W, 1, (F,), (L, HD))
    records = import_records(loaded, new, 3)
    assert len(records) == 7
    for key, value, part in records:
        old_part, old_value = latest[key]
        assert part == old_part
        got = codec.decode(value, "new@2", W, (F,), new.states)
        want = decode_any(old_value, SHAPE)  # type: ignore[arg-type]
        assert (got.last_seq, got.count, got.fresh, got.event_ms, got.anchor, got.offset) == (
            want.last_seq,
            want.count,
            want.fresh,
            want.event_ms,
            want.anchor,
            want.offset,
        )
        np.testing.assert_array_equal(got.tail, want.tail)
        for a, b in zip(got.states, want.states, strict=True):
            np.testing.assert_array_equal(a, b)


def test_export_leaves_out_records_of_other_shapes():
    latest = changelog_of(2)
    other = ModelShape("x@1", W, 1, (F,), (L, HD + 1))
    arrays, skipped = export_arrays(latest, other)
    assert skipped == 2 and len(arrays["entity"]) == 0 and arrays["state.h0"].shape == (0, L, HD + 1)


def pad_hidden(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A transform hook: the hidden size grows by 2 (new units start at zero)."""
    out = dict(arrays)
    for k in ("state.h0", "state.c0"):
        out[k] = np.pad(arrays[k], ((0, 0), (0, 0), (0, 2)))
    return out


def test_transform_hook_and_shape_refusal():
    arrays, _ = export_arrays(changelog_of(3), SHAPE)
    bigger = ModelShape("big@1", W, 1, (F,), (L, HD + 2))
    with pytest.raises(
        StateError, match=r"state.h0 has shape \[1, 4\] per entity, model big@1 needs \[1, 6\]"
    ):
        import_records(arrays, bigger, 3)
    fn = load_transform(f"{__name__}:pad_hidden")
    records = import_records(fn(arrays), bigger, 3)
    got = codec.decode(records[0][1], "big@1", W, (F,), bigger.states)
    np.testing.assert_array_equal(got.h[:, :HD], arrays["state.h0"][0])
    assert not got.h[:, HD:].any()
    with pytest.raises(StateError, match="module:function"):
        load_transform("nocolon")
    with pytest.raises(StateError, match="no_such"):
        load_transform(f"{__name__}:no_such")
    missing = {k: v for k, v in arrays.items() if k != "last_seq"}
    with pytest.raises(StateError, match="lacks last_seq"):
        import_records(missing, SHAPE, 3)


def test_show_lines_print_norms_and_values_only_when_asked():
    latest = changelog_of(1)
    st = decode_any(latest[b"ent-0"][1], SHAPE)  # type: ignore[arg-type]
    lines = show_lines("ent-0", 1, st, state_names(SHAPE.states), False)
    assert lines[0] == "entity ent-0  partition 1  model old@1"
    assert "last_seq 10  count 5  fresh true" in lines[1]
    assert lines[2].startswith("state h0  shape [1, 4]  norm ")
    assert len(lines) == 4
    assert len(show_lines("ent-0", 1, st, state_names(SHAPE.states), True)) == 6


def test_entity_document_no_values_unless_asked_and_404():
    view = EntityView("e", "memory", 2, 41, 7, 1234, False, 0.5)
    h = np.array([[3.0, 4.0]], np.float32)
    status, doc = entity_document("e", 2, True, view, [("h0", h)], {"seq": 41})
    assert status == 200
    assert doc["last_seq"] == 41 and doc["samples_in_segment"] == 7 and doc["tier"] == "memory"
    assert doc["last_prediction"] == {"seq": 41}
    assert doc["states"] == [{"name": "h0", "shape": [1, 2], "norm": 5.0}]
    _, doc = entity_document("e", 2, True, view, [("h0", h)], None, with_tensors=True)
    assert doc["states"][0]["values"] == [[3.0, 4.0]]
    status, doc = entity_document("x", 1, False, None, [])
    assert status == 404 and doc["owned"] is False and "assigned elsewhere" in doc["reason"]
    status, doc = entity_document("x", 1, True, None, [])
    assert status == 404 and "this pod owns its partition" in doc["reason"]


def _get(port: int, path: str) -> tuple[int, dict]:
    try:
        r = urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10)
        return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_http_route_only_when_enabled():
    reg = CollectorRegistry()
    Metrics(reg)
    asked: list[tuple[str, bool]] = []

    def lookup(entity: str, tensors: bool) -> tuple[int, dict]:
        asked.append((entity, tensors))
        return (200, {"entity": entity}) if entity == "a b" else (404, {"entity": entity, "reason": "no"})

    server = serve_http(Health(), 0, "127.0.0.1", reg, lookup)
    off = serve_http(Health(), 0, "127.0.0.1", reg)
    try:
        assert _get(server.server_port, "/entities/a%20b?tensors=1") == (200, {"entity": "a b"})
        assert _get(server.server_port, "/entities/zz")[0] == 404
        assert asked == [("a b", True), ("zz", False)]
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{off.server_port}/entities/a", timeout=10)
            raise AssertionError("the route is off by default")
        except urllib.error.HTTPError as e:
            assert e.code == 404
    finally:
        server.shutdown()
        off.shutdown()


CARD = linear_card("lin", W, F, L, HD)


def make_service(entity_api: bool = True, max_entities: int = 10) -> tuple[Service, ListProducer]:
    s = load_settings(
        None,
        topics={"input": "in", "output": "out"},
        entities={"max_entities": max_entities},
        batcher={"max_wait_ms": 0, "max_batch": 16},
        metrics={"port": 0, "entity_api": entity_api},
    )
    engine = LinearEngine(tuple(CARD.input_shape), L, HD)
    svc = Service(s, engine=engine, registry=CollectorRegistry(), card=CARD)
    producer = ListProducer()
    svc.wire(engine, producer)
    svc.worker.start()
    return svc, producer


def feed(svc: Service, entity: str, n: int, partition: int = 0) -> None:
    recs = [
        ConsumedRecord(
            "in",
            partition,
            i,
            0,
            entity.encode(),
            orjson.dumps({"seq": i, "ts": 1000 + i, "values": [i, 1]}),
        )
        for i in range(n)
    ]
    svc.ingest(recs)
    svc.drain()


def test_service_describes_an_entity_from_the_source_thread():
    svc, producer = make_service()
    try:
        feed(svc, "dev-1", 5)
        svc._input_partitions = 3
        status, doc = svc.describe_entity("dev-1")
        assert status == 200
        assert doc["partition"] == partition_for("dev-1", 3) and doc["owned"] is False
        assert doc["last_seq"] == 4 and doc["tier"] == "memory" and doc["samples_in_segment"] == 5
        last = [orjson.loads(r.value) for r in producer.on("out") if r.key == b"dev-1"][-1]
        assert doc["last_prediction"] == last and last["seq"] == 4
        assert [t["name"] for t in doc["states"]] == ["h0", "c0"]
        assert all(t["shape"] == [L, HD] and "values" not in t for t in doc["states"])
        assert doc["states"][0]["norm"] > 0
        _, doc = svc.describe_entity("dev-1", tensors=True)
        assert np.linalg.norm(doc["states"][0]["values"]) == pytest.approx(doc["states"][0]["norm"], rel=1e-5)
        assert svc.describe_entity("nobody")[0] == 404
        # the HTTP thread's request is answered by the loop's turn (here: this thread)
        answer: list = []
        t = threading.Thread(target=lambda: answer.append(svc.entity_lookup("dev-1", False)))
        t.start()
        deadline = time.monotonic() + 60
        while not answer and time.monotonic() < deadline:
            svc._serve_entities()
            t.join(0.01)
        t.join(10)
        assert answer and answer[0][0] == 200 and answer[0][1]["last_seq"] == 4
    finally:
        svc.worker.stop()


def test_sink_keeps_last_predictions_bounded_and_only_when_enabled():
    svc, _ = make_service(entity_api=False)
    try:
        feed(svc, "a", 4)
        assert svc.sink.last_predictions is None
    finally:
        svc.worker.stop()
    svc, _ = make_service(entity_api=True, max_entities=1)  # keeps 2
    try:
        for e in ("a", "b", "c"):
            feed(svc, e, 4)
        assert set(svc.sink.last_predictions or {}) == {"b", "c"}
    finally:
        svc.worker.stop()


def test_model_shape_of_a_card():
    m = model_shape(CARD, "other@9")
    assert m.model_id == "other@9" and m.window == W and m.states == CARD.states
