"""Session fixtures: the real Kafka broker (started by the project's own script unless
KAFKA_BOOTSTRAP names a cluster) and fresh topics per test."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KAFKA_SH = ROOT / "deploy" / "local" / "kafka.sh"


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    external = os.environ.get("KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    running = subprocess.run([str(KAFKA_SH), "status"], capture_output=True).returncode == 0
    if not running:
        subprocess.run([str(KAFKA_SH), "start"], check=True)
    yield f"127.0.0.1:{os.environ.get('KAFKA_PORT', '9092')}"
    if not running:
        subprocess.run([str(KAFKA_SH), "stop"], check=False)


@pytest.fixture(scope="session")
def own_broker(kafka_bootstrap: str) -> Callable[[str], None]:
    """Control of the local broker for fault injection (stop/start); skips on an external one."""
    if os.environ.get("KAFKA_BOOTSTRAP"):
        pytest.skip("KAFKA_BOOTSTRAP points at an external cluster; broker faults need the local one")

    def control(action: str) -> None:
        subprocess.run([str(KAFKA_SH), action], check=True)

    return control


@pytest.fixture
def new_topic(kafka_bootstrap: str) -> Callable[..., str]:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    made: list[str] = []

    def make(prefix: str = "t", partitions: int = 1, **configs: str) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        admin.create_topics([NewTopic(name, partitions, 1, topic_configs=configs)])
        made.append(name)
        return name

    yield make
    with contextlib.suppress(Exception):
        admin.delete_topics(made)
    admin.close()


@pytest.fixture(scope="session")
def sensor_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BasicMotions CNN-LSTM artifact (trained once per session, a few seconds)."""
    from stream_infer.model.zoo import ensure_model

    return ensure_model("sensor", tmp_path_factory.getbasetemp() / "models")


@pytest.fixture(scope="session")
def frame_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LFW face / non-face CNN-LSTM artifact."""
    from stream_infer.model.zoo import ensure_model

    return ensure_model("frame", tmp_path_factory.getbasetemp() / "models")


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """A command run in-process (``CliRunner``) configures logging for its process: a handler on
    the root logger bound to the runner's stream, closed when the command returns. Later tests
    would log into that closed stream ("--- Logging error ---" in their output), so each test
    leaves the root and ``kafka`` loggers as it found them."""
    root, kafka = logging.getLogger(), logging.getLogger("kafka")
    before = (set(root.handlers), root.level, list(kafka.handlers), kafka.level, kafka.propagate)
    yield
    handlers, level, kafka_handlers, kafka_level, propagate = before
    for h in root.handlers[:]:
        if h not in handlers and type(h) is logging.StreamHandler:
            root.removeHandler(h)
    root.setLevel(level)
    kafka.handlers[:] = kafka_handlers
    kafka.setLevel(kafka_level)
    kafka.propagate = propagate
