"""Offline evaluation: the replay goes through the service's own pipeline and equals the hop-by-hop
reference of the same engine; the figures are computed right; the commands write them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import orjson
import pytest
from typer.testing import CliRunner

from stream_infer import evaluate as ev
from stream_infer.backends import open_engine
from stream_infer.cli import app
from stream_infer.errors import DataError
from stream_infer.model.card import load_card
from stream_infer.model.datasets import Recordings, basic_motions
from tests.reference import hop_by_hop, published

runner = CliRunner()


@pytest.fixture(scope="module")
def test_split() -> Recordings:
    return basic_motions().subset("test")


def test_the_replay_equals_the_hop_by_hop_reference(sensor_model: Path, test_split: Recordings) -> None:
    recs = Recordings(
        test_split.values[:12],
        test_split.labels[:12],
        test_split.names[:12],
        ["test"] * 12,
        test_split.channels,
    )
    preds = ev.replay(sensor_model, recs)
    card = load_card(sensor_model)
    engine = open_engine(sensor_model, "onnxruntime", "cpu", 8)
    try:
        for i, (name, values) in enumerate(zip(recs.names, recs.values, strict=True)):
            got = sorted((p for p in preds if p["entity"] == ev.entity_of(i, name)), key=lambda p: p["seq"])
            ref = hop_by_hop(engine, card, values)
            assert [p["seq"] for p in got] == [card.window - 1 + card.hop * j for j in range(len(ref))]
            np.testing.assert_allclose([p["scores"] for p in got], published(ref), rtol=0, atol=1e-5)
    finally:
        engine.close()


def test_the_figures_are_those_of_the_predictions(sensor_model: Path, test_split: Recordings) -> None:
    card = load_card(sensor_model)
    preds = ev.replay(sensor_model, test_split)
    result = ev.evaluate(card, test_split, preds)
    truth = {
        ev.entity_of(i, n): card.labels.index(y)
        for i, (n, y) in enumerate(zip(test_split.names, test_split.labels, strict=True))
    }
    hits = [int(np.argmax(p["scores"])) == truth[p["entity"]] for p in preds]
    assert result.n_hops == len(preds) and result.per_hop_accuracy == pytest.approx(np.mean(hits))
    assert result.n_recordings == len(test_split)
    assert sum(map(sum, result.confusion)) == len(preds)
    # The same data and model as training's own evaluation (the card): the same figures.
    assert abs(result.per_hop_accuracy - card.accuracy["per_hop"]) <= 1 / result.n_hops
    assert result.at_end_accuracy == pytest.approx(card.accuracy["at_end"])


def _card_like(labels: list[str]) -> object:
    class C:
        model_id = "m@1"
        head_kind = "classification"

    c = C()
    c.labels = labels  # type: ignore[attr-defined]
    return c


def test_precision_recall_and_confusion_by_hand() -> None:
    recs = Recordings(
        [np.zeros((1, 1))] * 2, ["a", "b"], ["r0", "r1"], ["test"] * 2, ["x"], classes=["a", "b"]
    )

    def p(entity: str, seq: int, k: int) -> dict:
        return {"entity": entity, "seq": seq, "scores": [1.0 if j == k else 0.0 for j in range(2)]}

    preds = [
        p("00000-r0", 0, 0),
        p("00000-r0", 1, 1),
        p("00000-r0", 2, 0),
        p("00001-r1", 0, 1),
        p("00001-r1", 1, 1),
    ]
    r = ev.evaluate(_card_like(["a", "b"]), recs, preds)  # type: ignore[arg-type]
    assert r.confusion == [[2, 1], [0, 2]]
    assert r.per_hop_accuracy == pytest.approx(4 / 5) and r.at_end_accuracy == 1.0
    a, b = r.per_class
    assert (a.precision, a.recall, a.support) == (1.0, pytest.approx(2 / 3), 3)
    assert (b.precision, b.recall, b.support) == (pytest.approx(2 / 3), 1.0, 2)


def test_evaluate_and_predict_commands(sensor_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    result = runner.invoke(app, ["evaluate", str(sensor_model), "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "accuracy per hop" in result.output and "confusion per hop" in result.output
    figures = json.loads(out.read_text())
    assert figures["n_recordings"] == 40 and 0.9 <= figures["per_hop_accuracy"] <= 1.0
    lines = tmp_path / "p.jsonl"
    result = runner.invoke(app, ["predict", str(sensor_model), "--split", "test", "--out", str(lines)])
    assert result.exit_code == 0, result.output
    preds = [orjson.loads(x) for x in lines.read_bytes().splitlines()]
    assert len(preds) == figures["n_hops"]
    assert {"entity", "seq", "scores", "label", "model"} <= set(preds[0])


def test_evaluate_refuses_data_of_another_shape_in_one_line(sensor_model: Path, tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "labels.csv").write_text("recording,label\nr0,Walking\nr1,Running\n")
    for name in ("r0", "r1"):
        (d / f"{name}.csv").write_text("a,b,c\n" + "0.1,0.2,0.3\n" * 40)
    result = runner.invoke(
        app, ["evaluate", str(sensor_model), "--data", str(tmp_path / "d"), "--split", "all"]
    )
    assert result.exit_code == 2
    assert "the recordings have 3 channels" in result.output


def test_forecast_errors_and_baselines_by_hand() -> None:
    """One channel 0, 1, 4, 9, ... (t^2); hops at t = 1..5 forecasting 2 steps: the model says
    t^2 + 1 for every step, persistence says t^2, seasonal naive (season 2) says (t + s - 2)^2."""
    values = (np.arange(8, dtype=np.float32) ** 2)[:, None]
    recs = Recordings([values], ["-"], ["r"], ["test"], ["x"])

    class C:
        model_id = "f@1"
        head_kind = "regression"
        head = {"kind": "regression", "targets": ["x"], "horizon": 2, "season": 2}
        labels = ["x+1", "x+2"]

    preds = [
        {"entity": "00000-r", "seq": t, "values": {"x+1": t * t + 1.0, "x+2": t * t + 1.0}}
        for t in range(1, 8)
    ]
    r = ev.evaluate(C(), recs, preds)  # type: ignore[arg-type]
    assert isinstance(r, ev.ForecastEvaluation)
    t = np.arange(1, 6)  # t + 2 <= 7: hops 6 and 7 run past the end and are not scored
    truth = np.stack([(t + 1) ** 2, (t + 2) ** 2], axis=1)
    model_err = np.abs(truth - (t**2 + 1)[:, None])
    assert r.n_hops == 5 and r.mae == pytest.approx(model_err.mean())
    assert r.mae_per_step == pytest.approx(model_err.mean(axis=0).tolist())
    assert r.rmse == pytest.approx(np.sqrt((model_err**2).mean()))
    persist = np.abs(truth - (t**2)[:, None]).mean()
    assert r.baselines["persistence"]["mae"] == pytest.approx(persist)
    seasonal = np.abs(truth - np.stack([(t - 1) ** 2, t**2], axis=1)).mean()
    assert r.baselines["seasonal naive (2)"]["mae"] == pytest.approx(seasonal)
    assert "persistence" in r.table() and json.loads(r.to_json())["horizon"] == 2


def test_forecast_evaluation_refuses_outputs_it_cannot_match() -> None:
    class C:
        model_id = "f@1"
        head_kind = "regression"
        head = {"kind": "regression", "targets": ["x"], "horizon": 2}
        labels = ["a", "b"]

    recs = Recordings([np.zeros((4, 1), np.float32)], ["-"], ["r"], ["test"], ["x"])
    with pytest.raises(DataError, match="named <target>\\+<step>"):
        ev.evaluate(C(), recs, [])  # type: ignore[arg-type]
