"""The real service, running against the real broker with the trained model: promtool lints its
live scrape, every metric the dashboard and the alert rules use is in that scrape, and a real
Prometheus server scrapes it and answers a histogram_quantile query."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import pytest

from stream_infer.model.datasets import basic_motions
from stream_infer.replay import Replayer, sensor_streams
from tests.deploy.promtools import (
    DASHBOARD,
    EXTERNAL_METRICS,
    RULES,
    dashboard_exprs,
    http_get,
    prometheus_server,
    promql_metric_names,
    rule_exprs,
    tool,
    wait_for_value,
)
from tests.streaming import RunningService, settings_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        tool("prometheus") is None or tool("promtool") is None,
        reason="prometheus/promtool not installed: run deploy/tools/install.sh",
    ),
]


def test_live_service_scrape_lints_covers_dashboard_and_answers_quantiles(
    kafka_bootstrap, new_topic, sensor_model, tmp_path: Path
) -> None:
    topic = new_topic("live", partitions=2)
    # A primary and a shadow: the per-model series (agreement among them) are scraped live too.
    models = [
        {"name": "main", "artifact": str(sensor_model), "role": "primary"},
        {"name": "next", "artifact": str(sensor_model), "role": "shadow"},
    ]
    s = settings_for(kafka_bootstrap, topic, models=models, metrics={"host": "127.0.0.1"})
    test = basic_motions().subset("test")
    with RunningService(s) as rs:
        rs.wait_ready()
        port = rs.service.metrics_port
        stop = threading.Event()

        def feed() -> None:  # a steady trickle so rates and quantiles have data
            rp = Replayer(kafka_bootstrap, topic, "json", rate_events_s=800)
            n = 0
            while not stop.is_set():  # new entities each pass: a replayed seq would be a duplicate
                rp.run(sensor_streams(test.values, test.labels, 8, prefix=f"pass{n}"), progress=False)
                n += 1
            rp.close()

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        try:
            with prometheus_server(port, tmp_path / "prom", rule_files=[RULES]) as url:
                assert wait_for_value(url, 'up{job="stream-infer"}', lambda v: v == 1) == 1
                p99 = wait_for_value(
                    url,
                    "histogram_quantile(0.99, sum by (le) (rate(stream_infer_event_to_publish_seconds_bucket"
                    '{job="stream-infer"}[10s])))',
                    lambda v: v == v and v > 0,
                    timeout_s=60,
                )
                assert 0 < p99 < 5
            scrape = http_get(f"http://127.0.0.1:{port}/metrics")
        finally:
            stop.set()
            feeder.join(60)
    proc = subprocess.run([str(tool("promtool")), "check", "metrics"], input=scrape, capture_output=True)
    assert proc.returncode == 0, (proc.stdout + proc.stderr).decode()
    exposed = {ln.split("{")[0].split(" ")[0] for ln in scrape.decode().splitlines() if ln and ln[0] != "#"}
    used = set().union(*(promql_metric_names(e) for e in dashboard_exprs(json.loads(DASHBOARD.read_text()))))
    used |= set().union(*(promql_metric_names(e) for e in rule_exprs().values()))
    missing = used - exposed - set(EXTERNAL_METRICS)
    assert not missing, f"metrics used by the dashboard or rules but absent from a live scrape: {missing}"
