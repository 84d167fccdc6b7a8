"""Chaos: a seeded random schedule of crashes and bad input against the service as a real OS
process, in both delivery guarantees.

Good traffic flows from 12 entities at a steady rate, one BasicMotions recording per round. In
every round, at random points: 1-3 bad messages of random kinds (undecodable bytes, a ``ts``
beyond int64, a NaN literal, a float32 overflow, a wrong shape, no key, a value whose dead letter
is larger than the dead-letter topic takes), and one fault: ``kill -9`` of the service (a new
process replaces it), ``kill -9`` of the broker (started again after a few seconds), or none.
The schedule holds at least one kill of each kind when there are two rounds or more.

At the end every good hop is accounted for - exactly once under exactly-once (read
``read_committed``), at least once with identical duplicates under at-least-once - with values
within 1e-5 of the offline reference, every bad message is on the dead-letter topic with its
reason, and the service never exited by itself.

``CHAOS_ROUNDS`` sets the number of rounds (default 4, about 1-2 minutes per guarantee);
``CHAOS_SEED`` replays a schedule (every failure message names its seed).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest

from tests.processes import (
    ROOT,
    Message,
    ServiceProcess,
    StreamFeeder,
    check_dead_letters,
    check_delivery,
    create_topic,
    entity_streams,
    read_dead_letters,
    read_hops,
    reference,
    service_config,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GUARANTEES = ["at-least-once", "exactly-once"]
ROUNDS = int(os.environ.get("CHAOS_ROUNDS", "4"))
N_ENTITIES = 12
SEGMENT = 100  # samples per entity and round: one recording, 9 hops (window 20, hop 10)
RATE = 300  # good messages per second: 25 rounds a second, a segment in 4 s
BIG_BYTES = 2 << 20  # a bad value below input.max_message_bytes, above the dead-letter topic's 1 MiB
BAD_KINDS = ("undecodable", "huge_ts", "nan", "overflow", "wrong_shape", "missing_key", "big")
FAULTS = ("kill_service", "kill_broker", "none")


def bad_message(kind: str, rng: np.random.Generator, entity: str, seq: int) -> tuple[Message, str]:
    """A bad message of ``kind`` and the reason the service must give it. Those with a key use a
    good entity's key and its next seq with other values: were one accepted, the good sample
    that follows would be dropped as a duplicate and the entity's predictions would change."""
    key = entity.encode()
    doc = {"seq": seq, "ts": 1_700_000_000_000 + 10 * seq, "values": [5.0] * 6}
    trace = [("trace", f"{kind}-{entity}-{seq}".encode())]
    if kind == "undecodable":
        return (key, rng.bytes(40) + b"\xff{", trace), "undecodable"
    if kind == "huge_ts":
        return (key, orjson.dumps({**doc, "ts": "99999999999999999999"}), trace), "bad_timestamp"
    if kind == "nan":  # what Python's json writes for NaN: not JSON
        return (key, json.dumps({**doc, "values": [float("nan")] * 6}).encode(), trace), "undecodable"
    if kind == "overflow":  # a double that float32 cannot hold
        return (key, orjson.dumps({**doc, "values": [1e39] * 6}), trace), "non_finite"
    if kind == "wrong_shape":
        return (key, orjson.dumps({**doc, "values": [5.0] * 5}), trace), "wrong_shape"
    if kind == "missing_key":
        return (None, orjson.dumps(doc), trace), "missing_key"
    if kind == "big":
        return (key, b"\xff" + rng.bytes(BIG_BYTES - 1), trace), "undecodable"
    raise ValueError(kind)


def kill_9_broker(own_broker) -> None:
    """SIGKILL the local broker (no clean shutdown: its logs are recovered at the next start)."""
    own_broker("status")  # fails unless the local broker is up and ours to control
    home = Path(os.environ.get("KAFKA_HOME_DIR", ROOT / ".local" / "kafka"))
    pid = int((home / "kafka.pid").read_text())
    assert "kafka.Kafka" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"), pid
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and "Z" not in _state(pid):
        assert time.monotonic() < deadline, f"broker pid {pid} still alive after SIGKILL"
        time.sleep(0.1)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def _schedule(seed: int, entities: list[str]) -> tuple[list[dict], dict[int, list[Message]], dict[int, str]]:
    """Per round: its fault, when it fires and how long the victim stays down; the bad messages
    (sent just before the round they are filed under) and their expected reasons (by ``id``)."""
    rng = random.Random(seed)
    nprng = np.random.default_rng(seed)
    faults = ["kill_service", "kill_broker"] + [rng.choice(FAULTS) for _ in range(max(0, ROUNDS - 2))]
    rng.shuffle(faults)
    plan, extra, reasons = [], {}, {}
    for r in range(ROUNDS):
        bad = []
        for _ in range(rng.randint(1, 3)):
            at = r * SEGMENT + rng.randrange(1, SEGMENT)
            kind, entity = rng.choice(BAD_KINDS), rng.choice(entities)
            msg, reason = bad_message(kind, nprng, entity, at)
            extra.setdefault(at, []).append(msg)
            reasons[id(msg)] = reason
            bad.append(f"{kind}@{at}")
        plan.append(
            {
                "fault": faults[r],
                "at": r * SEGMENT + rng.randint(20, 80),
                "down_s": round(rng.uniform(0.5, 5.0), 1),
                "bad": bad,
            }
        )
    return plan, extra, reasons


@contextlib.contextmanager
def _named(what: str, procs: list[ServiceProcess]) -> Iterator[None]:
    """Any failure inside names ``what`` (the seed and schedule that reproduce it) and carries
    the services' own account of the run (their stream_infer lines at INFO and above)."""
    try:
        yield
    except Exception as exc:
        story = "\n".join(f"--- {p.name}\n{_own_lines(p)}" for p in procs)
        raise AssertionError(f"{what}:\n{type(exc).__name__}: {exc}\nservice logs:\n{story}") from exc


def _own_lines(p: ServiceProcess, keep: int = 40) -> str:
    lines = [ln for ln in p.log(tail=100_000).splitlines() if " stream_infer." in ln]
    return "\n".join(ln[:300] for ln in lines[-keep:])


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_random_crashes_and_bad_messages_lose_no_good_hop(
    kafka_bootstrap, own_broker, new_topic, artifact, tmp_path: Path, procs, feeders, guarantee
):
    seed = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(2**32))
    topic = new_topic("chaos", partitions=3, **{"max.message.bytes": str(8 << 20)})
    create_topic(kafka_bootstrap, f"{topic}.dlq", 3)  # the broker default: 1 MiB records
    streams = entity_streams(N_ENTITIES, ROUNDS, seed=seed % 1000)
    ref = reference(artifact, streams)
    plan, extra, reasons = _schedule(seed, list(streams))
    cfg = service_config(
        kafka_bootstrap,
        topic,
        artifact,
        "a",
        delivery={"guarantee": guarantee},
        kafka={"request_timeout_ms": 10_000},
    )
    what = f"chaos seed {seed} (CHAOS_SEED={seed} CHAOS_ROUNDS={ROUNDS} replays it), schedule {plan}"
    print(what)

    def start() -> ServiceProcess:
        procs.append(p := ServiceProcess(cfg, tmp_path))
        p.wait_ready(120)
        return p

    def still_alive(p: ServiceProcess, when: str) -> None:
        assert p.alive(), f"the service exited by itself {when} (code {p.proc.returncode}):\n{p.log()}"

    with _named(what, procs):
        p = start()
        feeders.append(feeder := StreamFeeder(kafka_bootstrap, topic, streams, RATE, extra=extra))
        feeder.start(0)
        for r, step in enumerate(plan):
            feeder.release((r + 1) * SEGMENT)
            feeder.wait_round(step["at"], timeout_s=120)
            still_alive(p, f"before round {r}'s fault")
            if step["fault"] == "kill_service":
                p.kill()
                time.sleep(step["down_s"])
                p = start()
            elif step["fault"] == "kill_broker":
                kill_9_broker(own_broker)
                try:
                    time.sleep(step["down_s"])
                finally:
                    own_broker("start")
                still_alive(p, f"during round {r}'s broker kill")
            feeder.wait_idle(180)
        feeder.join(180)
        still_alive(p, "after the last round")
        preds = read_hops(kafka_bootstrap, f"{topic}.out", set(ref), timeout_s=180)
        still_alive(p, "at the end")
        counts = check_delivery(preds, ref, guarantee)
        expected = {o: (m, reasons[id(m)]) for m, o in feeder.extra_offsets}
        dlq = read_dead_letters(kafka_bootstrap, f"{topic}.dlq", set(expected), timeout_s=60)
        check_dead_letters(dlq, topic, expected, guarantee)
        for rec in dlq:  # the big ones are cut to fit the dead-letter topic
            h = dict(rec.headers)
            (_, value, _), _ = expected[int(h["source.partition"]), int(h["source.offset"])]
            if value is not None and len(value) >= 1 << 20:
                assert h.get("error.value_truncated") == b"%d" % len(value), h
        dups = sum(n - 1 for n in counts.values())
        print(f"{len(ref)} hops, {dups} duplicates, {len(dlq)} dead letters of {len(expected)} bad messages")
        rc = p.terminate(30)
        assert rc == 0, f"SIGTERM: exit code {rc}:\n{p.log()}"
