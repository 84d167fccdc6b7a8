"""Supply chain: the serving image installs its dependencies from a lock file of pinned,
hashed versions that matches pyproject.toml's core dependencies; the audit of that lock finds no
known vulnerability (skipped, saying why, where the advisory source is out of reach)."""

from __future__ import annotations

import importlib.util
import re

import pytest
import tomllib
from packaging.requirements import Requirement

from tests.deploy.promtools import REPO

LOCK = REPO / "deploy" / "docker" / "requirements.lock"
PIN = re.compile(r"^([A-Za-z0-9._-]+)==(\S+) \\$", re.M)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_lock_pins_every_serving_dependency_with_hashes() -> None:
    text = LOCK.read_text()
    pins = {_norm(n): v for n, v in PIN.findall(text)}
    core = [
        Requirement(r)
        for r in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    ]
    missing = [str(r) for r in core if _norm(r.name) not in pins]
    assert not missing, f"not in {LOCK.name} (run `make lock`): {missing}"
    stale = [f"{r} (locked {pins[_norm(r.name)]})" for r in core if pins[_norm(r.name)] not in r.specifier]
    assert not stale, f"locked versions outside pyproject.toml's ranges (run `make lock`): {stale}"
    for block in re.split(r"\n(?=[A-Za-z0-9])", text.split("\n\n", 1)[-1]):
        if PIN.match(block):
            assert "--hash=sha256:" in block, f"no hash for {block.splitlines()[0]}"
    options = [ln for ln in text.splitlines() if ln.startswith("--")]
    assert "torch" not in pins and not options, options  # no index or find-links of one machine


@pytest.mark.slow
def test_no_known_vulnerability_in_the_locked_dependencies() -> None:
    if importlib.util.find_spec("pip_audit") is None:
        pytest.skip("pip-audit is not installed (the [dev] extra installs it)")
    spec = importlib.util.spec_from_file_location("audit", REPO / "deploy" / "tools" / "audit.py")
    assert spec and spec.loader
    audit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(audit)
    code, text = audit.audit(LOCK)
    if code == audit.UNREACHABLE:
        pytest.skip(f"advisory source out of reach: {text}")
    assert code == 0, text
