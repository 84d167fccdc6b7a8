"""``stream-infer predict`` writes what the service publishes: the same recordings replayed
offline and streamed through the real broker to the service give the same hops and scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from stream_infer.evaluate import entity_of
from stream_infer.model.datasets import load_recordings
from tests.model.helpers import write_user_dataset
from tests.processes import ServiceProcess, StreamFeeder, read_hops, run_cli, service_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_predict_equals_the_service(
    kafka_bootstrap: str, new_topic, artifact: Path, tmp_path: Path, procs, feeders
) -> None:
    data = tmp_path / "recordings"
    write_user_dataset(data, per_class=1)
    out = tmp_path / "predictions.jsonl"
    proc = run_cli("predict", str(artifact), "--data", str(data), "--split", "all", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    offline = {(p["entity"], p["seq"]): p for p in map(orjson.loads, out.read_bytes().splitlines())}

    recs = load_recordings(data)
    streams = {entity_of(i, n): v for i, (n, v) in enumerate(zip(recs.names, recs.values, strict=True))}
    topic = new_topic("predict", partitions=2)
    procs.append(p := ServiceProcess(service_config(kafka_bootstrap, topic, artifact, "a"), tmp_path))
    p.wait_ready(120)
    feeders.append(feeder := StreamFeeder(kafka_bootstrap, topic, streams, 2000))
    feeder.start()
    feeder.join(120)
    online = {
        (q["entity"], q["seq"]): q for q in read_hops(kafka_bootstrap, f"{topic}.out", set(offline), 60)
    }
    assert set(online) == set(offline)
    worst = max(
        float(np.max(np.abs(np.subtract(online[k]["scores"], offline[k]["scores"])))) for k in offline
    )
    assert worst <= 1e-5, worst
    assert all(online[k]["label"] == offline[k]["label"] for k in offline)
    # The poll loop's gaps are measured (scraped from the real endpoint) and short on average.
    gaps = p.metric("stream_infer_poll_gap_seconds_count")
    assert gaps > 0 and p.metric("stream_infer_poll_gap_seconds_sum") / gaps < 1.0
    assert p.terminate(30) == 0, p.log()
