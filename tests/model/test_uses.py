"""The uses on real data, offline: the data as shipped, the trained card, and evaluate's figures
equal to training's own on the same split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from stream_infer import evaluate as ev
from stream_infer.cli import app
from stream_infer.model.card import load_card
from stream_infer.model.datasets import (
    abp_internal_bleeding,
    co2_weekly,
    ecg5000,
    fingerspelling,
    japanese_vowels,
)

pytestmark = pytest.mark.slow


def test_co2_is_the_mauna_loa_series_split_by_date() -> None:
    recs = co2_weekly(52)
    train, test = recs.values
    assert recs.split == ["train", "test"] and recs.channels == ["co2"]
    assert len(train) + len(test) - 51 == 2284  # every week once, the test recording 51 weeks early
    np.testing.assert_array_equal(test[:51], train[-51:])
    assert 310 < train[0, 0] < 320 and 365 < test[-1, 0] < 375  # ppm, 1958 and 2001
    assert np.isfinite(train).all() and "missing weeks filled" in recs.notes[0]


def test_the_co2_forecaster_is_scored_by_evaluate_as_in_training(tmp_path: Path) -> None:
    out = tmp_path / "co2"
    result = CliRunner().invoke(app, ["train", "--dataset", "co2", "--out", str(out), "--epochs", "3"])
    assert result.exit_code == 0, result.output
    card = load_card(out)
    assert card.head_kind == "regression" and card.labels == ["co2+1", "co2+2", "co2+3", "co2+4"]
    recs = co2_weekly(card.window).subset("test")
    r = ev.evaluate(card, recs, ev.replay(out, recs))
    assert isinstance(r, ev.ForecastEvaluation)
    assert r.n_hops == card.accuracy["n"] == len(recs.values[0]) - card.window - 3
    assert r.mae == pytest.approx(card.accuracy["mae"], abs=1e-4)
    assert r.baselines["persistence"]["mae"] == pytest.approx(card.accuracy["persistence_mae"], abs=1e-4)
    assert set(r.baselines) == {"persistence", "seasonal naive (52)"}
    shown = CliRunner().invoke(app, ["evaluate", str(out), "--dataset", "co2"])
    assert shown.exit_code == 0 and "seasonal naive (52)" in shown.output, shown.output


def test_abp_is_the_archive_series_with_its_event() -> None:
    recs = abp_internal_bleeding()
    train, full = recs.values
    assert len(full) == 7501 and len(train) == 1200 and recs.split == ["train", "test"]
    np.testing.assert_array_equal(full[:1200], train)
    event = np.flatnonzero(recs.events[1])
    assert (event[0], event[-1]) == (4187, 4198) and not recs.events[0].any()
    assert float(full.min()) > 40 and float(full.max()) < 130  # mmHg


def test_the_abp_anomaly_model_flags_the_event_as_evaluate_reports(tmp_path: Path) -> None:
    out = tmp_path / "abp"
    result = CliRunner().invoke(app, ["train", "--dataset", "abp", "--out", str(out), "--epochs", "3"])
    assert result.exit_code == 0, result.output
    card = load_card(out)
    assert card.head_kind == "anomaly" and card.labels == ["score"] and card.head["threshold"] > 0
    assert [s.input for s in card.states] == ["h0", "c0", "expect"]  # its own forecast, carried
    recs = abp_internal_bleeding().subset("test")
    preds = ev.replay(out, recs)
    r = ev.evaluate(card, recs, preds)
    assert isinstance(r, ev.AnomalyEvaluation) and r.n_hops == 7501 - card.window + 1
    assert r.flagged == sum(p["anomaly"] for p in preds)
    assert r.located == 1 and r.baseline_located == 1  # the event is a jump: persistence finds it too
    first = min(preds, key=lambda p: p["seq"])
    assert first["score"] == 0.0  # no forecast yet for a new entity


def test_ecg5000_is_the_archive_split_with_its_five_classes() -> None:
    recs = ecg5000()
    assert recs.split.count("train") == 500 and recs.split.count("test") == 4500
    assert {v.shape for v in recs.values} == {(140, 1)}
    test = recs.subset("test").labels
    assert {c: test.count(c) for c in recs.classes} == {
        "normal": 2627, "pvc": 86, "r-on-t-pvc": 1590, "supraventricular": 175, "unclassified": 22,
    }  # fmt: skip


def test_japanese_vowels_is_the_archive_split_of_nine_speakers() -> None:
    recs = japanese_vowels()
    assert recs.split.count("train") == 270 and recs.split.count("test") == 370
    assert len(recs.classes) == 9 and recs.channels[0] == "lpc0" and len(recs.channels) == 12
    lengths = [len(v) for v in recs.values]
    assert (min(lengths), max(lengths)) == (7, 29)
    train = recs.subset("train").labels
    assert {train.count(c) for c in recs.classes} == {30}  # 30 utterances per speaker


def test_japanese_vowels_trains_and_every_utterance_gets_a_prediction(tmp_path: Path) -> None:
    out = tmp_path / "jv"
    args = ["train", "--dataset", "japanesevowels", "--out", str(out), "--epochs", "2", "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    card = load_card(out)
    assert (card.window, card.hop) == (5, 1) and card.sample_shape == [12]
    recs = japanese_vowels().subset("test")
    r = ev.evaluate(card, recs, ev.replay(out, recs))
    assert r.n_recordings == 370  # the shortest utterance still gets its hops


def test_fingerspelling_is_26_letters_of_real_signers_as_hand_frames() -> None:
    recs = fingerspelling()
    assert len(recs) == 410 and recs.classes == [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    assert {v.shape[1:] for v in recs.values} == {(6, 32, 32)} and len(recs.channels) == 6
    assert min(len(v) for v in recs.values) >= 17
    assert all(np.isfinite(v).all() and v.min() >= 0 and v.max() <= 255 for v in recs.values)
    for letter in recs.classes:  # a quarter of each letter's clips held out
        n = recs.labels.count(letter)
        held = sum(1 for x, s in zip(recs.labels, recs.split, strict=True) if x == letter and s == "test")
        assert held == round(0.25 * n)
    for finger in range(5):  # each finger a thin skeleton of its own, not an empty or a full image
        lit = np.mean([(v[:, finger] > 0).mean() for v in recs.values])
        assert 0.002 < lit < 0.1
    shades = np.concatenate([v[:, :5][v[:, :5] > 0] for v in recs.values[:40]])
    assert np.ptp(shades) > 100  # brightness tells near from far
    assert fingerspelling(seed=1).split != recs.split


def test_the_fingerspelling_model_is_scored_by_evaluate_as_in_training(tmp_path: Path) -> None:
    from stream_infer.model.train import train_frame_sequences

    recs = fingerspelling()
    card = train_frame_sequences(recs, tmp_path / "fs", epochs=1, hidden=16, conv_channels=8, progress=False)
    assert card.kind == "frame" and card.sample_shape == [6, 32, 32]
    assert card.accuracy["chance"] == pytest.approx(1 / 26)
    test = recs.subset("test")
    r = ev.evaluate(card, test, ev.replay(tmp_path / "fs", test))
    assert isinstance(r, ev.Evaluation) and r.n_recordings == 104
    assert r.at_end_accuracy == pytest.approx(card.accuracy["at_end"])
    assert r.per_hop_accuracy == pytest.approx(card.accuracy["per_hop"], abs=1 / r.n_hops)


def test_seeds_is_refused_where_it_does_not_apply(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["train", "--dataset", "co2", "--seeds", "2", "--out", str(tmp_path / "x")]
    )
    assert result.exit_code == 2 and "--seeds applies to sensor classification" in result.output
    assert not (tmp_path / "x").exists()


def test_anomaly_scores_offline_equal_the_served_graph(tmp_path: Path) -> None:
    """``anomaly.scores`` (the whole sequence at once; it sets the card's threshold) equals the
    exported graph stepped hop by hop through the service's pipeline, expect state and all."""
    import torch

    from stream_infer.model.anomaly import ForecastAnomaly, scores
    from stream_infer.model.forecast import ForecastCNNLSTM, hop_card, lstm_state
    from stream_infer.model.importer import export_module

    torch.manual_seed(0)
    recs = abp_internal_bleeding().subset("train")
    model = ForecastAnomaly(ForecastCNNLSTM(1, [0], 1, 8, 0.25), 0).eval()
    state = [*lstm_state(8), {"input": "expect", "output": "next_expect", "shape": [2], "batch_axis": 0}]
    card = hop_card("a", recs, 16, outputs=["score"], head={"kind": "anomaly", "threshold": 1.0}, state=state)
    export_module(model, card, tmp_path / "a")
    served = sorted(ev.replay(tmp_path / "a", recs), key=lambda p: p["seq"])
    np.testing.assert_allclose([p["score"] for p in served], scores(model, recs.values[0], 16), atol=1e-4)
