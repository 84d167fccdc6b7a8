"""Artifact integrity: the card records each model file's SHA-256, the service refuses a file
that differs from it, and a pinned card digest refuses any other card (one line each)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from stream_infer.errors import ModelError
from stream_infer.model.card import CARD_FILE, ONNX_FILE, WEIGHTS_FILE, ModelCard, load_card
from stream_infer.model.integrity import card_sha256, seal, sha256_file, verify


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    d = tmp_path / "model"
    ModelCard("m", "1", "sensor", 4, 2, [3], ["a", "b"], 1, 4).save(d)
    (d / ONNX_FILE).write_bytes(b"onnx graph bytes")
    (d / WEIGHTS_FILE).write_bytes(b"torch weights")
    return d


def test_seal_records_each_model_files_digest(artifact: Path) -> None:
    card = seal(artifact)
    assert card.files == {
        ONNX_FILE: sha256_file(artifact / ONNX_FILE),
        WEIGHTS_FILE: sha256_file(artifact / WEIGHTS_FILE),
    }
    assert load_card(artifact).files == card.files
    verify(artifact, (ONNX_FILE,))
    verify(artifact, (WEIGHTS_FILE,), card_sha256(artifact))


def test_a_changed_model_file_is_refused_in_one_line(artifact: Path) -> None:
    seal(artifact)
    (artifact / ONNX_FILE).write_bytes(b"onnx graph bytes, swapped")
    with pytest.raises(ModelError, match="refusing a changed or swapped model file") as err:
        verify(artifact, (ONNX_FILE,))
    assert "\n" not in str(err.value) and str(artifact / ONNX_FILE) in str(err.value)
    verify(artifact, (WEIGHTS_FILE,))  # the torch backend loads the other file, unchanged


def test_a_pinned_card_refuses_any_other_card(artifact: Path) -> None:
    seal(artifact)
    pinned = card_sha256(artifact)
    doc = json.loads((artifact / CARD_FILE).read_text())
    doc["files"][ONNX_FILE] = sha256_file(artifact / ONNX_FILE).replace("a", "b")  # a rewritten card
    (artifact / CARD_FILE).write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="is not the pinned model.card_sha256"):
        verify(artifact, (ONNX_FILE,), pinned)


def test_an_unsealed_card_warns_unless_pinned(artifact: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        verify(artifact, (ONNX_FILE,))
    assert "records no file digests" in caplog.text
    with pytest.raises(ModelError, match="records no file digests"):
        verify(artifact, (ONNX_FILE,), card_sha256(artifact))


def test_a_file_the_card_does_not_record_is_refused(artifact: Path) -> None:
    (artifact / WEIGHTS_FILE).unlink()
    seal(artifact)
    (artifact / WEIGHTS_FILE).write_bytes(b"weights added later")
    with pytest.raises(ModelError, match="not in the card's file digests"):
        verify(artifact, (WEIGHTS_FILE,))
