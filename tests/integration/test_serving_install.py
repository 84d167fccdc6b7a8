"""The serving install (``pip install stream-infer``, no extras) serves: the service runs as a
real process in which every package of the ``[train]``, ``[bench]`` and ``[gpu]`` extras fails
to import, as if not installed, and its predictions equal the offline reference. A command
that needs an extra says which, in one line. Its log (``logging.format: json``) is one JSON
object per line."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import tomllib
import yaml

from tests.processes import (
    ROOT,
    ServiceProcess,
    StreamFeeder,
    check_delivery,
    entity_streams,
    read_hops,
    reference,
    run_cli,
    service_config,
)

pytestmark = [pytest.mark.integration]

# Import names of every package that only an extra installs (pyproject.toml's extras).
EXTRA_ONLY = (
    "torch",
    "onnx",
    "onnxscript",
    "tqdm",
    "av",
    "pyts",
    "skimage",
    "skvideo",
    "tensorrt",
    "cuda",
    "matplotlib",
    "pyinstrument",
    # [registry]
    "fastavro",
    "grpc_tools",
)
# [kafka-python]: left out of the serving install too, unless it is the client under test.
KAFKA_PYTHON = ("kafka", "crc32c")


def test_the_serving_dependencies_leave_out_training_benchmarks_and_gpu() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"]).lower()
    for heavy in ("torch", "onnxscript", "pyts", "scikit", "av>", "tqdm", "matplotlib", "tensorrt"):
        assert heavy not in core, f"{heavy} is a serving dependency"
    assert {"train", "gpu", "bench", "dev", "kafka-python", "registry"} <= set(
        project["optional-dependencies"]
    )
    for extra_only in ("kafka-python", "crc32c", "fastavro", "grpcio-tools"):
        assert extra_only not in core, f"{extra_only} is a serving dependency"


def test_serve_runs_end_to_end_without_the_extras(
    kafka_bootstrap, new_topic, artifact, tmp_path: Path, procs, feeders
) -> None:
    topic = new_topic("slim", partitions=2)
    streams = entity_streams(4, 2, seed=5)
    ref = reference(artifact, streams)
    cfg = service_config(kafka_bootstrap, topic, artifact, "a", logging={"format": "json"})
    without = EXTRA_ONLY + (() if cfg["kafka"].get("client") == "kafka-python" else KAFKA_PYTHON)
    check = run_cli("serve", "--check", "--config", str(_write(tmp_path, cfg)), without=without)
    assert check.returncode == 0, check.stderr
    assert "engine ok" in check.stdout, check.stdout
    procs.append(p := ServiceProcess(cfg, tmp_path, without=without))
    p.wait_ready(120)
    feeders.append(feeder := StreamFeeder(kafka_bootstrap, topic, streams, 400))
    feeder.start()
    feeder.join(120)
    preds = read_hops(kafka_bootstrap, f"{topic}.out", set(ref), timeout_s=60)
    check_delivery(preds, ref, "at-least-once")
    assert p.terminate(30) == 0, p.log()
    lines = p.log(tail=100_000).splitlines()
    assert lines and all(orjson.loads(ln)["level"] for ln in lines), "not one JSON object per line"


def test_a_command_that_needs_an_extra_names_it(tmp_path: Path) -> None:
    proc = run_cli("train", "--out", str(tmp_path / "m"), without=EXTRA_ONLY)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and "pip install 'stream-infer[train]'" in lines[0], lines


def _write(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "check.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
