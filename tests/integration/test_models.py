"""Several models on one stream (docs/models.md), through the real broker and real processes: a
canary and a shadow served beside the primary across a kill -9, and a shadow promoted to primary
with no hop lost or repeated and no warm-up. Every prediction is compared with its model stepped
offline from zero state over the entity's whole stream (the mechanics in process:
tests/pipeline/test_lanes.py)."""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stream_infer.backends import open_engine
from stream_infer.model.card import load_card
from stream_infer.model.datasets import hop_windows
from stream_infer.pipeline.routing import Router
from tests.processes import (
    ServiceProcess,
    StreamFeeder,
    check_delivery,
    committed_offsets,
    entity_streams,
    read_hops,
    service_config,
)
from tests.reference import published

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SAMPLES = 50  # per entity: hops at seq 19, 29, 39, 49 (window 20, hop 10)
ATOL = 1e-4


def _streams(n: int, seed: int) -> dict[str, np.ndarray]:
    return {e: x[:SAMPLES] for e, x in entity_streams(n, 1, seed=seed).items()}


def _reference(artifact: Path, streams: dict[str, np.ndarray]) -> dict[tuple[str, int], np.ndarray]:
    """(entity, seq of the hop's last sample) -> published scores of the model at ``artifact``
    stepped offline hop by hop from zero state over each entity's whole stream (every entity in
    one batch: the engine keeps nothing between calls, each row carries its own state)."""
    card = load_card(artifact)
    entities = list(streams)
    windows = np.stack([hop_windows(x, card.window, card.hop) for x in streams.values()])  # [N, n_hops, W, F]
    layers, hidden = card.state_shape
    h = np.zeros((layers, len(entities), hidden), np.float32)
    c = np.zeros_like(h)
    out: dict[tuple[str, int], np.ndarray] = {}
    engine = open_engine(artifact, "onnxruntime", "cpu", len(entities))
    try:
        for i in range(windows.shape[1]):
            y, h, c = engine.infer(windows[:, i], h, c)
            for e, row in zip(entities, published(y), strict=True):
                out[e, card.window - 1 + i * card.hop] = row
    finally:
        engine.close()
    return out


def _models_config(bootstrap: str, topic: str, models: list[dict[str, Any]], **over: Any) -> dict[str, Any]:
    """``service_config`` with ``models:`` instead of the single ``model:``."""
    cfg = service_config(bootstrap, topic, Path(models[0]["artifact"]), "a", **over)
    del cfg["model"]
    cfg["models"] = [{"backend": "onnxruntime", **m, "artifact": str(m["artifact"])} for m in models]
    return cfg


def _samples(proc: ServiceProcess, family: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The ``_total`` samples of counter ``family`` on the process's /metrics, by label set."""
    with urllib.request.urlopen(f"http://127.0.0.1:{proc.port}/metrics", timeout=5) as r:
        body = r.read().decode()
    return {
        tuple(sorted(s.labels.items())): s.value
        for fam in text_string_to_metric_families(body)
        if fam.name == family
        for s in fam.samples
        if s.name == f"{family}_total"
    }


def _check_models(preds: list[dict[str, Any]], expected: dict[str, str], where: str) -> None:
    """Each prediction carries the model id ``expected`` for its entity."""
    wrong = [(p["entity"], p["seq"], p["model"]) for p in preds if p["model"] != expected[p["entity"]]]
    assert not wrong, f"{len(wrong)} predictions on {where} from the wrong model, e.g. {wrong[:3]}"


@pytest.mark.parametrize("guarantee", ["exactly-once", "at-least-once"])
def test_canary_and_shadow_are_served_across_a_kill_9_for_a_thousand_entities(
    kafka_bootstrap: str,
    new_topic,
    artifact: Path,
    model_b: Path,
    tmp_path: Path,
    procs,
    feeders,
    guarantee: str,
) -> None:
    card_a, card_c = load_card(artifact), load_card(model_b)
    assert card_a.model_id != card_c.model_id
    topic = new_topic("models", partitions=2)
    streams = _streams(1000, seed=43)
    entities = list(streams)
    canary = Router([0.3]).route(entities) == 0
    assert 200 < canary.sum() < 400
    # The shadow S is the primary's artifact under another name: its topic must carry A's
    # predictions for every entity, and never a canary's.
    models = [
        {"name": "A", "artifact": artifact, "role": "primary"},
        {"name": "C", "artifact": model_b, "role": "canary", "fraction": 0.3},
        {"name": "S", "artifact": artifact, "role": "shadow"},
    ]
    cfg = _models_config(
        kafka_bootstrap,
        topic,
        models,
        delivery={"guarantee": guarantee},
        entities={"max_entities": 2048},
    )
    procs.append(p1 := ServiceProcess(cfg, tmp_path))
    p1.wait_ready(120)
    feeders.append(feeder := StreamFeeder(kafka_bootstrap, topic, streams, 3000))
    feeder.start(upto=40)  # the kill comes before the last hop, whatever the timing
    # Half way, just after hop 29 began to be published: some of its predictions (A's and C's
    # on the output, S's on its topic) are not committed yet, and their input replays.
    p1.wait_metric("stream_infer_predictions_total", 1300, 60)
    p1.kill()  # SIGKILL: no drain, no checkpoint
    committed = committed_offsets(kafka_bootstrap, cfg["kafka"]["group_id"], topic, 2)
    assert sum(committed.values()) < feeder.total, "the kill came after everything was committed"
    feeder.release()
    procs.append(p2 := ServiceProcess(cfg, tmp_path))
    p2.wait_ready(120)
    feeder.join(180)

    ref_a, ref_c = _reference(artifact, streams), _reference(model_b, streams)
    hops = set(ref_a)
    assert len(hops) == 4 * len(streams)
    on_c = {e for e, c in zip(entities, canary, strict=True) if c}
    ref_out = {(e, s): ref_c[e, s] if e in on_c else y for (e, s), y in ref_a.items()}
    out = read_hops(kafka_bootstrap, f"{topic}.out", hops, timeout_s=120)
    seen = check_delivery(out, ref_out, guarantee, atol=ATOL)
    if guarantee == "exactly-once":  # the kill aborted a transaction that held predictions
        raw = read_hops(kafka_bootstrap, f"{topic}.out", hops, timeout_s=30, committed_only=False)
        assert len(raw) > len(out), "the kill hit no open transaction"
    else:
        assert sum(seen.values()) > len(hops), "no hop was published twice: the kill missed the stream"
    routed = {e: card_c.model_id if e in on_c else card_a.model_id for e in entities}
    _check_models(out, routed, "the output topic")

    shadow = read_hops(kafka_bootstrap, f"{topic}.out.shadow.S", hops, timeout_s=120)
    check_delivery(shadow, ref_a, guarantee, atol=ATOL)
    _check_models(shadow, dict.fromkeys(entities, card_a.model_id), "the shadow topic")

    assert p2.metric("stream_infer_state_restored_entities_total") > 0
    agreement = _samples(p2, "stream_infer_model_agreement_hops")
    same_s = agreement.get((("model", "S"), ("result", "same")), 0.0)
    different_s = agreement.get((("model", "S"), ("result", "different")), 0.0)
    assert same_s > 0 and different_s == 0, agreement  # S is A's artifact: the same labels
    assert sum(v for k, v in agreement.items() if ("model", "C") in k) > 0, agreement
    counts = _samples(p2, "stream_infer_model_predictions")
    for model, role, use in (
        ("A", "primary", "published"),
        ("A", "primary", "reference"),
        ("C", "canary", "published"),
        ("S", "shadow", "published"),
    ):
        assert counts.get((("model", model), ("role", role), ("use", use)), 0.0) > 0, (model, use, counts)
    assert p2.terminate(30) == 0, p2.log()


def test_a_promoted_shadow_keeps_the_state_it_built_and_no_hop_is_lost_or_repeated(
    kafka_bootstrap: str, new_topic, artifact: Path, model_b: Path, tmp_path: Path, procs, feeders
) -> None:
    card_a, card_b = load_card(artifact), load_card(model_b)
    topic = new_topic("promote", partitions=2)
    streams = _streams(100, seed=47)
    half = 25  # the switch: hop 19 by A, hops 29, 39 and 49 by B
    over = {"delivery": {"guarantee": "exactly-once"}}
    shadowing = [
        {"name": "main", "artifact": artifact, "role": "primary"},
        {"name": "next", "artifact": model_b, "role": "shadow"},
    ]
    procs.append(a := ServiceProcess(_models_config(kafka_bootstrap, topic, shadowing, **over), tmp_path))
    a.wait_ready(120)
    feeders.append(feeder := StreamFeeder(kafka_bootstrap, topic, streams, 2000))
    feeder.start(upto=half)
    feeder.wait_idle(60)
    # Every sample of the first half consumed (windows and state held by both models)
    a.wait_metric("stream_infer_messages_total", feeder.sent, 90)
    a.wait_metric("stream_infer_predictions_total", len(streams), 30)
    assert a.terminate(30) == 0, a.log()

    promoted = [{"name": "next", "artifact": model_b, "role": "primary"}]
    procs.append(b := ServiceProcess(_models_config(kafka_bootstrap, topic, promoted, **over), tmp_path))
    b.wait_ready(120)
    feeder.join(120)

    ref_a, ref_b = _reference(artifact, streams), _reference(model_b, streams)
    # B after the switch continues from the state it built as a shadow: B from zero over the
    # whole stream, not from zero at the switch (which would not even be in phase).
    expected = {k: ref_a[k] if k[1] < half else ref_b[k] for k in ref_a}
    preds = read_hops(kafka_bootstrap, f"{topic}.out", set(expected), timeout_s=60)
    check_delivery(preds, expected, "exactly-once", atol=ATOL)
    wrong = [
        (p["entity"], p["seq"], p["model"])
        for p in preds
        if p["model"] != (card_a.model_id if p["seq"] < half else card_b.model_id)
    ]
    assert not wrong, f"{len(wrong)} hops from the wrong side of the switch, e.g. {wrong[:3]}"
    # The shadow's own topic had B's hops before the switch, from the same state.
    shadow = read_hops(kafka_bootstrap, f"{topic}.out.shadow.next", {(e, 19) for e in streams}, timeout_s=30)
    check_delivery(shadow, {(e, 19): ref_b[e, 19] for e in streams}, "exactly-once", atol=ATOL)
    # Every entity restored, as the model named next alone: main's records stay in the changelog.
    assert b.metric("stream_infer_state_restored_entities_total") == len(streams)
    assert b.terminate(30) == 0, b.log()
