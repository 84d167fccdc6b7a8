"""Several models on one stream, in process (the mechanics; through the broker:
tests/integration/test_models.py): routing, publishing per role, agreement, each model's
changelog namespace and its restore."""

from __future__ import annotations

import orjson
import pytest
from prometheus_client import CollectorRegistry

from stream_infer.config import load_settings
from stream_infer.errors import ConfigError
from stream_infer.kafka.types import ConsumedRecord
from stream_infer.model.card import ModelCard
from stream_infer.pipeline.routing import PRIMARY, Router, bucket
from stream_infer.service import Service
from stream_infer.state.models import PLAIN, by_model, split_key, state_key
from stream_infer.testing import LinearEngine, ListProducer, linear_card

W, F, L, HD = 3, 2, 1, 4


def card(name: str) -> ModelCard:
    return linear_card(name, W, F, L, HD)


MODELS = [
    {"name": "main", "artifact": "unused-a", "role": "primary"},
    {"name": "can", "artifact": "unused-c", "role": "canary", "fraction": 0.3},
    {"name": "shad", "artifact": "unused-s", "role": "shadow"},
]
SLOPES = {"main": 0.5, "can": 0.7, "shad": 0.5}  # the shadow computes what the primary does


def make_service(models=MODELS, registry=None) -> tuple[Service, ListProducer]:
    s = load_settings(
        None,
        topics={"input": "in", "output": "out"},
        models=models,
        batcher={"max_wait_ms": 0, "max_batch": 16},
        metrics={"port": 0},
    )
    engines = {m["name"]: LinearEngine((W, F), L, HD, a=SLOPES[m["name"]]) for m in models}
    cards = {m["name"]: card(m["name"]) for m in models}
    primary = models[0]["name"]
    svc = Service(
        s, engine=engines[primary], registry=registry or CollectorRegistry(), card=cards[primary], cards=cards
    )
    producer = ListProducer()
    svc.wire(engines[primary], producer, engines=engines)
    svc.workers.start()
    return svc, producer


def feed(svc: Service, entities: list[str], n: int, start: int = 0) -> None:
    recs = [
        ConsumedRecord(
            "in",
            0,
            start * 1000 + i * len(entities) + j,
            0,
            e.encode(),
            orjson.dumps({"seq": i, "ts": 1000 + i, "values": [i % 5, j % 3]}),
        )
        for i in range(start, start + n)
        for j, e in enumerate(entities)
    ]
    svc.ingest(recs)
    svc.drain()


def docs(producer: ListProducer, topic: str) -> list[dict]:
    return [orjson.loads(r.value) for r in producer.on(topic)]


def test_routing_is_stable_and_takes_the_fractions():
    r = Router([0.2, 0.1])
    ents = [f"dev-{i}" for i in range(20_000)]
    first = r.route(ents)
    assert (Router([0.2, 0.1]).route(ents) == first).all(), "a restart routes an entity elsewhere"
    share = [(first == k).mean() for k in (0, 1, PRIMARY)]
    assert abs(share[0] - 0.2) < 0.015 and abs(share[1] - 0.1) < 0.015 and abs(share[2] - 0.7) < 0.015
    # Raising a fraction only adds entities to that canary.
    wider = Router([0.25]).route(ents)
    assert set(map(int, (wider == 0).nonzero()[0])) >= set(
        map(int, (Router([0.2]).route(ents) == 0).nonzero()[0])
    )
    assert 0.0 <= bucket("x") < 1.0


def test_state_keys_name_the_model_and_default_keeps_the_plain_key():
    assert state_key(PLAIN, b"dev-1") == b"dev-1" and split_key(b"dev-1") == (PLAIN, b"dev-1")
    k = state_key("shadow-b", b"dev\x001")
    assert split_key(k) == ("shadow-b", b"dev\x001")
    assert by_model({k: (3, b"v"), b"e": (1, None)}) == {
        "shadow-b": {b"dev\x001": (3, b"v")},
        PLAIN: {b"e": (1, None)},
    }


def test_each_role_publishes_where_it_should_and_agreement_is_counted():
    reg = CollectorRegistry()
    svc, producer = make_service(registry=reg)
    ents = [f"dev-{i}" for i in range(60)]
    try:
        feed(svc, ents, 8)
    finally:
        svc.workers.stop()
    canary = {e for e, r in zip(ents, svc.lanes.router.route(ents), strict=True) if r == 0}
    assert 0 < len(canary) < len(ents)
    out = docs(producer, "out")
    hops = [(d["entity"], d["seq"]) for d in out]
    want = {(e, s) for e in ents for s in range(W - 1, 8)}
    assert len(hops) == len(set(hops)) and set(hops) == want, "the output must hold every hop once"
    for d in out:
        assert d["model"].startswith("can@" if d["entity"] in canary else "main@")
    shadow = docs(producer, "out.shadow.shad")
    assert {(d["entity"], d["seq"]) for d in shadow} == want and len(shadow) == len(want)
    assert all(d["model"].startswith("shad@") for d in shadow)
    # The shadow computes what the primary does: full agreement; the canary differs in scores.
    same = reg.get_sample_value(
        "stream_infer_model_agreement_hops_total", {"model": "shad", "result": "same"}
    )
    assert same == len(want)
    assert reg.get_sample_value("stream_infer_model_score_abs_diff_sum", {"model": "shad"}) == pytest.approx(
        0, abs=1e-6
    )
    n_can = reg.get_sample_value("stream_infer_model_score_abs_diff_count", {"model": "can"})
    assert n_can == len(canary) * (8 - W + 1)
    assert reg.get_sample_value("stream_infer_model_score_abs_diff_sum", {"model": "can"}) > 0
    ref = reg.get_sample_value(
        "stream_infer_model_predictions_total", {"model": "main", "role": "primary", "use": "reference"}
    )
    assert ref == n_can
    assert reg.get_sample_value("stream_infer_predictions_total") == len(want)


def test_every_model_checkpoints_and_restores_its_own_state():
    svc, producer = make_service()
    ents = [f"dev-{i}" for i in range(30)]
    try:
        feed(svc, ents, 5)
        recs = svc.states.snapshot_dirty()
    finally:
        svc.workers.stop()
    latest = {k: (p, v) for k, v, p in recs}
    split = by_model(latest)
    canary = {e for e, r in zip(ents, svc.lanes.router.route(ents), strict=True) if r == 0}
    assert set(split) == {"main", "can", "shad"}
    assert {k.decode() for k in split["main"]} == set(ents) == {k.decode() for k in split["shad"]}
    assert {k.decode() for k in split["can"]} == canary
    # A new instance restores each model's state; the next hops continue it.
    svc2, producer2 = make_service()
    try:
        r = svc2.states.restore(latest, 0.0)
        assert r.restored == 2 * len(ents) + len(canary) and r.not_restorable == 0
        feed(svc2, ents, 2, start=5)
    finally:
        svc2.workers.stop()
    svc3, producer3 = make_service()
    try:
        feed(svc3, ents, 7)
    finally:
        svc3.workers.stop()
    # Restored, then two more samples == one instance that saw all seven.
    for topic in ("out", "out.shadow.shad"):
        later = {(d["entity"], d["seq"]): d["scores"] for d in docs(producer2, topic)}
        whole = {(d["entity"], d["seq"]): d["scores"] for d in docs(producer3, topic) if d["seq"] >= 5}
        assert later.keys() == whole.keys() and all(
            later[k] == pytest.approx(whole[k], abs=1e-6) for k in later
        )


def test_promoting_a_shadow_restores_the_state_it_built():
    svc, _ = make_service()
    ents = [f"dev-{i}" for i in range(10)]
    try:
        feed(svc, ents, 5)
        latest = {k: (p, v) for k, v, p in svc.states.snapshot_dirty()}
    finally:
        svc.workers.stop()
    promoted = [{"name": "shad", "artifact": "unused-s", "role": "primary"}]
    svc2, producer = make_service(promoted)
    try:
        assert svc2.states.restore(latest, 0.0).restored == len(ents)
        feed(svc2, ents, 1, start=5)
    finally:
        svc2.workers.stop()
    out = docs(producer, "out")
    assert {(d["entity"], d["seq"]) for d in out} == {(e, 5) for e in ents}, (
        "no warm-up: the next hop at once"
    )


@pytest.mark.parametrize(
    "models, why",
    [
        ([{"name": "a", "artifact": "x"}, {"name": "b", "artifact": "y"}], "exactly one primary"),
        ([{"name": "a", "artifact": "x"}, {"name": "a", "artifact": "y", "role": "shadow"}], "unique"),
        (
            [{"name": "a", "artifact": "x"}, {"name": "b", "artifact": "y", "role": "canary"}],
            "needs a fraction",
        ),
        (
            [
                {"name": "a", "artifact": "x"},
                {"name": "b", "artifact": "y", "role": "canary", "fraction": 0.6},
                {"name": "c", "artifact": "y", "role": "canary", "fraction": 0.5},
            ],
            "add up",
        ),
        ([{"name": "a", "artifact": "x", "fraction": 0.2}], "fraction is for canaries"),
        ([{"name": "a b", "artifact": "x"}], "pattern"),
    ],
)
def test_bad_models_are_refused_in_one_line(models, why):
    with pytest.raises(ConfigError, match=why):
        load_settings(None, models=models)


def test_the_entity_document_shows_every_models_state():
    svc, _ = make_service()
    ents = [f"dev-{i}" for i in range(40)]
    try:
        feed(svc, ents, 4)
        canary = next(e for e, r in zip(ents, svc.lanes.router.route(ents), strict=True) if r == 0)
        other = next(e for e, r in zip(ents, svc.lanes.router.route(ents), strict=True) if r != 0)
        status, doc = svc.describe_entity(canary)
        assert status == 200 and set(doc["models"]) == {"main", "can", "shad"}
        assert all(doc["models"][m]["last_seq"] == 3 for m in doc["models"])
        assert doc["models"]["can"]["role"] == "canary" and "values" not in doc["models"]["can"]["states"][0]
        _, doc = svc.describe_entity(other, tensors=True)
        assert doc["models"]["can"] is None and "values" in doc["models"]["shad"]["states"][0]
    finally:
        svc.workers.stop()


def test_agreement_forgets_the_oldest_hops_past_its_bound():
    import numpy as np

    from stream_infer.metrics import Metrics
    from stream_infer.model.heads import Head
    from stream_infer.pipeline.agreement import Agreement

    agreement = Agreement(Metrics(CollectorRegistry()), max_pending=10)
    head = Head("classification", ("a", "b"))
    y = np.zeros((100, 2), np.float32)
    agreement.offer("s", True, head, [f"e{i}" for i in range(100)], list(range(100)), y)
    assert len(agreement._pending) == 10
    # the newest still meet their other side
    agreement.offer("s", False, head, ["e99"], [99], y[:1])
    assert agreement.metrics.model_agreement.labels("s", "same")._value.get() == 1
