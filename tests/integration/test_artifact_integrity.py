"""A swapped artifact cannot be served: ``stream-infer serve --check`` (a real process, the real
trained model) prints the card's digest to pin, accepts it pinned, and refuses in one line a
model file that differs from the card's digest or a card that differs from the pinned one."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from stream_infer.model.card import CARD_FILE, ONNX_FILE
from tests.processes import run_cli, service_config

pytestmark = [pytest.mark.integration]


def _check(tmp_path: Path, cfg: dict) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "check.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return run_cli("serve", "--check", "--config", str(path))


def test_a_swapped_model_file_or_card_is_refused_at_start(kafka_bootstrap, artifact, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(artifact, model)
    digest = hashlib.sha256((model / CARD_FILE).read_bytes()).hexdigest()
    cfg = service_config(kafka_bootstrap, "integrity-in", model, "a", kafka={"startup_timeout_s": 20})

    ok = _check(tmp_path, cfg)
    assert ok.returncode == 0, ok.stderr
    assert f"model card sha256 {digest} (its files' digests verified" in ok.stdout, ok.stdout
    pinned = {**cfg, "model": {**cfg["model"], "card_sha256": digest}}
    assert _check(tmp_path, pinned).returncode == 0

    (model / ONNX_FILE).write_bytes((model / ONNX_FILE).read_bytes() + b"\x00")  # a changed graph
    bad = _check(tmp_path, cfg)
    lines = bad.stderr.splitlines()
    assert bad.returncode == 2 and len(lines) == 1, bad.stderr
    assert "model.onnx" in lines[0] and "refusing a changed or swapped model file" in lines[0]

    shutil.copy(artifact / ONNX_FILE, model / ONNX_FILE)
    wrong = {**cfg, "model": {**cfg["model"], "card_sha256": "0" * 64}}
    refused = _check(tmp_path, wrong)
    lines = refused.stderr.splitlines()
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr
    assert "is not the pinned model.card_sha256" in lines[0]
