from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from stream_infer.cli import app
from tests.model.helpers import write_user_dataset

runner = CliRunner()


@pytest.mark.parametrize("command", ["train", "export", "build-engine"])
def test_help(command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def _err(result: object) -> str:
    return getattr(result, "stderr", "") or getattr(result, "output", "")


def test_train_on_missing_data_exits_2_naming_it(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert f"{tmp_path / 'nope'}: not a directory" in _err(result)
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_train_on_bad_csv_exits_2_naming_the_file(tmp_path: Path) -> None:
    write_user_dataset(tmp_path, per_class=1)
    (tmp_path / "rec002.csv").write_text("a,b\n1,2,3\n")
    result = runner.invoke(app, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "rec002.csv: line 2" in _err(result)


def test_train_bad_hop_and_unknown_split_column_exit_2(tmp_path: Path) -> None:
    write_user_dataset(tmp_path, per_class=1, with_split=False)
    result = runner.invoke(
        app, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--split-by", "patient"]
    )
    assert result.exit_code == 2 and "unknown --split-by column 'patient'" in _err(result)
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "o"), "--window", "10", "--hop", "20"])
    assert result.exit_code == 2 and "1 <= hop <= window" in _err(result)
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "o"), "--dataset", "mnist"])
    assert result.exit_code == 2 and "mnist" in _err(result)


def test_train_cli_writes_an_artifact(tmp_path: Path) -> None:
    write_user_dataset(tmp_path / "data", per_class=2)
    result = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "art"),
            "--epochs",
            "2",
            "--hidden",
            "8",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, _err(result)
    assert {"model.json", "weights.pt", "model.onnx"} <= {p.name for p in (tmp_path / "art").iterdir()}


def test_export_and_build_engine_on_a_non_artifact_exit_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["export", str(tmp_path)])
    assert result.exit_code == 2 and f"{tmp_path / 'model.json'}: no model card" in _err(result)
    result = runner.invoke(app, ["build-engine", str(tmp_path)])
    assert result.exit_code == 2 and ("model.json" in _err(result) or "TensorRT" in _err(result))
