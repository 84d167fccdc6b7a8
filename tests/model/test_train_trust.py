"""Training a user can trust: validation that reports and never changes the model, group K-fold
cross-validation, several
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
from stream_infer.model.train import group_folds, train_sensor, train_sensor_seeds
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


def test_validation_reports_on_unseen_groups_and_never_changes_the_model(tmp_path: Path) -> None:
    """The served model is the one a run without validation gives (same seed): validation can
    report, never make it worse; it runs the whole schedule and says how noisy its loss is."""
    write_user_dataset(tmp_path / "data", per_class=3)
    recs = load_recordings(tmp_path / "data")
    kw = {**SMALL, "epochs": 8}
    card = train_sensor(recs, tmp_path / "val", val_fraction=0.25, **kw)  # type: ignore[arg-type]
    plain = train_sensor(recs, tmp_path / "plain", val_fraction=0.0, **kw)  # type: ignore[arg-type]
    val = card.training["validation"]
    assert val["n_val"] == 3 and card.training["n_train"] == 12  # all 12 training recordings
    assert val["epochs"] == 8 and 1 <= val["best_epoch"] <= 8 and val["loss_noise"] >= 0
    assert 0.0 <= val["at_end"] <= 1.0 and "report only" in val["used_for"]
    assert card.accuracy == plain.accuracy and card.version == plain.version
    a = torch.load(tmp_path / "val" / "weights.pt")
    b = torch.load(tmp_path / "plain" / "weights.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # The reported loss is that of the held-out groups after the whole schedule, not the model's.
    assert val["loss"] >= 0 and "validation" not in plain.training


def test_group_folds_keep_each_group_in_one_fold_and_report_mean_and_spread(tmp_path: Path) -> None:
    groups = ["p1", "p1", "p2", "p3", "p3", "p4", "p5"]
    fold = group_folds(groups, 3, seed=0)
    assert sorted(set(fold)) == [0, 1, 2]
    assert all(len({f for f, g2 in zip(fold, groups, strict=True) if g2 == g}) == 1 for g in groups)
    with pytest.raises(DataError, match="--folds 6"):
        group_folds(groups, 6, seed=0)
    write_user_dataset(tmp_path / "data", per_class=3)
    recs = load_recordings(tmp_path / "data")
    card = train_sensor(recs, tmp_path / "out", folds=3, **SMALL)  # type: ignore[arg-type]
    cv = card.training["folds"]
    assert cv["k"] == 3 and sum(cv["n_recordings"]) == card.training["n_train"]
    each = cv["at_end"]["each"]
    assert len(each) == 3 and cv["at_end"]["mean"] == pytest.approx(np.mean(each), abs=1e-4)
    assert cv["per_hop"]["std"] == pytest.approx(np.std(cv["per_hop"]["each"], ddof=1), abs=1e-4)


def test_seeds_report_mean_and_spread_and_keep_the_first(tmp_path: Path) -> None:
    write_user_dataset(tmp_path / "data", per_class=3)
    recs = load_recordings(tmp_path / "data")
    card = train_sensor_seeds(recs, tmp_path / "out", 3, val_fraction=0.25, **SMALL)  # type: ignore[arg-type]
    seeds = card.training["seeds"]
    assert seeds["n"] == 3 and seeds["seeds"] == [0, 1, 2]
    each = seeds["per_hop"]["each"]
    assert len(each) == 3 and seeds["per_hop"]["mean"] == pytest.approx(np.mean(each), abs=1e-5)
    assert seeds["per_hop"]["std"] == pytest.approx(np.std(each, ddof=1), abs=1e-5)
    assert card.training["seed"] == seeds["chosen"] and seeds["chosen_by"] == "first seed"
    assert load_card(tmp_path / "out").training["seeds"] == seeds


def test_cli_derives_window_and_hop_from_the_sample_rate_and_ends_in_a_summary(tmp_path: Path) -> None:
    write_user_dataset(tmp_path / "data", per_class=2)
    args = ["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--no-progress"]
    result = runner.invoke(
        app,
        [*args, "--sample-rate", "5", "--epochs", "3", "--hidden", "8", "--seeds", "2", "--dropout", "0.3"],
    )
    assert result.exit_code == 0, result.output
    assert "window 10 samples (2 s at 5 Hz), hop 5 samples (1 s)" in result.output
    last = result.output.strip().splitlines()[-1]
    assert (
        "test accuracy" in last and "2 seeds" in last and "validation on" in last and "reported only" in last
    )
    card = json.loads((tmp_path / "out" / "model.json").read_text())
    assert (card["window"], card["hop"], card["sample_rate_hz"]) == (10, 5, 5.0)
    assert card["training"]["dropout"] == 0.3


def test_an_ensemble_is_one_graph_averaging_its_members_with_every_members_state(tmp_path: Path) -> None:
    from stream_infer.model.export import load_model
    from stream_infer.model.train import predict_recording

    write_user_dataset(tmp_path / "data", per_class=3)
    recs = load_recordings(tmp_path / "data")
    card = train_sensor(recs, tmp_path / "ens", **{**SMALL, "export": True}, ensemble=2)  # type: ignore[arg-type]
    ens = card.training["ensemble"]
    assert card.ensemble == 2 and card.lstm_layers == 2 and ens["seeds"] == [0, 1]
    assert len(ens["members"]) == 2 and (tmp_path / "ens" / "model.onnx").exists()
    member = train_sensor(recs, tmp_path / "m1", **{**SMALL, "seed": 1})  # type: ignore[arg-type]
    assert ens["members"][1]["per_hop"] == member.accuracy["per_hop"]
    # The served graph's probabilities are the mean of the members' (first member = seed 0).
    _, model = load_model(tmp_path / "ens")
    _, m1 = load_model(tmp_path / "m1")
    values = recs.subset("test").values[0]
    got = torch.softmax(torch.from_numpy(predict_recording(model, values, 20, 10)), 1)
    seed0 = train_sensor(recs, tmp_path / "m0", **SMALL)  # type: ignore[arg-type]
    _, m0 = load_model(tmp_path / "m0")
    want = sum(torch.softmax(torch.from_numpy(predict_recording(m, values, 20, 10)), 1) for m in (m0, m1)) / 2
    assert seed0.accuracy["per_hop"] == ens["members"][0]["per_hop"]
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)


def test_the_default_window_is_two_seconds_at_most_half_the_shortest_recording(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """2 s of samples at the rate, capped so the shortest training recording still gives three
    hops; a window the user gives is kept as given."""
    from stream_infer.cli import _window_and_hop

    assert _window_and_hop(None, None, 10.0, 100) == (20, 10)  # BasicMotions: 2 s
    assert _window_and_hop(None, None, 400.0, 400) == (200, 100)  # 1 s recordings at 400 Hz
    assert "0.5 s at 400 Hz: half the shortest training recording, 400 samples" in capsys.readouterr().err
    assert _window_and_hop(None, None, None, 30) == (15, 7)
    assert _window_and_hop(50, None, 400.0, 30) == (50, 25)  # as given
    assert _window_and_hop(None, 3, None, 1000) == (20, 3)
