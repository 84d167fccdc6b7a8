"""Fixtures shared by the real-process suites: the trained models, and the service processes and
feeders a test starts (closed at its end, whatever happened)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import ServiceProcess, StreamFeeder


@pytest.fixture(scope="session")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The BasicMotions model (trained once per session, in the directory tests/model uses)."""
    from stream_infer.model.zoo import ensure_model

    return ensure_model("sensor", tmp_path_factory.getbasetemp() / "models")


@pytest.fixture(scope="session")
def model_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same architecture and shapes as the demo model, another seed: another version of it
    (a model upgrade, a canary, a shadow to promote)."""
    from stream_infer.model.datasets import basic_motions
    from stream_infer.model.train import train_sensor

    out = tmp_path_factory.mktemp("model-b") / "b"
    train_sensor(basic_motions(), out, seed=7, epochs=15, progress=False)
    return out


@pytest.fixture
def procs() -> Iterator[list[ServiceProcess]]:
    started: list[ServiceProcess] = []
    yield started
    for p in started:
        p.close()


@pytest.fixture
def feeders() -> Iterator[list[StreamFeeder]]:
    made: list[StreamFeeder] = []
    yield made
    for f in made:
        f.stop()
