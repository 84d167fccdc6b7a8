"""Helpers for durability tests: the service as real OS processes, real BasicMotions streams fed
at a steady rate, and the offline reference to compare every prediction with.

A ``ServiceProcess`` is ``python -m stream_infer.cli serve --config FILE`` with a YAML file
written by the test; it is killed (``SIGKILL``), terminated (``SIGTERM``) or left to run, and
its log is kept in the test's temporary directory for the failure message.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import yaml
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

ROOT = Path(__file__).resolve().parents[1]
TS0 = 1_700_000_000_000


def _client_id(role: str) -> str:
    """A client id of its own: kafka-python 3 shares one network loop between clients of the
    same id in a process, so a client left wedged by a broker outage must not serve the next."""
    return f"test-{role}-{uuid.uuid4().hex[:8]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def service_config(bootstrap: str, topic: str, artifact: Path, instance: str, **over: Any) -> dict[str, Any]:
    """Settings for one instance: static membership, short session timeout, fast commits."""
    base: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "group_id": f"g-{topic}",
            "client_id": f"c-{topic}-{instance}",
            "group_instance_id": instance,
            "session_timeout_ms": 6000,
            "reconnect_backoff_max_ms": 1000,
        },
        "topics": {"input": topic, "output": f"{topic}.out"},
        "model": {"artifact": str(artifact), "backend": "onnxruntime"},
        "metrics": {"host": "127.0.0.1", "port": free_port()},
        "batcher": {"max_wait_ms": 5, "max_batch": 256},
        "delivery": {"commit_interval_ms": 1000},
        "shutdown_grace_s": 20,
    }
    return _merge(base, over)


class ServiceProcess:
    """One ``stream-infer serve`` process; stdout and stderr go to ``<dir>/<instance>-N.log``."""

    _n = 0

    def __init__(self, config: dict[str, Any], directory: Path) -> None:
        ServiceProcess._n += 1
        self.config = config
        self.name = f"{config['kafka']['group_instance_id']}-{ServiceProcess._n}"
        self.cfg_path = directory / f"{self.name}.yaml"
        self.cfg_path.write_text(yaml.safe_dump(config))
        self.log_path = directory / f"{self.name}.log"
        self.port = int(config["metrics"]["port"])
        self._log = self.log_path.open("wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_INFER_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream_infer.cli", "serve", "--config", str(self.cfg_path)],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def _get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, ""
        except OSError:
            return 0, ""

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while self._get("/readyz")[0] != 200:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} not ready in {timeout_s}s:\n{self.log()}")
            time.sleep(0.1)

    def metric(self, name: str) -> float:
        """Sum of every sample of ``name`` (labels included, e.g. ``name{a="b"}``)."""
        _, body = self._get("/metrics")
        total = 0.0
        for line in body.splitlines():
            if line.startswith(name) and line[len(name)] in " {":
                total += float(line.rsplit(" ", 1)[1])
        return total

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout_s: float) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"{self.name} did not exit within {timeout_s}s:\n{self.log()}") from None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self, tail: int = 60) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-tail:])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


# --- data: BasicMotions recordings as entity streams, and their reference ---


def entity_streams(n_entities: int, recordings_per_entity: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``n_entities`` streams [T, 6] float32, each a few real recordings back to back."""
    from stream_infer.model import datasets

    recs = datasets.basic_motions().values  # R recordings [T, 6]
    rng = np.random.default_rng(seed)
    return {
        f"ent-{i:03d}": np.concatenate(
            [recs[j] for j in rng.choice(len(recs), recordings_per_entity)]
        ).astype(np.float32)
        for i in range(n_entities)
    }


def reference(artifact: Path, streams: dict[str, np.ndarray]) -> dict[tuple[str, int], np.ndarray]:
    """(entity, seq of the hop's last sample) -> scores, computed offline with torch from zero state."""
    from stream_infer.model.export import load_model
    from stream_infer.model.train import predict_recording

    card, model = load_model(artifact)
    out: dict[tuple[str, int], np.ndarray] = {}
    for e, x in streams.items():
        y = predict_recording(model, x, card.window, card.hop)
        for i, row in enumerate(y):
            out[(e, card.window - 1 + i * card.hop)] = row
    return out


@dataclass
class Feeder:
    """Sends the streams round by round (one sample of every entity per round) at ``rate`` msg/s,
    on a thread; remembers each sample's (partition, offset)."""

    bootstrap: str
    topic: str
    streams: dict[str, np.ndarray]
    rate: float
    offsets: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    sent: int = 0

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._error: BaseException | None = None
        self._resume = threading.Event()
        self._resume.set()

    @property
    def total(self) -> int:
        return sum(len(x) for x in self.streams.values())

    def start(self) -> Feeder:
        self._thread.start()
        return self

    def pause(self) -> None:
        self._resume.clear()

    def resume(self) -> None:
        self._resume.set()

    def join(self, timeout_s: float = 120) -> None:
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "feeder did not finish"
        if self._error:
            raise self._error

    def _run(self) -> None:
        try:
            p = KafkaProducer(
                bootstrap_servers=self.bootstrap, client_id=_client_id("feeder"), linger_ms=2, acks="all"
            )
            futs = []
            n = max(len(x) for x in self.streams.values())
            t0 = time.monotonic()
            for i in range(n):
                self._resume.wait()
                for e, x in self.streams.items():
                    if i < len(x):
                        doc = {"seq": i, "ts": TS0 + 10 * i, "values": x[i].tolist()}
                        futs.append(((e, i), p.send(self.topic, key=e.encode(), value=orjson.dumps(doc))))
                        self.sent += 1
                ahead = self.sent / self.rate - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
            p.flush()
            for k, f in futs:
                md = f.get(30)
                self.offsets[k] = (md.partition, md.offset)
            p.close()
        except BaseException as exc:
            self._error = exc


def read_predictions(
    bootstrap: str, topic: str, expect: int, timeout_s: float = 60, committed_only: bool = True
) -> list[dict[str, Any]]:
    """Every record of ``topic`` from the start, once at least ``expect`` arrived (or the timeout),
    plus a short grace for extra ones (duplicates)."""
    c = KafkaConsumer(
        bootstrap_servers=bootstrap,
        client_id=_client_id("reader"),
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed" if committed_only else "read_uncommitted",
    )
    parts = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or [])]
    c.assign(parts)
    c.seek_to_beginning(*parts)
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    quiet_until = None
    while time.monotonic() < deadline:
        got = c.poll(timeout_ms=200)
        for recs in got.values():
            out.extend(orjson.loads(r.value) for r in recs)
        if len(out) >= expect:
            quiet_until = quiet_until or time.monotonic() + 1.0
            if time.monotonic() > quiet_until:
                break
    c.close()
    return out


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offsets (0 where none), read without joining the group."""
    c = KafkaConsumer(
        bootstrap_servers=bootstrap, client_id=_client_id("offsets"), group_id=group, enable_auto_commit=False
    )
    try:
        out = {}
        for p in range(partitions):
            out[p] = c.committed(TopicPartition(topic, p)) or 0
        return out
    finally:
        c.close(autocommit=False)


def open_transaction_records(bootstrap: str, topic: str, partitions: int) -> int:
    """Records of ``topic`` in transactions still open: the high watermark (read_uncommitted's
    end) minus the last stable offset (read_committed's end), summed over partitions."""
    parts = [TopicPartition(topic, p) for p in range(partitions)]
    ends = {}
    for iso in ("read_uncommitted", "read_committed"):
        c = KafkaConsumer(
            bootstrap_servers=bootstrap,
            client_id=_client_id(f"ends-{iso}"),
            group_id=None,
            isolation_level=iso,
        )
        try:
            ends[iso] = c.end_offsets(parts)
        finally:
            c.close()
    return sum(ends["read_uncommitted"][tp] - ends["read_committed"][tp] for tp in parts)


def check_against_reference(
    preds: list[dict[str, Any]], ref: dict[tuple[str, int], np.ndarray], atol: float = 1e-4
) -> dict[tuple[str, int], int]:
    """Assert every prediction equals the reference hop; return the count per (entity, seq)."""
    counts: dict[tuple[str, int], int] = {}
    wrong = []
    for p in preds:
        k = (p["entity"], p["seq"])
        counts[k] = counts.get(k, 0) + 1
        if k not in ref:
            wrong.append((k, "not a hop"))
        elif not np.allclose(p["scores"], ref[k], atol=atol):
            wrong.append((k, f"{p['scores']} != {ref[k].tolist()}"))
    assert not wrong, f"{len(wrong)} predictions differ from the reference, e.g. {wrong[:3]}"
    return counts
