"""Helpers for integration tests: run a service in-process, feed it, read what it published."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer
from prometheus_client import CollectorRegistry

from stream_infer.config import Settings, load_settings
from stream_infer.service import Service


def settings_for(bootstrap: str, topic: str, artifact: str = "unused", **over: Any) -> Settings:
    base: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "group_id": f"g-{topic}",
            "client_id": f"c-{topic}",
            **client_choice(),
        },
        "topics": {"input": topic, "output": f"{topic}.out"},
        "model": {"artifact": artifact},
        "metrics": {"port": 0, "host": "127.0.0.1"},
        "batcher": {"max_wait_ms": 5},
        "delivery": {"commit_interval_ms": 300},
    }
    if over.get("models"):
        del base["model"]  # several models: each entry names its own artifact
    return load_settings(None, **_merge(base, over))


def client_choice() -> dict[str, str]:
    """``kafka.client`` from ``KAFKA_CLIENT`` (the test command runs the broker suites once per
    client); the settings' default when unset."""
    client = os.environ.get("KAFKA_CLIENT")
    return {"client": client} if client else {}


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class RunningService:
    """A Service running its loop on a thread, stopped (gracefully) on exit."""

    def __init__(self, settings: Settings, **kw: Any) -> None:
        self.registry = CollectorRegistry()
        self.service = Service(settings, registry=self.registry, **kw)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.service.run()
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> RunningService:
        self.service.start()
        self.thread.start()
        return self

    def wait_ready(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.service.health.ready:
            if time.monotonic() > deadline:
                raise TimeoutError("service not ready")
            time.sleep(0.05)

    def stop(self) -> None:
        self.service.stop()
        self.thread.join(60)
        if self.error:
            raise self.error

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def produce_json(bootstrap: str, topic: str, messages: Iterable[tuple[str, Any]], **kw: Any) -> int:
    p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, **kw)
    n = 0
    for key, doc in messages:
        value = doc if isinstance(doc, bytes | type(None)) else orjson.dumps(doc)
        p.send(topic, key=key.encode() if isinstance(key, str) else key, value=value)
        n += 1
    p.flush()
    p.close()
    return n


def read_topic(
    bootstrap: str, topic: str, expect: int, timeout_s: float = 60, committed_only: bool = True
) -> list[Any]:
    """Read ``topic`` from the start until ``expect`` records arrived (or the timeout)."""
    c = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        isolation_level="read_committed" if committed_only else "read_uncommitted",
    )
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < expect and time.monotonic() < deadline:
        for recs in c.poll(timeout_ms=200).values():
            out.extend(recs)
    # a short extra wait catches duplicates beyond the expected count
    end = time.monotonic() + 0.5
    while time.monotonic() < end:
        for recs in c.poll(timeout_ms=100).values():
            out.extend(recs)
    c.close()
    return out


def predictions(records: list[Any]) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in records]
