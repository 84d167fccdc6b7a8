"""Fixtures shared by the real-process suites: the trained model, and the service processes and
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
