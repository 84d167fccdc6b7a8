"""Session fixtures: the default models, trained once per test session (a few seconds each)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream_infer.model.zoo import ensure_model


def _root(factory: pytest.TempPathFactory) -> Path:
    # One directory for the whole session: ensure_model reuses an artifact already there, so
    # conftests that import these fixtures never train twice.
    return factory.getbasetemp() / "models"


@pytest.fixture(scope="session")
def sensor_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BasicMotions CNN-LSTM artifact directory (model.json, weights.pt, model.onnx)."""
    return ensure_model("sensor", _root(tmp_path_factory))


@pytest.fixture(scope="session")
def frame_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LFW face / non-face CNN-LSTM artifact directory."""
    return ensure_model("frame", _root(tmp_path_factory))
