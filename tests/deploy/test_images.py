"""Container images: the Dockerfiles lint clean, and the wheel they install carries what they need."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.deploy.promtools import REPO, tool

DOCKER = REPO / "deploy" / "docker"


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_dockerfile_lints_clean(name: str) -> None:
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed: run deploy/tools/install.sh")
    proc = subprocess.run([hadolint, str(DOCKER / name)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfiles_run_as_uid_10001_with_the_serve_command() -> None:
    for name in ("Dockerfile.cpu", "Dockerfile.gpu"):
        text = (DOCKER / name).read_text()
        assert "USER 10001:10001" in text
        assert 'CMD ["serve", "--config", "/etc/stream-infer/config.yaml"]' in text
        for copied in (
            "deploy/docker/config.yaml",
            "deploy/docker/config.gpu.yaml",
            "deploy/docker/gpu-entrypoint.sh",
        ):
            if copied in text:
                assert (REPO / copied).exists()
    assert 'ENTRYPOINT ["stream-infer"]' in (DOCKER / "Dockerfile.cpu").read_text()


def test_dockerignore_keeps_what_the_build_copies() -> None:
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for needed in ("pyproject.toml", "README.md", "stream_infer", "deploy/docker", "artifacts"):
        assert needed not in ignored


@pytest.mark.slow
def test_wheel_has_type_marker_and_console_script(tmp_path: Path) -> None:
    """The builder stage's first step (`pip wheel --no-deps .`), outside Docker."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0 and "No module named" in proc.stderr:
        pytest.skip(f"cannot build a wheel here: {proc.stderr.strip()[-200:]}")
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("stream_infer-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert "stream_infer/py.typed" in names
        # Tooling stays in the repository: the runtime wheel carries no benchmarks.
        assert not [n for n in names if n.startswith(("benchmarks/", "stream_infer/bench/", "tests/"))]
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        text = z.read(entry_points).decode()
    assert "[console_scripts]" in text
    assert "stream-infer = stream_infer.cli:main" in text
