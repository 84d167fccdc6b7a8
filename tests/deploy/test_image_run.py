"""The CPU image, built and run here: `deploy/image/test.sh` (what `make image-test` runs) builds
deploy/docker/Dockerfile.cpu with podman on a Debian base made with mmdebstrap, runs it as its
non-root user with a read-only root filesystem against the session's broker, and checks
/healthz, /readyz, every expected prediction, the HEALTHCHECK and a clean SIGTERM exit."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_the_cpu_image_builds_and_serves_read_only_as_its_user(kafka_bootstrap: str) -> None:
    if shutil.which("podman") is None and os.geteuid() != 0:
        pytest.skip("podman is not installed, and installing it (apt) needs root")
    if shutil.which("apt-get") is None and shutil.which("podman") is None:
        pytest.skip("podman is not installed and this is not a Debian system to install it on")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_INFER_")}
    proc = subprocess.run(
        [str(ROOT / "deploy" / "image" / "test.sh")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "== image-test passed" in out, out[-3000:]
    assert "exit code 0" in out and "predictions     all expected" in out, out[-3000:]
