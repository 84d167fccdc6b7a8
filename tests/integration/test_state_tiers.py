"""State beyond memory, end to end: an entity never loses its state to the slot cap.

``entities.max_entities`` slots hold entities in memory; when they run short the least recently
seen are paged out to the disk tier (``entities.disk_path``) and paged back in - window
tail, state tensors, last seq, segment fields - with their next samples. Nothing is deleted for
memory's sake, so a fleet larger than the cap or a flood of one-sample keys must neither reset a
live device nor lose or shift one of its predictions. Only when no tier has room (a full memory
with ``entities.on_full: refuse_new``, or memory and the disk tier both full) are NEW entities
refused, their records dead-lettered as ``over_capacity``; an entity already admitted - in
memory or paged out - is never refused, reset or deleted.

Each test runs ``stream-infer serve`` as a real process on the real broker in both delivery
guarantees, with the issue's shapes scaled down to about a minute here: a backlog flood of
one-sample keys read while live devices stream, more round-robin devices than slots, a fleet of
ten times the cap cycling through the pod, newcomers refused by a full memory, and devices
coming back to a pod whose two tiers are full. The input is fed to a point and committed (the
changelog then holds every entity seen, paged out or not), fed further, and the service is
killed with ``kill -9`` once it consumed that: the successor restores from the
changelog - the durable copy; its disk tier, the same directory, is emptied at start and
rebuilt from the changelog - and the rest is fed. Every hop of every live entity must then be
published at its seq with the scores of the offline ``reference`` (state carried per entity
from zero, never reset): exactly once under exactly-once, at least once with identical
duplicates under at-least-once - and there only of input the killed process had not committed
(the replay). The paging counters show the cap was really exceeded; the in-memory and disk
gauges that every entity ever seen is still held.
"""

from __future__ import annotations

import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from kafka import KafkaProducer

from tests.processes import (
    TS0,
    Message,
    Origin,
    ServiceProcess,
    StreamFeeder,
    TopicReader,
    check_dead_letters,
    check_delivery,
    committed_offsets,
    connection,
    entity_streams,
    good_message,
    read_dead_letters,
    read_hops,
    reference,
    service_config,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GUARANTEES = ["at-least-once", "exactly-once"]
PARTITIONS = 2
COMMIT_MS = 3000  # the kill lands before the next commit most of the time: input is read again
PAGED_OUT = "stream_infer_entities_paged_out_total"
PAGED_IN = "stream_infer_entities_paged_in_total"
THRASH = "stream_infer_entities_thrash_total"
REFUSED = "stream_infer_entities_refused_total"
RESTORED = "stream_infer_state_restored_entities_total"
RESETS = "stream_infer_entity_resets_total"
EVICTED = "stream_infer_entities_evicted_total"
DEAD = "stream_infer_dead_letters_total"
ACTIVE = "stream_infer_active_entities"
ON_DISK = "stream_infer_disk_entities"

Feed = Callable[[int], int]  # stage (0: to the commit, 1: to the kill, 2: the rest) -> messages sent


def _config(
    bootstrap: str, topic: str, artifact: Path, tmp_path: Path, guarantee: str, **entities: Any
) -> dict[str, Any]:
    """One instance; its disk tier in a directory the successor reuses (emptied at start)."""
    ent = {"disk_path": str(tmp_path / "tier"), "disk_max_bytes": 64 << 20, **entities}
    return service_config(
        bootstrap,
        topic,
        artifact,
        "a",
        delivery={"guarantee": guarantee, "commit_interval_ms": COMMIT_MS},
        entities=ent,
    )


def _wait(cond: Callable[[], bool], timeout_s: float, what: str, p: ServiceProcess) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert p.alive(), f"the service exited with code {p.proc.returncode}:\n{p.log()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{p.log()}"
        time.sleep(0.1)


def _start(cfg: dict[str, Any], tmp_path: Path, procs: list[ServiceProcess]) -> ServiceProcess:
    procs.append(p := ServiceProcess(cfg, tmp_path))
    p.wait_ready(120)
    return p


def _kill_9_in_the_middle(
    bootstrap: str,
    cfg: dict[str, Any],
    tmp_path: Path,
    procs: list[ServiceProcess],
    feed: Feed,
    partitions: int = PARTITIONS,
    backlog: bool = False,
) -> tuple[dict[str, float], ServiceProcess, dict[int, int]]:
    """Serve stage 0 (``backlog``: written before the service starts) and wait for its commit,
    serve stage 1, ``kill -9`` once it is consumed, start a successor and feed stage 2; wait
    until the successor consumed everything not committed. Returns the killed process's
    counters (read just before the kill), the running successor and the offsets committed at
    the kill, per partition."""
    topic, group = cfg["topics"]["input"], cfg["kafka"]["group_id"]

    def committed() -> dict[int, int]:
        return committed_offsets(bootstrap, group, topic, partitions)

    sent = feed(0) if backlog else 0
    p1 = _start(cfg, tmp_path, procs)
    sent = sent or feed(0)
    _wait(
        lambda: sum(committed().values()) >= sent, COMMIT_MS / 1000 + 60, f"the commit of {sent} messages", p1
    )
    sent = feed(1)
    p1.wait_metric("stream_infer_messages_total", sent, 90)
    before = {name: p1.metric(name) for name in (PAGED_OUT, PAGED_IN, THRASH, REFUSED, RESETS, EVICTED, DEAD)}
    p1.kill()
    time.sleep(1)  # a commit the broker had received completes
    at_kill = committed()
    if sum(at_kill.values()) >= sent:  # a loaded machine can miss the window: the checks still hold
        warnings.warn(f"the kill came after the commit of all {sent} messages", stacklevel=1)
    p2 = _start(cfg, tmp_path, procs)
    total = feed(2)
    p2.wait_metric("stream_infer_messages_total", total - sum(at_kill.values()), 120)
    return before, p2, at_kill


def _early(counts: dict[Any, int], origin: dict[Any, Origin], committed: dict[int, int]) -> list[Any]:
    """What was output more than once though its input was committed before the kill (a replay
    repeats uncommitted input only)."""
    return sorted(k for k, n in counts.items() if n > 1 and origin[k][1] < committed[origin[k][0]])


def _stream_feed(feeder: StreamFeeder, commit_round: int, kill_round: int, already: int = 0) -> Feed:
    """The stages of ``feeder``'s rounds; ``already``: messages written before it."""

    def feed(stage: int) -> int:
        if stage == 0:
            feeder.start(commit_round)
            feeder.wait_idle(90)
        elif stage == 1:
            feeder.release(kill_round)
            feeder.wait_idle(90)
        else:
            feeder.join(180)
        return already + feeder.sent

    return feed


def _produce(bootstrap: str, topic: str, messages: list[Message]) -> list[Origin]:
    """Send ``messages`` in order, wait until all are acknowledged; their (partition, offset)."""
    p = KafkaProducer(
        **connection(bootstrap), client_id=f"test-tiers-{uuid.uuid4().hex[:8]}", linger_ms=5, acks="all"
    )
    try:
        futs = [p.send(topic, key=k, value=v, headers=h) for k, v, h in messages]
        p.flush()
        return [(md.partition, md.offset) for md in (f.get(60) for f in futs)]
    finally:
        p.close()


def _one_sample_keys(prefix: str, n: int, rng: np.random.Generator) -> list[Message]:
    """``n`` new keys with one valid sample each (never a window, never a prediction)."""
    return [
        (
            f"{prefix}-{i:03d}".encode(),
            orjson.dumps({"seq": 0, "ts": TS0, "values": rng.normal(size=6).tolist()}),
            [],
        )
        for i in range(n)
    ]


def _served(
    bootstrap: str,
    topic: str,
    ref: dict[tuple[str, int], np.ndarray],
    guarantee: str,
    p2: ServiceProcess,
    origin: dict[tuple[str, int], Origin],
    committed: dict[int, int],
) -> None:
    """Every hop of ``ref`` published at its seq with the reference's scores, nothing else;
    duplicates (at-least-once) only of hops whose last sample was not committed at the kill.
    ``origin``: (entity, seq) -> where that sample is in the input."""
    preds = read_hops(bootstrap, f"{topic}.out", set(ref), timeout_s=90)
    assert p2.alive(), f"the service exited with code {p2.proc.returncode}:\n{p2.log()}"
    counts = check_delivery(preds, ref, guarantee)
    early = _early(counts, origin, committed)
    assert not early, f"{len(early)} hops of input committed before the kill published again: {early[:5]}"
    print(f"{len(ref)} hops, {sum(n - 1 for n in counts.values())} duplicates")


def _never_reset(before: dict[str, float], p2: ServiceProcess) -> None:
    """No entity reset by the sequence rules, none deleted (idle TTL is an hour), in either
    process: paging is not eviction."""
    assert before[RESETS] == 0 and before[EVICTED] == 0, before
    assert p2.metric(RESETS) == 0, p2.log()
    assert p2.metric(EVICTED) == 0, p2.log()


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_a_backlog_flood_of_one_sample_keys_pages_out_and_no_live_device_loses_state(
    kafka_bootstrap, new_topic, artifact, tmp_path: Path, procs, feeders, guarantee
):
    """The issue's 10,000 one-sample keys through 2,000 slots, scaled down: 64 slots, a backfill
    of 200 one-sample keys written before the service starts, then 12 live devices streaming
    two recordings each while 200 more one-sample keys arrive between their samples. The flood
    pushes everything out of memory again and again; every live device's hops are those of its
    whole stream, nothing is refused or dead-lettered, and no key is forgotten (memory plus disk
    hold all 412 at the end)."""
    cap, live, backlog, interleaved = 64, 12, 200, 200
    topic = new_topic("tiers-flood", partitions=PARTITIONS)
    streams = entity_streams(live, 2, seed=31)  # 200 rounds
    ref = reference(artifact, streams)
    rng = np.random.default_rng(31)
    _produce(kafka_bootstrap, topic, _one_sample_keys("backfill", backlog, rng))
    flood = _one_sample_keys("flood", interleaved, rng)
    extra = {r: flood[i * 10 : i * 10 + 10] for i, r in enumerate(range(0, 200, 10))}
    feeders.append(feeder := StreamFeeder(kafka_bootstrap, topic, streams, 400, extra=extra))
    cfg = _config(kafka_bootstrap, topic, artifact, tmp_path, guarantee, max_entities=cap)
    before, p2, committed = _kill_9_in_the_middle(
        kafka_bootstrap, cfg, tmp_path, procs, _stream_feed(feeder, 60, 120, already=backlog)
    )
    _served(kafka_bootstrap, topic, ref, guarantee, p2, feeder.offsets, committed)
    assert before[PAGED_OUT] >= backlog + live - cap, before
    assert p2.metric(PAGED_OUT) > 0, p2.log()
    assert before[REFUSED] == 0 and p2.metric(REFUSED) == 0, (before, p2.log())
    assert before[DEAD] == 0 and p2.metric(DEAD) == 0, "a good record was dead-lettered"
    _never_reset(before, p2)
    assert p2.metric(ACTIVE) + p2.metric(ON_DISK) == live + backlog + interleaved
    assert p2.metric(ACTIVE) <= cap
    assert p2.terminate(30) == 0, p2.log()


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_more_round_robin_devices_than_slots_are_paged_out_and_back_in_with_their_state(
    kafka_bootstrap, new_topic, artifact, tmp_path: Path, procs, feeders, guarantee
):
    """The issue's 200 devices through 150 slots, scaled down: 40 devices through 30 slots, one
    sample each per round in turn, so least-recently-seen paging sends every device to the disk
    tier before its next sample (the worst case: thrash). Each page-in must bring back the window
    tail mid-hop and the carried state: every hop of every device equals the reference."""
    cap, devices = 30, 40
    topic = new_topic("tiers-round-robin", partitions=PARTITIONS)
    streams = entity_streams(devices, 1, seed=32)  # 100 rounds, 9 hops per device
    ref = reference(artifact, streams)
    feeders.append(feeder := StreamFeeder(kafka_bootstrap, topic, streams, 800))
    cfg = _config(kafka_bootstrap, topic, artifact, tmp_path, guarantee, max_entities=cap)
    before, p2, committed = _kill_9_in_the_middle(
        kafka_bootstrap, cfg, tmp_path, procs, _stream_feed(feeder, 30, 65)
    )
    _served(kafka_bootstrap, topic, ref, guarantee, p2, feeder.offsets, committed)
    assert before[PAGED_OUT] > 0 and before[PAGED_IN] > 0 and before[THRASH] > 0, before
    assert p2.metric(PAGED_IN) > 0 and p2.metric(THRASH) > 0, p2.log()
    assert before[REFUSED] == 0 and p2.metric(REFUSED) == 0, (before, p2.log())
    assert before[DEAD] == 0 and p2.metric(DEAD) == 0, "a good record was dead-lettered"
    _never_reset(before, p2)
    assert p2.metric(ACTIVE) + p2.metric(ON_DISK) == devices
    assert p2.terminate(30) == 0, p2.log()


def _cycles(streams: dict[str, np.ndarray], group: int, chunk: int) -> list[list[tuple[str, int]]]:
    """The fleet in groups of ``group`` entities taking turns: in each cycle every group sends
    its next ``chunk`` samples (its entities interleaved), then the next group. Returns each
    cycle's (entity, seq) in sending order."""
    names = list(streams)
    n = max(len(x) for x in streams.values())
    out = []
    for lo in range(0, n, chunk):
        cycle = []
        for g in range(0, len(names), group):
            for seq in range(lo, min(lo + chunk, n)):
                cycle += [(e, seq) for e in names[g : g + group] if seq < len(streams[e])]
        out.append(cycle)
    return out


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_a_fleet_ten_times_the_cap_cycles_through_the_pod_and_is_restored_whole(
    kafka_bootstrap, new_topic, artifact, tmp_path: Path, procs, guarantee
):
    """160 entities through 16 slots: groups of 16 take turns sending 25 samples of a recording
    (a chunk ends mid-hop: the paged-out window tail matters), so every entity lives on the disk
    tier between its turns. The commit comes after the first cycle, when every entity has been
    seen: the successor restores all 160 from the changelog (16 to memory, the rest spilled to
    its rebuilt disk tier) and each goes on from its own state."""
    cap, fleet, group, chunk = 16, 160, 16, 25
    topic = new_topic("tiers-fleet", partitions=PARTITIONS)
    streams = entity_streams(fleet, 1, seed=33)  # 100 samples, 9 hops per entity
    ref = reference(artifact, streams)
    cycles = _cycles(streams, group, chunk)
    stages = [cycles[0], cycles[1], [s for c in cycles[2:] for s in c]]
    origin: dict[tuple[str, int], Origin] = {}

    def feed(stage: int) -> int:
        msgs = [good_message("json", e, seq, streams[e][seq]) for e, seq in stages[stage]]
        origin.update(zip(stages[stage], _produce(kafka_bootstrap, topic, msgs), strict=True))
        return len(origin)

    cfg = _config(kafka_bootstrap, topic, artifact, tmp_path, guarantee, max_entities=cap)
    before, p2, committed = _kill_9_in_the_middle(kafka_bootstrap, cfg, tmp_path, procs, feed)
    assert len(origin) == fleet * 100
    _served(kafka_bootstrap, topic, ref, guarantee, p2, origin, committed)
    assert before[PAGED_OUT] >= fleet - cap and before[PAGED_IN] > 0, before
    # every entity was in the changelog at the kill: nothing is deleted for memory's sake
    assert p2.metric(RESTORED) == fleet, p2.log()
    assert p2.metric(PAGED_IN) > 0, p2.log()
    assert before[REFUSED] == 0 and p2.metric(REFUSED) == 0, (before, p2.log())
    assert before[DEAD] == 0 and p2.metric(DEAD) == 0, "a good record was dead-lettered"
    _never_reset(before, p2)
    assert p2.metric(ACTIVE) + p2.metric(ON_DISK) == fleet
    assert p2.metric(ACTIVE) <= cap
    assert p2.terminate(30) == 0, p2.log()


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_with_refuse_new_a_full_memory_refuses_newcomers_and_never_resets_the_admitted(
    kafka_bootstrap, new_topic, artifact, tmp_path: Path, procs, feeders, guarantee
):
    """``entities.on_full: refuse_new`` (no disk tier), 8 slots: the 8 devices streaming from the
    first round fill memory and are served exactly as the reference; 4 devices that start
    sending at round 40 are new entities with no room, so each of their records lands on the
    dead-letter topic with ``error.reason: over_capacity`` - once, or under at-least-once again
    only if not committed at the kill - and they publish nothing. The first 60 rounds are a
    backlog written before the service starts (one partition: the first devices come first),
    so polls span many rounds of 12 entities and are admitted in parts of 8, the refused
    entities in several parts of one poll. Refusal leaves the admitted alone: none is paged,
    reset or evicted."""
    cap, start_late = 8, 40
    topic = new_topic("tiers-refuse", partitions=1)
    streams = entity_streams(cap, 2, seed=34)  # 200 rounds
    late = {f"late-{i}": x[:100] for i, x in enumerate(entity_streams(4, 1, seed=35).values())}
    ref = reference(artifact, streams)
    extra = {
        start_late + seq: [good_message("json", e, seq, x[seq]) for e, x in late.items()]
        for seq in range(100)
    }
    feeders.append(feeder := StreamFeeder(kafka_bootstrap, topic, streams, 400, extra=extra))
    cfg = _config(
        kafka_bootstrap, topic, artifact, tmp_path, guarantee, max_entities=cap, on_full="refuse_new"
    )
    before, p2, committed = _kill_9_in_the_middle(
        kafka_bootstrap, cfg, tmp_path, procs, _stream_feed(feeder, 60, 110), partitions=1, backlog=True
    )
    _served(kafka_bootstrap, topic, ref, guarantee, p2, feeder.offsets, committed)
    expected = {o: (m, "over_capacity") for m, o in feeder.extra_offsets}
    assert len(expected) == 4 * 100
    dlq = read_dead_letters(kafka_bootstrap, f"{topic}.dlq", set(expected), timeout_s=60)
    counts = check_dead_letters(dlq, topic, expected, guarantee)
    early = _early(counts, {o: o for o in counts}, committed)
    assert not early, f"{len(early)} records committed before the kill dead-lettered again: {early[:5]}"
    assert before[REFUSED] >= len(late) and p2.metric(REFUSED) >= len(late), (before, p2.log())
    assert before[PAGED_OUT] == 0 and p2.metric(PAGED_OUT) == 0
    assert p2.metric(RESTORED) == cap, p2.log()  # the admitted; the refused never had state
    _never_reset(before, p2)
    assert p2.metric(ACTIVE) == cap and p2.metric(ON_DISK) == 0
    assert p2.terminate(30) == 0, p2.log()


def _read_all(bootstrap: str, topic: str, timeout_s: float = 60) -> list[Any]:
    """Every record of ``topic`` (read_committed) up to its end at the time of the call."""
    reader = TopicReader(bootstrap, topic)
    try:
        c = reader.consumer
        ends = c.end_offsets(list(c.assignment()))
        out: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while any(c.position(tp) < end for tp, end in ends.items()):
            assert time.monotonic() < deadline, f"{topic} not read to its end in {timeout_s}s"
            out.extend(reader.poll())
        return out
    finally:
        reader.close()


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_when_both_tiers_are_full_a_paged_out_device_comes_back_and_only_new_keys_are_refused(
    kafka_bootstrap, new_topic, artifact, tmp_path: Path, procs, feeders, guarantee
):
    """8 slots and a 1 MiB disk tier (about 950 entities of 1.1 kB: the budget counts live entries). 4 devices stream throughout; 4 others
    send 30 samples, go quiet while 1,200 one-sample keys fill memory and the disk tier - the
    quiet devices, least recently seen, are paged out first - and then resume their streams.
    Keys that find both tiers full are new: they are refused (``over_capacity``). A returning
    device is not new: its state is held on disk, so it must be paged back in (a less recent
    entity making room) and every one of its hops published as the reference's, as for the
    devices that never stopped. One partition: the order of admission is the order sent."""
    cap, steady, quiet_from, back_at, flood_rounds = 8, 4, 30, 110, range(35, 95)
    topic = new_topic("tiers-full", partitions=1)
    streams = entity_streams(steady, 2, seed=36)  # 200 rounds
    returning = {f"back-{i}": x[:110] for i, x in enumerate(entity_streams(4, 2, seed=37).values())}
    ref = reference(artifact, streams) | reference(artifact, returning)
    rng = np.random.default_rng(36)
    flood = _one_sample_keys("flood", 20 * len(flood_rounds), rng)
    extra: dict[int, list[Message]] = {r: flood[i * 20 : i * 20 + 20] for i, r in enumerate(flood_rounds)}
    sample_of: dict[int, tuple[str, int]] = {}  # id(message) -> (entity, seq)
    for seq in range(110):
        r = seq if seq < quiet_from else back_at + seq - quiet_from
        for e, x in returning.items():
            m = good_message("json", e, seq, x[seq])
            sample_of[id(m)] = (e, seq)
            extra.setdefault(r, []).append(m)
    feeders.append(feeder := StreamFeeder(kafka_bootstrap, topic, streams, 400, extra=extra))
    cfg = _config(
        kafka_bootstrap, topic, artifact, tmp_path, guarantee, max_entities=cap, disk_max_bytes=1 << 20
    )
    before, p2, committed = _kill_9_in_the_middle(
        kafka_bootstrap, cfg, tmp_path, procs, _stream_feed(feeder, 100, 150), partitions=1, backlog=False
    )
    origin = dict(feeder.offsets)
    origin.update({sample_of[id(m)]: o for m, o in feeder.extra_offsets if id(m) in sample_of})
    assert before[REFUSED] > 0, "the flood did not fill both tiers"
    dlq = _read_all(kafka_bootstrap, f"{topic}.dlq")
    reasons = {dict(r.headers).get("error.reason") for r in dlq}
    assert reasons == {b"over_capacity"}, reasons
    wrongly = sorted({r.key.decode() for r in dlq if not r.key.startswith(b"flood-")})
    assert not wrongly, (
        f"devices already held (paged out to disk) were refused as if new: {wrongly}; "
        f"{sum(not r.key.startswith(b'flood-') for r in dlq)} of their records dead-lettered"
    )
    _served(kafka_bootstrap, topic, ref, guarantee, p2, origin, committed)
    _never_reset(before, p2)
    assert p2.terminate(30) == 0, p2.log()
