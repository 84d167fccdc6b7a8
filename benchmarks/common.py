"""What every benchmark shares: the machine record, repeats and medians, the report (table, JSON,
plots), the local broker, topics, and a fast pre-loader for input topics.

Timing rules: each figure is the median of ``repeats`` runs; a ratio is computed from figures
measured in the same process run (never across runs, the machine is shared); the spread
(min..max) is kept in the JSON so the noise is visible.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = Path(os.environ.get("STREAM_INFER_BENCH_DIR", ROOT / "docs" / "benchmarks"))
# --quick figures are smoke checks, not results: they never replace the committed ones.
QUICK_DIR = ROOT / ".local" / "bench-quick"
ARTIFACTS = Path(os.environ.get("STREAM_INFER_ARTIFACTS", ROOT / "artifacts"))
KAFKA_SH = ROOT / "deploy" / "local" / "kafka.sh"
K = TypeVar("K")
PACKAGES = ("numpy", "torch", "onnxruntime", "kafka-python", "confluent-kafka", "orjson", "prometheus-client")


# --- the machine -------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """CPU, cores, load, library versions and the environment variables that change speed."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
        "load_avg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "versions": versions,
        "env": {
            k: os.environ.get(k)
            for k in ("OPENBLAS_CORETYPE", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "KAFKA_BOOTSTRAP")
        },
    }
    with contextlib.suppress(Exception):
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["torch_blas"] = "mkl" if torch.backends.mkl.is_available() else "other"
    return info


# --- repeats -----------------------------------------------------------------------------------


@dataclass
class Stat:
    """Repeated measurements of one figure; ``median`` is what tables and ratios use."""

    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    def as_dict(self) -> dict[str, Any]:
        v = self.values
        return {
            "median": self.median,
            "min": min(v) if v else None,
            "max": max(v) if v else None,
            "runs": v,
        }


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 1, min_time_s: float = 0.0) -> Stat:
    """Seconds per call of ``fn``: ``repeats`` samples, each looping until ``min_time_s``."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        n = 0
        t0 = time.perf_counter()
        while True:
            fn()
            n += 1
            dt = time.perf_counter() - t0
            if dt >= min_time_s:
                break
        out.append(dt / n)
    return Stat(out)


def interleaved(
    fns: Mapping[K, Callable[[], Any]], repeats: int, warmup: int = 1, min_time_s: float = 0.0
) -> dict[K, Stat]:
    """Seconds per call of each of ``fns``, timed in turn within every repeat (ABAB, not AABB),
    so that load from other processes on a shared machine falls on all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out: dict[K, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            out[k].append(timed(fn, 1, warmup=0, min_time_s=min_time_s).values[0])
    return {k: Stat(v) for k, v in out.items()}


# --- the report --------------------------------------------------------------------------------


@dataclass
class Report:
    """One benchmark run: settings, result rows, ratios, targets; printed and written."""

    name: str
    settings: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    ratios: dict[str, float] = field(default_factory=dict)
    targets: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    columns: list[str] | None = None  # table column order (default: first seen)
    started: float = field(default_factory=time.time)

    def target(self, name: str, value: float, goal: float, higher_is_better: bool = True) -> None:
        met = value >= goal if higher_is_better else value <= goal
        self.targets.append({"target": name, "value": value, "goal": goal, "met": bool(met)})

    def table(self, columns: list[str] | None = None) -> str:
        rows = self.rows
        if not rows:
            return "(no rows)"
        cols = columns or self.columns or list(dict.fromkeys(k for r in rows for k in r))
        cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
        lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True))]
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
        return "\n".join(lines)

    def summary(self, columns: list[str] | None = None) -> str:
        out = [f"== {self.name}  ({cpu_model()}, {os.cpu_count()} cores)", self.table(columns)]
        if self.ratios:
            out.append("ratios (same run): " + ", ".join(f"{k} {v:.3g}" for k, v in self.ratios.items()))
        for t in self.targets:
            mark = "met" if t["met"] else "MISSED"
            out.append(f"target {t['target']}: {_fmt(t['value'])} vs {_fmt(t['goal'])} -> {mark}")
        out += [f"note: {n}" for n in self.notes]
        return "\n".join(out)

    def write(self, out_dir: Path = OUT_DIR) -> Path:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{self.name}.json"
        doc = {
            "benchmark": self.name,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
            "duration_s": round(time.time() - self.started, 1),
            "machine": machine(),
            "settings": self.settings,
            "rows": self.rows,
            "ratios": self.ratios,
            "targets": self.targets,
            "notes": self.notes,
            "plots": self.plots,
        }
        path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
        return path


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:
            return "nan"
        a = abs(v)
        if a >= 100:
            return f"{v:,.0f}"
        if a >= 1:
            return f"{v:.2f}"
        return f"{v:.3g}"
    return str(v)


def figure(report: Report, stem: str, out_dir: Path = OUT_DIR) -> tuple[Any, Any, Path]:
    """A matplotlib (Agg) figure and axes; the caller draws, then calls ``save``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    path = out_dir / f"{report.name}-{stem}.png"
    return fig, ax, path


def save(report: Report, fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.text(0.99, 0.01, f"{cpu_model()}, {os.cpu_count()} cores", ha="right", va="bottom", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    report.plots.append(path.name)


# --- the broker --------------------------------------------------------------------------------


def bootstrap() -> str:
    return os.environ.get("KAFKA_BOOTSTRAP", f"127.0.0.1:{os.environ.get('KAFKA_PORT', '9092')}")


def ensure_broker(timeout_s: float = 120.0) -> str:
    """The broker's bootstrap address; starts the local one if it is down (never stops it).

    Other engineers stop and start the same broker for fault tests, so this waits for it to
    answer rather than failing at the first refused connection.
    """
    if "KAFKA_BOOTSTRAP" in os.environ:
        return bootstrap()
    deadline = time.monotonic() + timeout_s
    while True:
        st = subprocess.run([str(KAFKA_SH), "status"], capture_output=True, text=True)
        if st.returncode == 0:
            return bootstrap()
        if st.returncode == 3:  # stopped: start it (idempotent; refuses if a foreign one answers)
            subprocess.run([str(KAFKA_SH), "start"], capture_output=True)
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Kafka broker is not ready after {timeout_s:.0f}s: {st.stdout.strip()}")
        time.sleep(1.0)


def new_topic_name(prefix: str) -> str:
    return f"bench-{prefix}-{uuid.uuid4().hex[:8]}"


def create_topics(servers: str, names: Iterable[str], partitions: int) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=servers.split(","), client_id="bench-admin")
    try:
        admin.create_topics([NewTopic(n, partitions, 1) for n in names])
    finally:
        admin.close()


def delete_topics(servers: str, names: Iterable[str]) -> None:
    """Best effort: benchmark topics are large; leaving them would fill the broker's disk."""
    from kafka import KafkaAdminClient

    names = [n for n in names if n]
    with contextlib.suppress(Exception):
        admin = KafkaAdminClient(bootstrap_servers=servers.split(","), client_id="bench-admin")
        try:
            admin.delete_topics(names)
        finally:
            admin.close()


@contextlib.contextmanager
def topics(servers: str, names: list[str], partitions: int) -> Iterator[list[str]]:
    create_topics(servers, names, partitions)
    try:
        yield names
    finally:
        delete_topics(servers, names)


def preload(
    servers: str, topic: str, records: Iterable[tuple[bytes, bytes, list[tuple[str, Any]] | None]]
) -> int:
    """Write records into ``topic`` as fast as possible (not what is measured): with
    confluent-kafka when installed (about 10x kafka-python's rate), else kafka-python."""
    n = 0
    try:
        from confluent_kafka import Producer
    except ImportError:
        from kafka import KafkaProducer

        kp = KafkaProducer(bootstrap_servers=servers.split(","), linger_ms=20, batch_size=1 << 20, acks=1)
        for key, value, headers in records:
            kp.send(topic, key=key, value=value, headers=headers or [])
            n += 1
        kp.flush()
        kp.close()
        return n
    p = Producer(
        {
            "bootstrap.servers": servers,
            "linger.ms": 20,
            "batch.size": 1 << 20,
            "queue.buffering.max.messages": 1_000_000,
            "acks": 1,
        }
    )
    for key, value, headers in records:
        while True:
            try:
                p.produce(topic, value=value, key=key, headers=headers)
                break
            except BufferError:
                p.poll(0.05)
        n += 1
        if n % 10_000 == 0:
            p.poll(0)
    left = p.flush(120)
    if left:
        raise RuntimeError(f"pre-loading {topic}: {left} records not delivered")
    return n


def end_offsets(servers: str, topic: str) -> int:
    """Sum of the high watermarks of ``topic`` (records written so far)."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=servers.split(","), group_id=None, client_id="bench-offsets")
    try:
        parts = c.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        return int(sum(c.end_offsets(tps).values())) if tps else 0
    finally:
        c.close()


class OffsetWatch:
    """Polls a topic's high watermarks from one reusable client (cheap enough to call at 20 Hz)."""

    def __init__(self, servers: str, topic: str) -> None:
        from kafka import KafkaConsumer

        self.topic = topic
        self._c = KafkaConsumer(bootstrap_servers=servers.split(","), group_id=None, client_id="bench-watch")
        self._tps: list[Any] = []

    def total(self) -> int:
        from kafka import TopicPartition

        if not self._tps:
            parts = self._c.partitions_for_topic(self.topic) or set()
            self._tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
            if not self._tps:
                return 0
        return int(sum(self._c.end_offsets(self._tps).values()))

    def close(self) -> None:
        self._c.close()


def out_dir(out: Path | None, quick: bool) -> Path:
    """Where a run writes: ``out`` when given, else the committed figures' folder, except for
    ``--quick`` runs, which go to ``QUICK_DIR``."""
    if out is not None:
        return out
    return QUICK_DIR if quick else OUT_DIR


def bench_main(
    doc: str | None, run: Callable[[bool, int | None, Path], Report], argv: list[str] | None
) -> int:
    """The shared command line of every benchmark module: --quick, --repeats, --out."""
    import argparse

    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--out", type=Path, default=None, help="default: docs/benchmarks (--quick: .local)")
    a = p.parse_args(argv)
    out = out_dir(a.out, a.quick)
    report = run(a.quick, a.repeats, out)
    print(report.summary())
    print(f"wrote {report.write(out)}")
    return 0
