"""Bring your own model, end to end against the real broker: the example GRU (one state tensor),
two-layer LSTM (two, under names of their own, so the changelog's format 2) and ConvLSTM frame
model (two [8, 16, 16] tensors, batch first) are imported and served, restarted half way (their
state restored from the changelog), and every hop is predicted exactly once with the values of
the graph stepped hop by hop with its state carried."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from examples import convlstm_frames, gru_sensor, lstm2_sensor
from stream_infer.backends import open_engine
from stream_infer.model.datasets import hop_windows
from tests.processes import (
    ServiceProcess,
    StreamFeeder,
    check_delivery,
    entity_streams,
    read_hops,
    service_config,
)
from tests.reference import hop_by_hop_any, published

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.parametrize(
    "example", [gru_sensor, lstm2_sensor, convlstm_frames], ids=["gru", "lstm2", "convlstm"]
)
def test_an_imported_model_is_served_and_its_state_survives_a_restart(
    kafka_bootstrap: str, new_topic, tmp_path: Path, procs, feeders, example
) -> None:
    artifact = tmp_path / "artifact"
    card = example.build(artifact)
    if card.kind == "frame":  # synthetic frames, sent as f32 [1, 16, 16] per message
        rng = np.random.default_rng(41)
        streams = {f"cam-{i}": rng.uniform(0, 255, size=(16, 1, 16, 16)).astype(np.float32) for i in range(4)}
    else:
        streams = entity_streams(6, 1, seed=41)
    engine = open_engine(artifact, "onnxruntime", "cpu", 8)
    try:
        ref = {}
        for e, x in streams.items():
            for i, y in enumerate(hop_by_hop_any(engine, card, x)):
                ref[(e, card.window - 1 + i * card.hop)] = published(y)
    finally:
        engine.close()
    assert len(ref) == sum(len(hop_windows(x, card.window, card.hop)) for x in streams.values())

    topic = new_topic("byom", partitions=2)
    cfg = service_config(
        kafka_bootstrap,
        topic,
        artifact,
        "a",
        delivery={"guarantee": "exactly-once"},
        input={"format": "f32" if card.kind == "frame" else "json"},
    )
    procs.append(first := ServiceProcess(cfg, tmp_path))
    first.wait_ready(120)
    fmt = "f32" if card.kind == "frame" else "json"
    feeders.append(feeder := StreamFeeder(kafka_bootstrap, topic, streams, 600, fmt=fmt))
    feeder.start(upto=feeder.rounds // 2)
    feeder.wait_idle(60)
    # the first instance must have consumed the first half (and so hold state) before it stops
    first.wait_metric("stream_infer_messages_total", feeder.sent, 90)
    first.wait_metric("stream_infer_predictions_total", 1, 30)
    assert first.terminate(30) == 0, first.log()
    procs.append(second := ServiceProcess(cfg, tmp_path))
    second.wait_ready(120)
    feeder.join(120)
    preds = read_hops(kafka_bootstrap, f"{topic}.out", set(ref), timeout_s=60)
    check_delivery(preds, ref, "exactly-once", atol=1e-5)
    assert second.metric("stream_infer_state_restored_entities_total") > 0
    assert second.terminate(30) == 0, second.log()
    assert np.all([p["model"] == card.model_id for p in preds])
