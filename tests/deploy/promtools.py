"""Helpers for the deploy tests: tool lookup, PromQL metric names, and a throwaway Prometheus server.

`prometheus_server(scrape_port, tmp)` runs Debian's prometheus binary on 127.0.0.1 (a free port,
its own TSDB under ``tmp``) scraping ``127.0.0.1:scrape_port`` every second as job="stream-infer",
the job the alert rules and the dashboard select; `query(url, promql)` runs an instant query.
The tools come from .bin/ (deploy/tools/install.sh) or PATH.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "stream-infer"
RULES = CHART / "files" / "prometheus-rules.yaml"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "stream-infer.json"
JOB = "stream-infer"

# Metrics the rules use that other exporters provide, not stream-infer.
EXTERNAL_METRICS = {
    "up": "Prometheus itself",
    "kube_pod_container_status_restarts_total": "kube-state-metrics",
}

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created"),
    "info": ("_info",),
    "gauge": ("",),
}
# A metric name in PromQL: an identifier not followed by "(" (a function) and not a label name
# inside braces or a by/without list; only names with the service's prefix are collected.
_NAME = re.compile(r"\b(stream_infer_[a-zA-Z0-9_]+)\b")
_ANY_NAME = re.compile(r"(?<![\w\"'])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?=\{|\[)")


def tool(name: str) -> str | None:
    """Path of ``name`` in .bin/ or on PATH, or None."""
    local = REPO / ".bin" / name
    if local.exists():
        return str(local)
    return shutil.which(name)


def exported_metric_names(registry: CollectorRegistry) -> set[str]:
    """Every sample name the registry can expose, including labelled metrics with no children yet."""
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + s for s in _SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: stream_infer_* plus selectors like ``up{...}``."""
    names = set(_NAME.findall(expr))
    names.update(n for n in _ANY_NAME.findall(expr) if n not in {"by", "without", "on", "ignoring"})
    return names


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    """PromQL of every panel target and query variable (rows nest panels)."""
    exprs: list[str] = []

    def walk(panels: Iterable[dict[str, Any]]) -> None:
        for panel in panels:
            exprs.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
            walk(panel.get("panels", []))

    walk(dashboard.get("panels", []))
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            exprs.append(re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", q))
    return exprs


def rule_exprs(rules_file: Path = RULES) -> dict[str, str]:
    """{alert or record name: expr} of a Prometheus rule file."""
    doc = yaml.safe_load(rules_file.read_text())
    return {r.get("alert") or r["record"]: r["expr"] for g in doc["groups"] for r in g["rules"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout_s: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        return bytes(resp.read())


@dataclass
class PrometheusServer:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_prometheus(
    scrape_port: int,
    tmp: Path,
    *,
    rule_files: Iterable[Path] = (),
    binary: str | None = None,
    timeout_s: float = 30.0,
) -> PrometheusServer:
    """Start prometheus on a free 127.0.0.1 port scraping ``127.0.0.1:scrape_port`` every second.

    Waits for /-/ready; the caller must ``stop()`` it (or use ``prometheus_server``).
    """
    binary = binary or tool("prometheus")
    if binary is None:
        raise FileNotFoundError("prometheus not installed (deploy/tools/install.sh)")
    tmp.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [f"127.0.0.1:{scrape_port}"]}]}],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = tmp / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = PrometheusServer(f"http://127.0.0.1:{port}", proc, log)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            http_get(f"{server.url}/-/ready", timeout_s=1.0)
            return server
        except OSError:
            time.sleep(0.2)
    server.stop()
    raise TimeoutError(f"prometheus not ready in {timeout_s}s: {log.read_text()[-2000:]}")


@contextmanager
def prometheus_server(scrape_port: int, tmp: Path, **kwargs: Any) -> Iterator[str]:
    """``start_prometheus`` as a context manager yielding the server's URL."""
    server = start_prometheus(scrape_port, tmp, **kwargs)
    try:
        yield server.url
    finally:
        server.stop()


def query(url: str, promql: str) -> list[dict[str, Any]]:
    """Instant query; returns the result vector (``[{"metric": {...}, "value": [t, "v"]}, ...]``)."""
    body = json.loads(http_get(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"))
    if body.get("status") != "success":
        raise RuntimeError(f"query {promql!r} failed: {body}")
    data = body["data"]
    if data["resultType"] == "scalar":
        return [{"metric": {}, "value": data["result"]}]
    return list(data["result"])


def wait_for_value(url: str, promql: str, ok: Callable[[float], bool], timeout_s: float = 30.0) -> float:
    """Poll ``promql`` until its first sample satisfies ``ok``; returns that value."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        result = query(url, promql)
        if result:
            value = float(result[0]["value"][1])
            last = value
            if ok(value):
                return value
        time.sleep(0.5)
    raise TimeoutError(f"{promql!r} never satisfied the check in {timeout_s}s (last: {last})")
