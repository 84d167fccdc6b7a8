"""Schema-registry input end to end: Avro samples in the Confluent wire format through the real
broker into the service (a real process), schemas fetched from a registry endpoint served by the
test (``tests/registry.py``: the Confluent API's read path); predictions equal the offline
reference, and values the registry cannot explain go to the dead-letter topic with their reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.processes import (
    ServiceProcess,
    StreamFeeder,
    check_dead_letters,
    check_delivery,
    entity_streams,
    read_dead_letters,
    read_hops,
    reference,
    service_config,
)
from tests.registry import PROTO_BAD_ID, serve_registry, wire

pytestmark = [pytest.mark.integration]


def test_avro_samples_are_served_and_unexplained_values_dead_lettered(
    kafka_bootstrap, new_topic, artifact, tmp_path: Path, procs, feeders
) -> None:
    topic = new_topic("avro", partitions=2)
    streams = entity_streams(6, 2, seed=3)
    ref = reference(artifact, streams)
    bad = [
        ((b"ent-000", wire(4242, b"\x02"), []), "unknown_schema"),
        ((b"ent-001", b"\x07" + bytes(12), []), "undecodable"),
        ((b"ent-002", wire(PROTO_BAD_ID, b"\x00"), []), "unsupported_schema"),
    ]
    reasons = {id(m): r for m, r in bad}
    with serve_registry() as (url, asked):
        cfg = service_config(
            kafka_bootstrap, topic, artifact, "a", input={"format": "registry", "schema_registry_url": url}
        )
        procs.append(p := ServiceProcess(cfg, tmp_path))
        p.wait_ready(120)
        extra = {40: [m for m, _ in bad]}
        feeders.append(feeder := StreamFeeder(kafka_bootstrap, topic, streams, 400, "registry", extra=extra))
        feeder.start()
        feeder.join(120)
        preds = read_hops(kafka_bootstrap, f"{topic}.out", set(ref), timeout_s=60)
        check_delivery(preds, ref, "at-least-once")
        expected = {o: (m, reasons[id(m)]) for m, o in feeder.extra_offsets}
        dlq = read_dead_letters(kafka_bootstrap, f"{topic}.dlq", set(expected), timeout_s=30)
        check_dead_letters(dlq, topic, expected, "at-least-once")
        assert p.terminate(30) == 0, p.log()
    assert asked.count(1) == 1, f"schema 1 fetched {asked.count(1)} times: not cached"
