from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stream_infer.errors import DataError
from stream_infer.model.card import load_card
from stream_infer.model.datasets import basic_motions, load_recordings
from stream_infer.model.export import load_model
from stream_infer.model.train import predict_recording, train_sensor
from stream_infer.model.zoo import ensure_model
from tests.model.helpers import write_user_dataset


def test_basicmotions_card_reports_accuracy_at_recording_end(sensor_model: Path) -> None:
    card = load_card(sensor_model)
    assert (card.window, card.hop, card.sample_shape) == (20, 10, [6])
    assert card.accuracy["split"] == "test" and card.accuracy["n_recordings"] == 40
    assert card.accuracy["n_hops"] == 40 * 9
    assert card.accuracy["at_end"] >= 0.9
    assert card.accuracy["per_hop"] >= 0.8
    assert card.training["dataset"] == "basicmotions" and card.training["n_train"] == 40
    assert {"epochs", "seed", "n_test", "split"} <= card.training.keys()


def test_basicmotions_accuracy_recomputed_from_weights(sensor_model: Path) -> None:
    card, model = load_model(sensor_model)
    test = basic_motions().subset("test")
    hits = [
        card.labels[int(predict_recording(model, v, card.window, card.hop)[-1].argmax())] == label
        for v, label in zip(test.values, test.labels, strict=True)
    ]
    assert np.mean(hits) >= 0.9
    assert np.mean(hits) == pytest.approx(card.accuracy["at_end"])


def test_frame_model_card_reports_accuracy(frame_model: Path) -> None:
    card = load_card(frame_model)
    assert card.kind == "frame" and card.sample_shape == [1, 25, 25] and card.labels == ["face", "non-face"]
    for key in ("single_frame", "per_hop", "at_end"):
        assert 0.8 <= card.accuracy[key] <= 1.0
    assert card.training["n_test"] == 50


def test_ensure_model_reuses_an_existing_artifact(sensor_model: Path) -> None:
    before = (sensor_model / "weights.pt").stat().st_mtime_ns
    assert ensure_model("sensor", sensor_model.parent) == sensor_model
    assert (sensor_model / "weights.pt").stat().st_mtime_ns == before


def test_training_on_user_csv_data_is_reproducible(tmp_path: Path) -> None:
    write_user_dataset(tmp_path / "data", per_class=3)
    recs = load_recordings(tmp_path / "data")
    kwargs = dict(window=20, hop=10, epochs=8, hidden=16, progress=False, export=False)
    a = train_sensor(recs, tmp_path / "a", name="mine", **kwargs)  # type: ignore[arg-type]
    b = train_sensor(recs, tmp_path / "b", name="mine", **kwargs)  # type: ignore[arg-type]
    assert a.version == b.version
    assert a.training["n_train"] == 12 and a.training["n_test"] == 12
    assert a.channels == recs.channels and load_card(tmp_path / "a").accuracy == a.accuracy
    assert (tmp_path / "a" / "weights.pt").is_file()


def test_recording_shorter_than_a_window_is_rejected(tmp_path: Path) -> None:
    write_user_dataset(tmp_path / "data", per_class=1)
    recs = load_recordings(tmp_path / "data")
    with pytest.raises(DataError, match="fewer than one window"):
        train_sensor(recs, tmp_path / "out", window=200, hop=10, epochs=1, progress=False, export=False)
    with pytest.raises(DataError, match="1 <= hop <= window"):
        train_sensor(recs, tmp_path / "out", window=10, hop=20, epochs=1, progress=False, export=False)
