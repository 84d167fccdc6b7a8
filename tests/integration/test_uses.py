"""The uses of CNN-LSTM models on real data, end to end against the real broker: each model is
trained here (few epochs: this checks serving, not accuracy; docs/model.md has the accuracy),
served under exactly-once with a restart half way (its state restored from the changelog), and
every hop is published once with the values ``evaluate`` computes offline within 1e-5."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from stream_infer import evaluate
from stream_infer.model.card import ModelCard
from stream_infer.model.datasets import Recordings
from tests.processes import ServiceProcess, StreamFeeder, check_delivery, read_hops, service_config
from tests.reference import output_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _co2(out: Path) -> tuple[ModelCard, Recordings]:
    from stream_infer.model.datasets import co2_weekly
    from stream_infer.model.forecast import train_co2

    return train_co2(out, epochs=2, hidden=16), co2_weekly()


def _abp(out: Path) -> tuple[ModelCard, Recordings]:
    from stream_infer.model.anomaly import train_abp
    from stream_infer.model.datasets import abp_internal_bleeding

    return train_abp(out, epochs=2, hidden=16), abp_internal_bleeding().subset("test")


def _ecg(out: Path) -> tuple[ModelCard, Recordings]:
    from stream_infer.model.datasets import ecg5000
    from stream_infer.model.train import train_sensor

    recs = ecg5000()
    card = train_sensor(recs, out, window=20, hop=10, epochs=2, hidden=16, progress=False, val_fraction=0.0)
    return card, recs.subset("test").select(list(range(24)))


def _ecg_ensemble(out: Path) -> tuple[ModelCard, Recordings]:
    """Three members served as one graph (their states stacked, their probabilities averaged),
    brought in as a user brings any graph: ``stream-infer import`` of its ONNX file and a card."""
    from stream_infer.model.datasets import ecg5000
    from stream_infer.model.importer import import_onnx
    from stream_infer.model.train import train_sensor

    full = ecg5000()
    train = [i for i, s in enumerate(full.split) if s == "train"][:120]
    test = [i for i, s in enumerate(full.split) if s == "test"][:24]
    recs = full.select(train + test)  # a part: this checks serving, not accuracy
    trained = out.parent / "trained"
    card = train_sensor(recs, trained, window=20, hop=10, epochs=2, hidden=16, progress=False, ensemble=3)
    assert card.ensemble == 3 and card.lstm_layers == 3
    state = [3, card.hidden_size]
    imported = import_onnx(
        trained / "model.onnx",
        {
            "name": "ecg-ensemble", "version": "1", "kind": "sensor", "window": 20, "hop": 10,
            "sample_shape": card.sample_shape, "labels": card.labels, "input": "x", "output": "y",
            "state": [
                {"input": "h0", "output": "hn", "shape": state, "batch_axis": 1},
                {"input": "c0", "output": "cn", "shape": state, "batch_axis": 1},
            ],
        },
        out,
    )  # fmt: skip
    test_recs = recs.subset("test")
    want = {(p["entity"], p["seq"]): output_of(p) for p in evaluate.replay(trained, test_recs)}
    got = {(p["entity"], p["seq"]): output_of(p) for p in evaluate.replay(out, test_recs)}
    assert got.keys() == want.keys() and want
    np.testing.assert_allclose([got[k] for k in sorted(got)], [want[k] for k in sorted(want)], atol=1e-6)
    return imported, test_recs


def _fingerspelling(out: Path) -> tuple[ModelCard, Recordings]:
    from stream_infer.model.datasets import fingerspelling
    from stream_infer.model.train import train_frame_sequences

    recs = fingerspelling()
    card = train_frame_sequences(recs, out, epochs=1, hidden=16, conv_channels=8, progress=False)
    return card, recs.subset("test").select(list(range(8)))


USES: dict[str, Callable[[Path], tuple[ModelCard, Recordings]]] = {
    "video-fingerspelling": _fingerspelling,
    "climate-co2": _co2,
    "medical-abp": _abp,
    "medical-ecg5000": _ecg,
    "medical-ecg5000-ensemble": _ecg_ensemble,
}


@pytest.mark.parametrize("use", list(USES))
def test_a_use_is_served_once_per_hop_equal_to_evaluate(
    kafka_bootstrap: str, new_topic, tmp_path: Path, procs, feeders, use: str
) -> None:
    artifact = tmp_path / "artifact"
    card, recs = USES[use](artifact)
    offline = evaluate.replay(artifact, recs)
    entity = {evaluate.entity_of(i, n): n for i, n in enumerate(recs.names)}
    ref = {(entity[p["entity"]], p["seq"]): np.asarray(output_of(p)) for p in offline}
    assert ref, "no hop to serve"
    streams = dict(zip(recs.names, recs.values, strict=True))

    topic = new_topic(f"use-{use}", partitions=2)
    fmt = "json" if card.kind == "sensor" else "f32"
    cfg = service_config(
        kafka_bootstrap, topic, artifact, "a", delivery={"guarantee": "exactly-once"}, input={"format": fmt}
    )
    procs.append(first := ServiceProcess(cfg, tmp_path))
    first.wait_ready(120)
    feeders.append(feeder := StreamFeeder(kafka_bootstrap, topic, streams, 1500, fmt=fmt))
    feeder.start(upto=feeder.rounds // 2)
    feeder.wait_idle(60)
    # the first instance must have consumed the first half (and so hold state) before it stops
    first.wait_metric("stream_infer_messages_total", feeder.sent, 90)
    first.wait_metric("stream_infer_predictions_total", 1, 30)
    assert first.terminate(30) == 0, first.log()
    procs.append(second := ServiceProcess(cfg, tmp_path))
    second.wait_ready(120)
    feeder.join(180)
    preds = read_hops(kafka_bootstrap, f"{topic}.out", set(ref), timeout_s=90)
    check_delivery(preds, ref, "exactly-once", atol=1e-5)
    assert second.metric("stream_infer_state_restored_entities_total") > 0
    assert second.terminate(30) == 0, second.log()
    assert {p["head"] for p in preds} == {card.head_kind}
