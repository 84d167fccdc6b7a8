"""A start that cannot succeed ends fast, with exit code 2 and one line on stderr that names the
cause: no traceback, no page of client log. Each fault is met by ``stream-infer serve`` run as
a real process.

These faults come before the engine is loaded, so the artifact is a model card alone (no
training needed)."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kafka.errors import KafkaConnectionError, KafkaTimeoutError

from stream_infer.logs import configure_logging, kafka_connected, kafka_startup_fault
from stream_infer.model.card import CARD_FILE, ModelCard
from tests.processes import ROOT, free_port


@pytest.fixture
def card_only(tmp_path: Path) -> Path:
    artifact = tmp_path / "model"
    artifact.mkdir()
    card = ModelCard(
        name="lin",
        version="1",
        kind="sensor",
        window=4,
        hop=2,
        sample_shape=[3],
        labels=["a", "b"],
        lstm_layers=1,
        hidden_size=4,
    )
    (artifact / CARD_FILE).write_text(card.to_json())
    return artifact


def config(tmp_path: Path, artifact: Path, **over: Any) -> Path:
    data: dict[str, Any] = {
        # A closed local port: nothing answers, whatever the fault under test.
        "kafka": {"bootstrap_servers": f"127.0.0.1:{free_port()}", "startup_timeout_s": 3},
        "model": {"artifact": str(artifact), "backend": "onnxruntime"},
        "metrics": {"host": "127.0.0.1", "port": 0},
    }
    for section, values in over.items():
        data[section] = {**data.get(section, {}), **values}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def serve(path: Path, timeout_s: float = 60) -> tuple[int, list[str], float]:
    """Exit code, stderr lines and seconds of ``stream-infer serve --config path``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_INFER_")}
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "stream_infer.cli", "serve", "--config", str(path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    return proc.returncode, proc.stderr.splitlines(), time.monotonic() - start


def test_a_metrics_port_in_use_is_one_line_naming_the_port(tmp_path: Path, card_only: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err, seconds = serve(config(tmp_path, card_only, metrics={"port": port}))
    assert code == 2, err
    assert err == [f"error: metrics.port {port} on 127.0.0.1 is in use"]
    assert seconds < 30


def test_unreachable_brokers_are_one_line_after_the_startup_timeout(tmp_path: Path, card_only: Path) -> None:
    path = config(tmp_path, card_only)
    servers = yaml.safe_load(path.read_text())["kafka"]["bootstrap_servers"]
    code, err, seconds = serve(path)
    assert code == 2, err
    assert len(err) == 1, "\n".join(err)  # no kafka-python line per failed attempt
    assert err[0].startswith(f"error: cannot reach Kafka at {servers} within 3 s: ")
    assert "ECONNREFUSED" in err[0] or "refused" in err[0].lower()
    assert seconds < 15


def test_invalid_yaml_is_one_line_with_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("kafka:\n  bootstrap_servers: x\n  client_id: a: b\n")
    code, err, _ = serve(path)
    assert code == 2, err
    assert err == [f"error: {path}:3:15: not valid YAML: mapping values are not allowed here"]


@pytest.fixture
def restore_logging() -> Any:
    root, kafka = logging.getLogger(), logging.getLogger("kafka")
    saved = (root.handlers[:], root.level, kafka.handlers[:], kafka.level, kafka.propagate)
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    kafka.handlers[:], kafka.level, kafka.propagate = saved[2], saved[3], saved[4]


def test_kafka_python_is_held_back_until_the_first_connection(restore_logging: Any) -> None:
    kafka = logging.getLogger("kafka.net.manager")
    configure_logging("INFO")
    assert not kafka.isEnabledFor(logging.WARNING)
    kafka.error("Connection failed: %s", KafkaConnectionError("111 ECONNREFUSED"))
    kafka.error(
        "Bootstrap failed: %s", KafkaTimeoutError("Unable to bootstrap")
    )  # the timeout is not the cause
    assert kafka_startup_fault() == "KafkaConnectionError: 111 ECONNREFUSED"
    kafka_connected()
    assert kafka.isEnabledFor(logging.WARNING) and not kafka.isEnabledFor(logging.INFO)
    assert logging.getLogger("kafka").propagate
    configure_logging("DEBUG")  # nothing held back
    assert kafka.isEnabledFor(logging.DEBUG) and logging.getLogger("kafka").propagate


def test_serve_check_loads_the_engine_and_a_missing_model_file_is_one_line(
    tmp_path: Path, card_only: Path
) -> None:
    """``serve --check`` runs one inference on zeros; an artifact without ``model.onnx`` fails
    there, before Kafka is reached (its bootstrap here answers nothing)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_INFER_")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "stream_infer.cli",
            "serve",
            "--check",
            "--config",
            str(config(tmp_path, card_only)),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and "model.onnx" in lines[0], lines


def test_version_is_printed() -> None:
    from stream_infer import __version__

    proc = subprocess.run(
        [sys.executable, "-m", "stream_infer.cli", "--version"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == f"stream-infer {__version__}"
