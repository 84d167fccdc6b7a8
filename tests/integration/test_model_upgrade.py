"""Rolling a new model out (docs/model.md, "Rolling out a new model"): an instance of model A is
stopped (SIGTERM drains and commits) and an instance of model B, of the same state contract,
takes over with ``model.keep_state_on_upgrade``. Every hop is predicted exactly once, by A up to
the switch and by B after it, and B's hops continue from A's carried state and windows: they
equal B stepped offline from the state A left, not B from zero."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stream_infer.backends import open_engine
from stream_infer.model.card import load_card
from stream_infer.model.datasets import hop_windows
from tests.processes import ServiceProcess, StreamFeeder, entity_streams, read_hops, service_config
from tests.reference import published

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_an_upgrade_keeps_state_and_no_hop_is_lost_or_repeated(
    kafka_bootstrap: str, new_topic, artifact: Path, model_b: Path, tmp_path: Path, procs, feeders
) -> None:
    card_a, card_b = load_card(artifact), load_card(model_b)
    assert card_a.model_id != card_b.model_id and card_a.state_shape == card_b.state_shape
    topic = new_topic("upgrade", partitions=2)
    streams = entity_streams(6, 1, seed=31)
    over = {"delivery": {"guarantee": "exactly-once"}}
    procs.append(a := ServiceProcess(service_config(kafka_bootstrap, topic, artifact, "a", **over), tmp_path))
    a.wait_ready(120)
    feeders.append(feeder := StreamFeeder(kafka_bootstrap, topic, streams, 600))
    feeder.start(upto=feeder.rounds // 2)
    feeder.wait_idle(60)
    # A must have consumed the first half (and so hold state) before it stops
    a.wait_metric("stream_infer_messages_total", feeder.sent, 90)
    a.wait_metric("stream_infer_predictions_total", 1, 30)
    assert a.terminate(30) == 0, a.log()
    cfg_b = service_config(
        kafka_bootstrap, topic, model_b, "a", model={"keep_state_on_upgrade": True}, **over
    )
    procs.append(b := ServiceProcess(cfg_b, tmp_path))
    b.wait_ready(120)
    feeder.join(120)

    w, k = card_a.window, card_a.hop
    hops = {(e, w - 1 + i * k) for e, x in streams.items() for i in range(len(hop_windows(x, w, k)))}
    preds = read_hops(kafka_bootstrap, f"{topic}.out", hops, timeout_s=60)
    seen = [(p["entity"], p["seq"]) for p in preds]
    assert len(seen) == len(set(seen)) and set(seen) == hops, "a hop lost or repeated across the upgrade"
    assert b.metric("stream_infer_state_restored_entities_total") > 0

    # Offline: each entity's hops stepped with A's engine, then B's, state carried across.
    by = {(p["entity"], p["seq"]): p for p in preds}
    engines = {
        card_a.model_id: open_engine(artifact, "onnxruntime", "cpu", 8),
        card_b.model_id: open_engine(model_b, "onnxruntime", "cpu", 8),
    }
    switched = 0
    try:
        for e, x in streams.items():
            h = np.zeros((1, 1, card_a.hidden_size), np.float32)
            c = np.zeros_like(h)
            models = []
            for i, window in enumerate(hop_windows(x, w, k)):
                p = by[(e, w - 1 + i * k)]
                models.append(p["model"])
                y, h, c = engines[p["model"]].infer(window[None], h, c)
                np.testing.assert_allclose(p["scores"], published(y[0]), rtol=0, atol=1e-4)
            # A first, then B, never back.
            assert models == sorted(models, key=lambda m: m == card_b.model_id), models
            switched += card_a.model_id in models and card_b.model_id in models
    finally:
        for eng in engines.values():
            eng.close()
    assert switched > 0, "no entity was predicted by both models"
    assert b.terminate(30) == 0, b.log()
