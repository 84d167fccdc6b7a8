"""A real Prometheus server scrapes the service's /metrics endpoint and answers the dashboard's queries.

The endpoint here is stream_infer.health.serve_http over a fresh ``Metrics`` registry fed by a
background thread; the same helpers (tests/deploy/promtools.py) point at the real service.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from stream_infer.health import Health, serve_http
from stream_infer.metrics import Metrics
from tests.deploy.promtools import (
    DASHBOARD,
    RULES,
    dashboard_exprs,
    http_get,
    prometheus_server,
    promql_metric_names,
    query,
    tool,
    wait_for_value,
)

pytestmark = pytest.mark.skipif(
    tool("prometheus") is None or tool("promtool") is None,
    reason="prometheus/promtool not installed: run deploy/tools/install.sh",
)


def _feed(m: Metrics, stop: threading.Event) -> None:
    """Traffic shaped like the service's: every latency 20ms, batches of 32, one bad message a tick."""
    rng = np.random.default_rng(0)
    while not stop.is_set():
        m.messages.inc(40)
        m.events.inc(400)
        m.predictions.inc(32)
        m.event_to_publish.observe_many(np.full(32, 0.02))
        m.queue_wait.observe_many(rng.uniform(0.001, 0.004, 32))
        m.engine_time.observe(0.003)
        m.batch_size.observe(32)
        m.commit_time.observe(0.01)
        m.commits.inc()
        m.invalid.labels(reason="bad_json").inc()
        m.dead_letters.inc()
        # two models on the stream: the primary and a shadow that agrees on most hops
        for model in ("main", "next"):
            m.model_predictions.labels(model, "primary" if model == "main" else "shadow", "published").inc(32)
            m.model_latency.labels(model).observe_many(np.full(32, 0.02))
            m.model_engine_time.labels(model).observe(0.003)
            m.model_batch_size.labels(model).observe(32)
        m.model_agreement.labels("next", "same").inc(30)
        m.model_agreement.labels("next", "different").inc(2)
        m.model_abs_diff.labels("next").observe(0.01)
        stop.wait(0.1)


@pytest.fixture
def metrics_endpoint() -> Iterator[tuple[int, Metrics]]:
    registry = CollectorRegistry()
    m = Metrics(registry)
    # Touch every labelled metric once so that each family has a sample to scrape.
    for labelled, label in (
        (m.dropped, "duplicate"),
        (m.resets, "seq_gap"),
        (m.evicted, "idle"),
        (m.rebalances, "assigned"),
        (m.kafka_errors, "poll"),
        (m.invalid, "bad_json"),
    ):
        labelled.labels(label).inc(0)
    m.lag.labels(topic="sensor-events", partition="0").set(5)
    m.unstable_records.labels(topic="sensor-events", partition="0").set(0)
    m.lso_stuck.labels(topic="sensor-events", partition="0").set(0)
    m.restored.inc(3)
    for model, role in (("main", "primary"), ("next", "shadow")):
        m.model_predictions.labels(model, role, "published").inc(0)
        m.model_latency.labels(model).observe_many(np.full(1, 0.02))
        m.model_engine_time.labels(model).observe(0.003)
        m.model_batch_size.labels(model).observe(32)
    m.model_agreement.labels("next", "same").inc(0)
    m.model_abs_diff.labels("next").observe(0.0)
    m.engine_errors.inc(0)
    m.isolated.inc(0)
    for gauge, value in (
        (m.active_entities, 10),
        (m.slot_capacity, 1000),
        (m.assigned, 1),
        (m.paused, 0),
        (m.queue_depth, 2),
        (m.ready, 1),
    ):
        gauge.set(value)
    m.model.info({"name": "basicmotions", "version": "1", "backend": "onnxruntime"})
    health = Health()
    health.engine_loaded = health.partitions_assigned = True
    server = serve_http(health, 0, "127.0.0.1", registry)
    stop = threading.Event()
    feeder = threading.Thread(target=_feed, args=(m, stop), daemon=True)
    feeder.start()
    try:
        yield server.server_port, m
    finally:
        stop.set()
        feeder.join()
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_prometheus_scrapes_the_endpoint_and_answers_dashboard_queries(
    metrics_endpoint: tuple[int, Metrics], tmp_path: Path
) -> None:
    port, _ = metrics_endpoint
    scrape = http_get(f"http://127.0.0.1:{port}/metrics")
    # promtool's exposition lint (the same check the lead runs on the live service).
    proc = subprocess.run([str(tool("promtool")), "check", "metrics"], input=scrape, capture_output=True)
    assert proc.returncode == 0, (proc.stdout + proc.stderr).decode()
    exposed = {
        line.split("{")[0].split(" ")[0]
        for line in scrape.decode().splitlines()
        if line and not line.startswith("#")
    }
    dashboard = json.loads(DASHBOARD.read_text())
    missing = set().union(*(promql_metric_names(e) for e in dashboard_exprs(dashboard))) - exposed
    assert not missing, f"dashboard metrics absent from the scrape: {missing}"

    with prometheus_server(port, tmp_path / "prom", rule_files=[RULES]) as url:
        assert wait_for_value(url, 'up{job="stream-infer"}', lambda v: v == 1) == 1
        # The dashboard's p99 panel and the SLO alert's query: all observations are 20ms, in the
        # (10ms, 25ms] bucket, so the interpolated quantile lies inside it.
        p99 = wait_for_value(
            url,
            "histogram_quantile(0.99, sum by (le) (rate(stream_infer_event_to_publish_seconds_bucket"
            '{job="stream-infer"}[5s])))',
            lambda v: v == v,
        )  # not NaN
        assert 0.01 < p99 <= 0.025
        rate = wait_for_value(
            url, 'sum(rate(stream_infer_predictions_total{job="stream-infer"}[5s]))', lambda v: v > 0
        )
        assert 10 < rate < 1000  # ~32 per 0.1 s tick when the machine is idle; fewer when it is busy
        # The rules loaded, and the dead-letter alert fires on the bad messages fed above.
        wait_for_value(url, 'count(ALERTS{alertname="StreamInferDeadLetters"})', lambda v: v >= 1)
        assert not query(url, 'ALERTS{alertname="StreamInferDown"}')
