"""The sequence rules end to end: a device that restarts its ``seq`` and a far-future outlier,
through the real broker and ``stream-infer serve`` as a real process, killed with ``kill -9``
mid-stream and started again, in both delivery guarantees.

One entity (``dev``) breaks its sequence while three others stream BasicMotions recordings
alongside, one sample of each per round (``StreamFeeder``; ``dev``'s messages travel as its
``extra`` ones). The expected predictions come from an offline replay of the same sample stream
through ``WindowStore`` (the service's sequence rules, same settings) and the ONNX engine with
state carried per entity and zeroed at each new segment, as the inference thread does; that
replay is itself checked against the rules' promises, computed without the rules: the hops of a
restarted device are exactly those of its two runs as independent streams from zero state, an
outlier costs its entity one window's warm-up and nothing else, every other entity's hops are
those of its whole stream.

The instance is killed after the event was consumed, with the last commit placed before the
event or just after it (so the restored state is a new segment still in its warm-up, or the lone
outlier whose ``anchor`` must survive the changelog). Every published hop must equal the replay
(exactly once under exactly-once, at least once with identical duplicates of uncommitted input
only under at-least-once), and each process's ``stream_infer_entity_resets_total`` per reason
must count exactly the events of the input it consumed: the killed one all of them, its
successor those past the committed offsets.
"""

from __future__ import annotations

import struct
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from kafka import TopicPartition

from stream_infer.backends import open_engine
from stream_infer.metrics import RESET_REASONS
from stream_infer.model.card import load_card
from stream_infer.state.windows import SEGMENTS, WindowStore
from tests.processes import (
    TS0,
    Message,
    ServiceProcess,
    StreamFeeder,
    TopicReader,
    check_delivery,
    committed_offsets,
    entity_streams,
    open_transaction_records,
    read_predictions,
    reader_consumer,
    service_config,
)
from tests.reference import hop_by_hop_any, published

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GUARANTEES = ["at-least-once", "exactly-once"]
DEV = "dev"
PARTITIONS = 2
RATE = 400  # messages per second: 100 rounds a second
MAX_SEQ_GAP = 100  # entities.max_seq_gap, given to the service and to the replay alike
COMMIT_MS = 5000  # long enough that the kill lands before the next commit after the one placed
RESETS = "stream_infer_entity_resets_total"
DROPPED = "stream_infer_dropped_samples_total"

Hop = tuple[str, int]  # (entity label, seq of the hop's last sample)


@dataclass
class Scenario:
    """``dev``'s messages, one per round from round 0: (seq, values)."""

    msgs: list[tuple[int, np.ndarray]]
    # Rounds at which dev's seq starts over (a device restart): its predictions before and after
    # carry the same seqs, so they are told apart by event time (``label``).
    runs: list[int]
    # dev's segments as independent streams: (label, seqs, values), for the rules' promise
    segments: list[tuple[str, list[int], np.ndarray]]
    # reason -> rounds of the messages that start such a segment
    events: dict[str, list[int]]

    def label(self, entity: str, event_ms: int) -> str:
        if entity != DEV or not self.runs:
            return entity
        r = (event_ms - TS0) // 10
        return f"{DEV}#{sum(r >= s for s in self.runs)}"


def _ts(r: int) -> int:
    return TS0 + 10 * r  # as StreamFeeder times round r


def _dev_message(r: int, seq: int, values: np.ndarray) -> Message:
    doc = {"seq": seq, "ts": _ts(r), "values": values.tolist()}
    return DEV.encode(), orjson.dumps(doc), []


def restart_scenario(x: np.ndarray, run: int) -> Scenario:
    """seq 0..run-1, then (the device restarted, new data) 0..run-1 again."""
    a, b = x[:run], x[run : 2 * run]
    msgs = [(i, a[i]) for i in range(run)] + [(i, b[i]) for i in range(run)]
    segments = [(f"{DEV}#0", list(range(run)), a), (f"{DEV}#1", list(range(run)), b)]
    return Scenario(msgs, [run], segments, {"seq_restart": [run]})


def outlier_scenario(x: np.ndarray, n: int, far: int) -> Scenario:
    """seq 0..n, one message with seq ``far``, then n+1.. (the stream goes on)."""
    rest = len(x) - n - 2
    msgs = [(i, x[i]) for i in range(n + 1)] + [(far, x[n + 1])]
    msgs += [(n + 1 + j, x[n + 2 + j]) for j in range(rest)]
    segments = [
        (DEV, list(range(n + 1)), x[: n + 1]),
        (DEV, [far], x[n + 1 : n + 2]),
        (DEV, list(range(n + 1, n + 1 + rest)), x[n + 2 :]),
    ]
    return Scenario(msgs, [], segments, {"seq_gap": [n + 1], "seq_outlier": [n + 2]})


# --- the offline replay ---


def replay(
    artifact: Path, others: dict[str, np.ndarray], sc: Scenario
) -> tuple[dict[Hop, np.ndarray], dict[Hop, int], Counter[str]]:
    """Every round's samples (dev's first, as the feeder sends them) through ``WindowStore`` with
    the service's settings, each completed window through the engine with its entity's state
    (zeroed when the window is ``fresh``). Returns scores and event time per hop, and the new
    segments per reason."""
    card = load_card(artifact)
    names = [DEV, *others]
    slot_of = {e: i for i, e in enumerate(names)}
    store = WindowStore(len(names), card.window, card.hop, tuple(card.sample_shape), MAX_SEQ_GAP)
    zero = [np.zeros(s.batched(1), np.float32) for s in card.states]
    state = {e: zero for e in names}
    scores: dict[Hop, np.ndarray] = {}
    times: dict[Hop, int] = {}
    segments: Counter[str] = Counter()
    rounds = max(len(sc.msgs), *(len(x) for x in others.values()))
    engine = open_engine(artifact, "onnxruntime", "cpu", 8)
    try:
        for r in range(rounds):
            rows = [(DEV, *sc.msgs[r])] if r < len(sc.msgs) else []
            rows += [(e, r, x[r]) for e, x in others.items() if r < len(x)]
            wb, st = store.push(
                np.asarray([slot_of[e] for e, _, _ in rows]),
                np.asarray([s for _, s, _ in rows], dtype=np.int64),
                np.full(len(rows), _ts(r), dtype=np.int64),
                np.stack([v for _, _, v in rows]).astype(np.float32),
                [e for e, _, _ in rows],
            )
            segments.update({why: n for why, n in zip(SEGMENTS, st.segments, strict=True) if n})
            for i, e in enumerate(wb.entities):
                if wb.fresh[i]:
                    state[e] = zero
                y, *state[e] = engine.infer(wb.x[i].reshape(1, *card.input_shape), *state[e])
                hop = (sc.label(e, int(wb.event_ms[i])), int(wb.seq[i]))
                assert hop not in scores, f"the replay made {hop} twice"
                scores[hop] = published(np.asarray(y)[0])
                times[hop] = int(wb.event_ms[i])
    finally:
        engine.close()
    return scores, times, segments


def independent(artifact: Path, others: dict[str, np.ndarray], sc: Scenario) -> dict[Hop, np.ndarray]:
    """What the rules promise, without them: every other entity's whole stream and each of dev's
    segments stepped hop by hop from zero state."""
    card = load_card(artifact)
    w, k = card.window, card.hop
    out: dict[Hop, np.ndarray] = {}
    engine = open_engine(artifact, "onnxruntime", "cpu", 8)
    try:
        streams = [(e, list(range(len(x))), x) for e, x in others.items()] + sc.segments
        for e, seqs, x in streams:
            if len(x) < w:
                continue
            for i, y in enumerate(hop_by_hop_any(engine, card, x)):
                out[(e, seqs[w - 1 + i * k])] = published(y)
    finally:
        engine.close()
    return out


def expectation(
    artifact: Path, others: dict[str, np.ndarray], sc: Scenario
) -> tuple[dict[Hop, np.ndarray], dict[Hop, int]]:
    """The replay's hops (scores, event times), once it is shown to keep the rules' promises:
    the same hops and scores as the independent segments, the scenario's new segments and no
    other, every other entity's hops timed by their own samples."""
    ref, times, segments = replay(artifact, others, sc)
    promised = independent(artifact, others, sc)
    assert set(ref) == set(promised), (
        f"replay vs independent segments: extra {sorted(set(ref) - set(promised))[:5]}, "
        f"missing {sorted(set(promised) - set(ref))[:5]}"
    )
    for hop, y in ref.items():
        np.testing.assert_allclose(y, promised[hop], atol=1e-6, err_msg=str(hop))
    assert segments == Counter({why: len(rs) for why, rs in sc.events.items()}), segments
    assert all(times[(e, s)] == _ts(s) for e, s in ref if e in others)
    return ref, times


# --- the live run ---


def _wait(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class _ChangelogSeqs:
    """The last seq of each entity's latest changelog record, read incrementally."""

    def __init__(self, bootstrap: str, changelog: TopicPartition) -> None:
        self.consumer = reader_consumer(bootstrap)
        self.consumer.assign([changelog])
        self.consumer.seek_to_beginning(changelog)
        self.latest: dict[str, int] = {}

    def hold(self, last: dict[str, int]) -> bool:
        for recs in self.consumer.poll(timeout_ms=100).values():
            for r in recs:
                if r.key is not None and r.value is not None:
                    # the record's header: magic, version, fresh, id length, then last_seq (int64)
                    self.latest[r.key.decode()] = struct.unpack_from("<q", r.value, 8)[0]
        return all(self.latest.get(e) == seq for e, seq in last.items())

    def close(self) -> None:
        self.consumer.close()


def _resets(p: ServiceProcess) -> dict[str, float]:
    return {r: p.metric(f'{RESETS}{{reason="{r}"}}') for r in RESET_REASONS}


def _read(bootstrap: str, topic: str, want: set[Hop], sc: Scenario, timeout_s: float) -> list[dict[str, Any]]:
    """Every prediction (read_committed), dev's labelled by run, until each of ``want`` has
    arrived, then a grace second for late duplicates."""
    reader = TopicReader(bootstrap, topic)
    out: list[dict[str, Any]] = []
    left = set(want)

    def take(timeout_ms: int) -> None:
        for r in reader.poll(timeout_ms):
            p = orjson.loads(r.value)
            p["entity"] = sc.label(p["entity"], p["event_time_ms"])
            p["_at"] = f"{r.partition}@{r.offset}"
            out.append(p)
            left.discard((p["entity"], p["seq"]))

    deadline = time.monotonic() + timeout_s
    try:
        while left and time.monotonic() < deadline:
            take(200)
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            take(100)
    finally:
        reader.close()
    return out


def check_recovery(
    bootstrap: str,
    new_topic: Callable[..., str],
    artifact: Path,
    tmp_path: Path,
    procs: list[ServiceProcess],
    feeders: list[StreamFeeder],
    guarantee: str,
    sc: Scenario,
    others: dict[str, np.ndarray],
    ref: dict[Hop, np.ndarray],
    times: dict[Hop, int],
    commit_round: int,
    kill_round: int,
) -> None:
    """Feed to ``commit_round`` (exclusive) and wait until it is committed, feed to
    ``kill_round``, kill -9 once the instance consumed it (and, exactly-once, holds an open
    transaction), start a successor, feed the rest; then check every hop and both processes'
    reset counts."""
    topic = new_topic("seq", partitions=PARTITIONS)
    cfg = service_config(
        bootstrap,
        topic,
        artifact,
        "a",
        delivery={"guarantee": guarantee, "commit_interval_ms": COMMIT_MS},
        entities={"max_seq_gap": MAX_SEQ_GAP},
    )
    group = cfg["kafka"]["group_id"]
    extra = {r: [_dev_message(r, seq, v)] for r, (seq, v) in enumerate(sc.msgs)}
    round_of = {m[1]: r for r, ms in extra.items() for m in ms}
    procs.append(first := ServiceProcess(cfg, tmp_path))
    first.wait_ready(120)
    feeders.append(feeder := StreamFeeder(bootstrap, topic, others, RATE, extra=extra))

    # 1. input up to commit_round consumed and committed (state in the changelog)
    feeder.start(commit_round)
    feeder.wait_idle(60)
    _wait(
        lambda: sum(committed_offsets(bootstrap, group, topic, PARTITIONS).values()) >= feeder.sent,
        COMMIT_MS / 1000 + 30,
        f"the commit of rounds < {commit_round}",
    )
    # 2. more input, the event among it, consumed; then kill -9 before the next commit
    feeder.release(kill_round)
    feeder.wait_idle(60)
    first.wait_metric("stream_infer_messages_total", feeder.sent, 30)
    seen = {why: sum(r < kill_round for r in rs) for why, rs in sc.events.items()}
    for why, n in seen.items():
        first.wait_metric(f'{RESETS}{{reason="{why}"}}', n, 30)
    if guarantee == "exactly-once":  # kill while an open transaction holds predictions
        _wait(
            lambda: open_transaction_records(bootstrap, f"{topic}.out", PARTITIONS) > 0,
            30,
            "an open transaction",
        )
    first_resets, first_dropped = _resets(first), first.metric(DROPPED)
    first.kill()
    time.sleep(1)  # a commit the broker had received completes
    committed = committed_offsets(bootstrap, group, topic, PARTITIONS)
    # 3. the successor restores the committed state and replays the rest
    procs.append(second := ServiceProcess(cfg, tmp_path))
    second.wait_ready(120)
    feeder.join(120)
    preds = _read(bootstrap, f"{topic}.out", set(ref), sc, timeout_s=90)

    # Every hop equals the replay: exactly once, or at least once with identical duplicates.
    counts = check_delivery(preds, ref, guarantee)
    late = [
        (p["entity"], p["seq"], p["event_time_ms"])
        for p in preds
        if p["event_time_ms"] != times[p["entity"], p["seq"]]
    ]
    assert not late, f"predictions with the wrong event time: {late[:5]}"
    origin: dict[Hop, tuple[int, int]] = {}
    for (e, s), at in feeder.offsets.items():
        origin[(e, s)] = at
    for (_, value, _), at in feeder.extra_offsets:
        r = round_of[value]
        origin[(sc.label(DEV, _ts(r)), sc.msgs[r][0])] = at
    uncommitted = {hop for hop, (part, off) in origin.items() if off >= committed[part]}
    assert uncommitted, f"the kill came after everything was committed: {committed}"
    dups = {hop for hop, n in counts.items() if n > 1}
    early = sorted(dups - uncommitted)
    assert not early, f"duplicates of input committed before the kill: {early[:5]}"
    if guarantee == "exactly-once":
        # The killed instance's open transaction was aborted: its predictions are visible to
        # read_uncommitted only, and were computed again once by the successor.
        raw = read_predictions(bootstrap, f"{topic}.out", len(preds) + 1, timeout_s=10, committed_only=False)
        assert len(raw) > len(preds), "nothing of the killed instance was aborted"

    # Each process counted the events of the input it consumed, and nothing else.
    msg_at = {value: at for (_, value, _), at in feeder.extra_offsets}
    events_at = {why: [msg_at[extra[r][0][1]] for r in rs] for why, rs in sc.events.items()}
    replayed = {why: sum(off >= committed[part] for part, off in ats) for why, ats in events_at.items()}
    assert first_resets == {r: float(seen.get(r, 0)) for r in RESET_REASONS}, (
        f"killed instance: resets {first_resets}, expected {seen}"
    )
    assert first_dropped == 0, f"killed instance dropped {first_dropped} samples"
    second_resets = _resets(second)
    assert second_resets == {r: float(replayed.get(r, 0)) for r in RESET_REASONS}, (
        f"successor: resets {second_resets}, expected {replayed} (committed {committed}, "
        f"events at {events_at})"
    )
    if guarantee == "exactly-once":
        assert second.metric(DROPPED) == 0
    assert second.metric("stream_infer_state_restored_entities_total") > 0
    print(
        f"{len(ref)} hops ({sum(1 for e, _ in ref if e.startswith(DEV))} of {DEV}), "
        f"{sum(n - 1 for n in counts.values())} duplicates; resets: killed {seen}, successor {replayed}"
    )
    assert second.terminate(30) == 0, second.log()


# --- the tests ---

RUN = 150  # samples per run of the restarted device
OUTLIER_AFTER = 124  # the outlier follows seq 0..OUTLIER_AFTER
FAR = 10**12


@pytest.mark.parametrize("commit_at", ["before_restart", "in_new_warmup"])
@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_a_device_restart_costs_its_warmup_only_across_kill_9(
    kafka_bootstrap, new_topic, artifact, tmp_path: Path, procs, feeders, guarantee, commit_at
):
    """dev sends seq 0..149, then 0..149 again (new data); three entities stream alongside.
    Both runs' hops are published, each from zero state; the restart is a ``seq_restart``."""
    others = entity_streams(3, 3, seed=11)
    (x,) = entity_streams(1, 3, seed=12).values()
    sc = restart_scenario(x, RUN)
    ref, times = expectation(artifact, others, sc)
    card = load_card(artifact)
    hops = [card.window - 1 + i * card.hop for i in range((RUN - card.window) // card.hop + 1)]
    assert sorted(s for e, s in ref if e == f"{DEV}#0") == hops  # both runs in full
    assert sorted(s for e, s in ref if e == f"{DEV}#1") == hops
    # the last commit before the kill: 30 rounds before the restart, or 5 into the new run (a
    # segment restored mid-warm-up, its first window still to start from zero state)
    commit_round = RUN - 30 if commit_at == "before_restart" else RUN + 5
    check_recovery(
        kafka_bootstrap,
        new_topic,
        artifact,
        tmp_path,
        procs,
        feeders,
        guarantee,
        sc,
        others,
        ref,
        times,
        commit_round,
        kill_round=RUN + 40,
    )


@pytest.mark.parametrize("commit_at", ["before_outlier", "on_the_outlier"])
@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_a_far_future_outlier_costs_one_warmup_across_kill_9(
    kafka_bootstrap, new_topic, artifact, tmp_path: Path, procs, feeders, guarantee, commit_at
):
    """dev sends seq 0..124, one message with seq 10**12, then 125..; three entities stream
    alongside. dev loses one window's warm-up after the outlier, nothing else; the outlier is a
    ``seq_gap`` and the next sample a ``seq_outlier``."""
    others = entity_streams(3, 3, seed=21)
    (x,) = entity_streams(1, 3, seed=22).values()
    sc = outlier_scenario(x, OUTLIER_AFTER, FAR)
    ref, times = expectation(artifact, others, sc)
    card = load_card(artifact)
    w, k, n = card.window, card.hop, OUTLIER_AFTER
    # before the outlier every hop of the stream; after it, one warm-up (the first window ends W
    # samples on, at seq n + W) and then every hop; nothing at the outlier's seq
    got = sorted(s for e, s in ref if e == DEV)
    assert got == list(range(w - 1, n + 1, k)) + list(range(n + w, len(x) - 1, k)), got
    # the last commit before the kill: 25 rounds before the outlier, or just after it (the
    # restored state is the lone outlier segment, its anchor must come back from the changelog)
    commit_round = OUTLIER_AFTER + 1 - 25 if commit_at == "before_outlier" else OUTLIER_AFTER + 2
    check_recovery(
        kafka_bootstrap,
        new_topic,
        artifact,
        tmp_path,
        procs,
        feeders,
        guarantee,
        sc,
        others,
        ref,
        times,
        commit_round,
        kill_round=OUTLIER_AFTER + 42,
    )


@pytest.mark.parametrize("case", ["restart", "outlier"])
def test_input_read_again_into_newer_state_is_dropped_by_offset_not_taken_for_a_restart(
    kafka_bootstrap, new_topic, artifact, tmp_path: Path, procs, feeders, case
):
    """at-least-once, kill -9 after a checkpoint wrote the changelog and before its offsets were
    committed (idle input and ``kafka.poll_timeout_ms`` 1000 hold that window open for about a
    second): the successor restores state newer than the committed offsets, and the input it
    reads again - dev's event among it - is older than that state. By seq alone it would read as a
    restart (or, after dev's restart, as run 1 continuing run 2); it must be dropped as
    ``replayed`` (by offset), so every hop is published exactly once with the replay's values and
    the successor counts no new segment."""
    seed = {"restart": 31, "outlier": 41}[case]
    others = entity_streams(3, 3, seed=seed)
    (x,) = entity_streams(1, 3, seed=seed + 1).values()
    if case == "restart":
        sc = restart_scenario(x, RUN)
        commit_round, kill_round = RUN - 30, RUN + 40
    else:
        sc = outlier_scenario(x, OUTLIER_AFTER, FAR)
        commit_round, kill_round = OUTLIER_AFTER - 24, OUTLIER_AFTER + 42
    ref, times = expectation(artifact, others, sc)
    topic = new_topic("seq-replay", partitions=1)
    cfg = service_config(
        kafka_bootstrap,
        topic,
        artifact,
        "a",
        delivery={"guarantee": "at-least-once", "commit_interval_ms": 2000},
        entities={"max_seq_gap": MAX_SEQ_GAP},
        kafka={"poll_timeout_ms": 1000},
    )
    group = cfg["kafka"]["group_id"]
    changelog = TopicPartition(f"{group}.{topic}.state", 0)
    extra = {r: [_dev_message(r, seq, v)] for r, (seq, v) in enumerate(sc.msgs)}
    procs.append(first := ServiceProcess(cfg, tmp_path))
    first.wait_ready(120)
    feeders.append(feeder := StreamFeeder(kafka_bootstrap, topic, others, RATE, extra=extra))
    feeder.start(commit_round)
    feeder.wait_idle(60)
    _wait(
        lambda: committed_offsets(kafka_bootstrap, group, topic, 1)[0] >= feeder.sent,
        30,
        f"the commit of rounds < {commit_round}",
    )
    feeder.release(kill_round)
    feeder.wait_idle(60)
    sent = feeder.sent
    first.wait_metric("stream_infer_messages_total", sent, 30)
    seen = {why: len(rs) for why, rs in sc.events.items()}
    for why, n in seen.items():
        first.wait_metric(f'{RESETS}{{reason="{why}"}}', n, 30)
    # A checkpoint that snapshotted every entity after its last sample lands (its offsets
    # follow after the idle poll). Only such a changelog covers every published hop: an
    # earlier checkpoint's records may land after the last poll was consumed, and input read
    # again beyond them would rightly be published again (at-least-once).
    last = {e: kill_round - 1 for e in others} | {DEV: sc.msgs[kill_round - 1][0]}
    covered = _ChangelogSeqs(kafka_bootstrap, changelog)
    try:
        _wait(lambda: covered.hold(last), 30, f"the changelog to hold every entity's last seq {last}")
    finally:
        covered.close()
    first_resets = _resets(first)
    first.kill()
    time.sleep(1)
    committed = committed_offsets(kafka_bootstrap, group, topic, 1)[0]
    if committed >= sent:  # a loaded machine can miss the ~1 s window; every check below still holds
        warnings.warn(
            f"the kill came after the commit ({committed} of {sent}): nothing was read again", stacklevel=1
        )
    procs.append(second := ServiceProcess(cfg, tmp_path))
    second.wait_ready(120)
    feeder.join(120)
    preds = _read(kafka_bootstrap, f"{topic}.out", set(ref), sc, timeout_s=90)
    check_delivery(preds, ref, "exactly-once")  # nothing read again was published again
    late = [(p["entity"], p["seq"]) for p in preds if p["event_time_ms"] != times[p["entity"], p["seq"]]]
    assert not late, f"predictions with the wrong event time: {late[:5]}"
    assert first_resets == {r: float(seen.get(r, 0)) for r in RESET_REASONS}, first_resets
    assert second.metric("stream_infer_state_restored_entities_total") == 1 + len(others)
    assert second.metric(f'{DROPPED}{{reason="replayed"}}') == sent - committed
    assert second.metric(DROPPED) == sent - committed
    assert _resets(second) == dict.fromkeys(RESET_REASONS, 0.0), _resets(second)
    assert second.terminate(30) == 0, second.log()
