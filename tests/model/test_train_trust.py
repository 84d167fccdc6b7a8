"""Training a user can trust: validation with early stopping and the best epoch kept, several
seeds with mean and spread, time columns never trained on, train/ and test/ folders, W and hop
derived from a sample rate, no local path in the card, a summary line without a progress bar."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from stream_infer.cli import app
from stream_infer.errors import DataError
from stream_infer.model.card import load_card
from stream_infer.model.datasets import load_recordings
from stream_infer.model.export import load_model
from stream_infer.model.train import _loss_sensor, train_sensor, train_sensor_seeds
from tests.model.helpers import write_user_dataset

runner = CliRunner()
SMALL = dict(window=20, hop=10, epochs=6, hidden=8, conv_channels=8, progress=False, export=False)


def _write(root: Path, rows: list[tuple[str, str]], header: list[str], make) -> None:  # type: ignore[no-untyped-def]
    root.mkdir(parents=True, exist_ok=True)
    with (root / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["recording", "label"])
        w.writerows(rows)
    for i, (name, _) in enumerate(rows):
        with (root / f"{name}.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(make(i))


def test_a_time_column_is_dropped_with_a_note(tmp_path: Path) -> None:
    rows = [(f"r{i}", "a" if i % 2 else "b") for i in range(4)]
    _write(tmp_path / "d", rows, ["Time", "x", "y"], lambda i: [[0.1 * t, t * i, -t] for t in range(30)])
    recs = load_recordings(tmp_path / "d")
    assert recs.channels == ["x", "y"] and recs.values[0].shape == (30, 2)
    assert len(recs.notes) == 1 and "'Time'" in recs.notes[0] and "dropped" in recs.notes[0]


def test_a_decreasing_column_named_time_is_refused(tmp_path: Path) -> None:
    rows = [(f"r{i}", "a" if i % 2 else "b") for i in range(4)]
    _write(tmp_path / "d", rows, ["t", "x"], lambda i: [[30 - t, t] for t in range(30)])
    with pytest.raises(DataError, match="'t' is named like a time column but decreases"):
        load_recordings(tmp_path / "d")


def test_train_and_test_folders_are_the_split(tmp_path: Path) -> None:
    write_user_dataset(tmp_path / "d" / "train", per_class=1, with_split=False)
    write_user_dataset(tmp_path / "d" / "test", per_class=1, with_split=False)
    recs = load_recordings(tmp_path / "d")
    assert recs.split.count("train") == 8 and recs.split.count("test") == 8
    assert all(n.startswith(("train/", "test/")) for n in recs.names)
    assert recs.dataset == "d" and recs.split_rule == "train/ and test/ folders"


def test_the_card_carries_no_local_path(tmp_path: Path) -> None:
    write_user_dataset(tmp_path / "data", per_class=2)
    card = train_sensor(load_recordings(tmp_path / "data"), tmp_path / "out", **SMALL)  # type: ignore[arg-type]
    assert card.training["dataset"] == "data"
    assert str(tmp_path) not in (tmp_path / "out" / "model.json").read_text()


def test_validation_keeps_the_best_epoch_and_stops_early(tmp_path: Path) -> None:
    write_user_dataset(tmp_path / "data", per_class=3)
    recs = load_recordings(tmp_path / "data")
    kw = {**SMALL, "epochs": 40}
    card = train_sensor(recs, tmp_path / "out", val_fraction=0.25, patience=3, **kw)  # type: ignore[arg-type]
    val = card.training["validation"]
    assert val["n_val"] == 3 and card.training["n_train"] == 9  # 12 training recordings, 1/4 held out
    assert 1 <= val["best_epoch"] <= val["epochs_run"] <= 40
    assert val["stopped_early"] == (val["epochs_run"] < 40)
    if val["stopped_early"]:
        assert val["epochs_run"] - val["best_epoch"] == 3
    # The weights written are those of the best epoch: their validation loss is the recorded one.
    _, model = load_model(tmp_path / "out")
    train = recs.subset("train")
    from stream_infer.model.datasets import hold_out

    split = hold_out(train.groups, 0.25, 0)
    held = train.select([i for i, s in enumerate(split) if s == "test"])
    label_idx = {c: i for i, c in enumerate(card.labels)}
    with torch.inference_mode():
        loss = _loss_sensor(model.eval(), held, card.window, card.hop, label_idx)
    assert loss == pytest.approx(val["loss"], abs=1e-4)


def test_seeds_report_mean_and_spread_and_keep_the_best_validated(tmp_path: Path) -> None:
    write_user_dataset(tmp_path / "data", per_class=3)
    recs = load_recordings(tmp_path / "data")
    card = train_sensor_seeds(recs, tmp_path / "out", 3, val_fraction=0.25, **SMALL)  # type: ignore[arg-type]
    seeds = card.training["seeds"]
    assert seeds["n"] == 3 and seeds["seeds"] == [0, 1, 2]
    each = seeds["per_hop"]["each"]
    assert len(each) == 3 and seeds["per_hop"]["mean"] == pytest.approx(np.mean(each), abs=1e-5)
    assert seeds["per_hop"]["std"] == pytest.approx(np.std(each, ddof=1), abs=1e-5)
    assert card.training["seed"] == seeds["chosen"] and seeds["chosen_by"] == "lowest validation loss"
    assert load_card(tmp_path / "out").training["seeds"] == seeds


def test_cli_derives_window_and_hop_from_the_sample_rate_and_ends_in_a_summary(tmp_path: Path) -> None:
    write_user_dataset(tmp_path / "data", per_class=2)
    args = ["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--no-progress"]
    result = runner.invoke(
        app, [*args, "--sample-rate", "5", "--epochs", "3", "--hidden", "8", "--seeds", "2"]
    )
    assert result.exit_code == 0, result.output
    assert "window 10 samples (2 s at 5 Hz), hop 5 samples (1 s)" in result.output
    last = result.output.strip().splitlines()[-1]
    assert "test accuracy" in last and "2 seeds" in last and "best epoch" in last
    card = json.loads((tmp_path / "out" / "model.json").read_text())
    assert (card["window"], card["hop"], card["sample_rate_hz"]) == (10, 5, 5.0)
