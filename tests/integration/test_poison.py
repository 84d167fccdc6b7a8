"""No single message can make the service lose good data.

Each test runs the service as a real OS process on real BasicMotions streams, sends one kind of
dangerous message mid-stream between good traffic, in both delivery guarantees, and checks that
the process stays up, that the message is on the dead-letter topic with the expected reason and
headers, and that every good hop is predicted - exactly once under exactly-once (read
``read_committed``), at least once with identical duplicates under at-least-once - with values
within 1e-5 of the offline reference. The service is then stopped (SIGTERM) and started again
for the second half of the streams: a sample skipped or a state lost at the bad message, the
stop or the restore would show up as a missing hop, a prediction out of phase or a wrong value.

The dangerous messages:

* a ``ts`` that is a digit string beyond int64 (JSON field, or the ``ts`` header of f32);
* a bad message whose dead letter is larger than the dead-letter topic accepts (the topic exists
  before the service starts, with the broker's default ``max.message.bytes`` of 1 MiB);
* a poll with more new entities than free slots, and one with more than ``max_entities``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Container
from pathlib import Path

import numpy as np
import orjson
import pytest

from tests.processes import (
    Message,
    Origin,
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

pytestmark = pytest.mark.integration

GUARANTEES = ["at-least-once", "exactly-once"]
N_ENTITIES, RECORDINGS = 8, 2  # 200 samples per entity: 19 hops (window 20, hop 10)
HALF = 100  # rounds sent before the restart
RATE = 400  # good messages per second: 50 rounds a second, each half in 2 s
HUGE_TS = b"99999999999999999999"  # > 2**63


def _start(cfg: dict, tmp_path: Path, procs: list[ServiceProcess]) -> ServiceProcess:
    procs.append(p := ServiceProcess(cfg, tmp_path))
    p.wait_ready(90)
    return p


def _wait_processed(p: ServiceProcess, messages: int, predictions: int, timeout_s: float = 45) -> None:
    """Until ``p`` has consumed ``messages`` and published ``predictions``; fails at once if the
    process exits."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert p.alive(), f"the service exited with code {p.proc.returncode}:\n{p.log()}"
        got = p.metric("stream_infer_messages_total"), p.metric("stream_infer_predictions_total")
        if got[0] >= messages and got[1] >= predictions:
            return
        assert time.monotonic() < deadline, (
            f"the service consumed {got[0]:.0f}/{messages} messages and published "
            f"{got[1]:.0f}/{predictions} predictions in {timeout_s}s:\n{p.log()}"
        )
        time.sleep(0.1)


def _hops(ref: dict[tuple[str, int], np.ndarray], entities: Container[str], lo: int, hi: int) -> int:
    """How many hops of ``entities`` end at a seq in [lo, hi)."""
    return sum(1 for e, seq in ref if e in entities and lo <= seq < hi)


def _stop_restart_finish(
    cfg: dict,
    tmp_path: Path,
    procs: list[ServiceProcess],
    feeder: StreamFeeder,
    ref: dict[tuple[str, int], np.ndarray],
    before_stop: Callable[[ServiceProcess], None] = lambda p: None,
) -> ServiceProcess:
    """Serve the first ``HALF`` rounds (bad messages included), check ``before_stop``, SIGTERM,
    start a new process and send the rest; wait until it has consumed and predicted that.
    Returns the running second process."""
    p1 = _start(cfg, tmp_path, procs)
    feeder.start(HALF)
    feeder.wait_idle()
    first = feeder.sent
    _wait_processed(p1, first, _hops(ref, feeder.streams, 0, HALF))
    before_stop(p1)
    rc = p1.terminate(30)
    assert rc == 0, f"SIGTERM: exit code {rc}:\n{p1.log()}"
    p2 = _start(cfg, tmp_path, procs)
    feeder.join()
    _wait_processed(p2, feeder.sent - first, _hops(ref, feeder.streams, HALF, feeder.rounds))
    return p2


def _expected_dead_letters(
    feeder: StreamFeeder, reasons: dict[int, str]
) -> dict[Origin, tuple[Message, str]]:
    """origin -> (message, reason) of the extra messages whose ``id`` is in ``reasons``."""
    return {o: (m, reasons[id(m)]) for m, o in feeder.extra_offsets if id(m) in reasons}


def _check_dead_lettered(
    bootstrap: str, topic: str, feeder: StreamFeeder, reasons: dict[int, str], guarantee: str
) -> list:
    expected = _expected_dead_letters(feeder, reasons)
    assert len(expected) == len(reasons)
    dlq = read_dead_letters(bootstrap, f"{topic}.dlq", set(expected), timeout_s=30)
    check_dead_letters(dlq, topic, expected, guarantee)
    return dlq


@pytest.mark.parametrize("fmt", ["json", "f32"])
@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_a_timestamp_beyond_int64_is_dead_lettered_and_no_good_sample_of_its_poll_is_skipped(
    kafka_bootstrap, new_topic, artifact, tmp_path: Path, procs, feeders, guarantee, fmt
):
    topic = new_topic(f"huge-ts-{fmt}", partitions=2)
    streams = entity_streams(N_ENTITIES, RECORDINGS, seed=11)
    ref = reference(artifact, streams)
    # The next seq of a good entity, with other values: were it accepted, the good sample that
    # follows would be dropped as a duplicate and the entity's predictions would change.
    at, row = 50, np.full(6, 5.0, np.float32)
    if fmt == "json":
        doc = {"seq": at, "ts": HUGE_TS.decode(), "values": row.tolist()}
        bad: Message = (b"ent-000", orjson.dumps(doc), [("trace", b"t-1")])
    else:
        bad = (b"ent-000", row.astype("<f4").tobytes(), [("seq", b"%d" % at), ("ts", HUGE_TS)])
    feeders.append(feeder := StreamFeeder(kafka_bootstrap, topic, streams, RATE, fmt, extra={at: [bad]}))
    cfg = service_config(
        kafka_bootstrap, topic, artifact, "a", delivery={"guarantee": guarantee}, input={"format": fmt}
    )
    p2 = _stop_restart_finish(cfg, tmp_path, procs, feeder, ref)
    preds = read_hops(kafka_bootstrap, f"{topic}.out", set(ref), timeout_s=60)
    assert p2.alive(), f"the service exited with code {p2.proc.returncode}:\n{p2.log()}"
    _check_dead_lettered(kafka_bootstrap, topic, feeder, {id(bad): "bad_timestamp"}, guarantee)
    check_delivery(preds, ref, guarantee)
    assert p2.terminate(30) == 0, p2.log()


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_a_dead_letter_larger_than_the_dead_letter_topic_takes_lands_truncated(
    kafka_bootstrap, new_topic, artifact, tmp_path: Path, procs, feeders, guarantee
):
    # The input takes 8 MiB records; the dead-letter topic, made first, keeps the 1 MiB default.
    topic = new_topic("big-dlq", partitions=2, **{"max.message.bytes": str(8 << 20)})
    create_topic(kafka_bootstrap, f"{topic}.dlq", 2)
    streams = entity_streams(N_ENTITIES, RECORDINGS, seed=12)
    ref = reference(artifact, streams)
    size = 2 << 20  # below input.max_message_bytes (4 MiB): undecodable, not oversized
    value = b"\xff" + np.random.default_rng(12).bytes(size - 1)  # not JSON
    bad: Message = (b"ent-001", value, [("trace", b"t-2")])
    feeders.append(feeder := StreamFeeder(kafka_bootstrap, topic, streams, RATE, extra={50: [bad]}))
    cfg = service_config(kafka_bootstrap, topic, artifact, "a", delivery={"guarantee": guarantee})
    p2 = _stop_restart_finish(cfg, tmp_path, procs, feeder, ref)
    preds = read_hops(kafka_bootstrap, f"{topic}.out", set(ref), timeout_s=60)
    assert p2.alive(), f"the service exited with code {p2.proc.returncode}:\n{p2.log()}"
    dlq = _check_dead_lettered(kafka_bootstrap, topic, feeder, {id(bad): "undecodable"}, guarantee)
    for r in dlq:
        h = dict(r.headers)
        assert h.get("error.value_truncated") == b"%d" % size, h
        assert 0 < len(r.value) < 1 << 20
    check_delivery(preds, ref, guarantee)
    assert p2.terminate(30) == 0, p2.log()


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_more_new_entities_in_a_poll_than_free_slots_page_out_the_least_recent_not_the_good_ones(
    kafka_bootstrap, new_topic, artifact, tmp_path: Path, procs, feeders, guarantee
):
    """64 slots; 8 good entities stream throughout. Before the restart: a burst of 40 new
    entities (one valid sample each, never a window), then 40 others in one poll - room for
    them needs the first burst paged out to the disk tier, while the good entities, seen since,
    keep their state in memory. After the restart (every entity restored: nothing was deleted,
    what memory cannot hold goes to the disk tier) and the good streams' end: 72 new entities in
    one poll (more than all slots: handled in parts), then 4 new good entities, which must start
    from zero state."""
    cap = 64
    topic = new_topic("slots", partitions=1)  # one partition: each burst is one record batch, one poll
    streams = entity_streams(N_ENTITIES, RECORDINGS, seed=13)
    late = {f"late-{i}": x for i, x in enumerate(entity_streams(4, 1, seed=14).values())}
    ref = reference(artifact, streams) | reference(artifact, late)
    rng = np.random.default_rng(13)

    def burst(name: str, n: int) -> list[Message]:
        doc = {"seq": 0, "ts": 1_700_000_000_000, "values": [0.0] * 6}
        return [
            (f"{name}-{i:02d}".encode(), orjson.dumps({**doc, "values": rng.normal(size=6).tolist()}), [])
            for i in range(n)
        ]

    feeders.append(
        feeder := StreamFeeder(
            kafka_bootstrap, topic, streams, RATE, extra={30: burst("a", 40), 60: burst("b", 40)}
        )
    )
    cfg = service_config(
        kafka_bootstrap,
        topic,
        artifact,
        "a",
        delivery={"guarantee": guarantee},
        entities={"max_entities": cap},
    )

    def paged_out(p: ServiceProcess) -> float:
        return p.metric("stream_infer_entities_paged_out_total")

    def room_was_made(p1: ServiceProcess) -> None:
        assert paged_out(p1) >= N_ENTITIES + 40 + 40 - cap, p1.log()
        assert p1.metric('stream_infer_entities_evicted_total{reason="ttl"}') == 0, p1.log()

    p2 = _stop_restart_finish(cfg, tmp_path, procs, feeder, ref, before_stop=room_was_made)
    # The good entities are done: now the burst bigger than all slots, then new good entities.
    feeders.append(tail := StreamFeeder(kafka_bootstrap, topic, late, RATE, extra={0: burst("c", cap + 8)}))
    tail.start().join()
    _wait_processed(p2, 0, _hops(ref, streams, HALF, feeder.rounds) + _hops(ref, late, 0, tail.rounds))
    preds = read_hops(kafka_bootstrap, f"{topic}.out", set(ref), timeout_s=60)
    assert p2.alive(), f"the service exited with code {p2.proc.returncode}:\n{p2.log()}"
    check_delivery(preds, ref, guarantee)
    restored = p2.metric("stream_infer_state_restored_entities_total")
    assert restored >= N_ENTITIES + 80, p2.log()  # the good ones and both bursts
    seen = restored + cap + 8 + len(late)  # distinct entities the second process held
    assert paged_out(p2) >= seen - cap, p2.log()
    assert p2.metric("stream_infer_entities_refused_total") == 0, p2.log()
    assert p2.metric("stream_infer_invalid_events_total") == 0
    assert p2.terminate(30) == 0, p2.log()
