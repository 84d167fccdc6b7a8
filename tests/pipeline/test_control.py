"""In-band control messages, in process (through the broker: tests/integration/test_control.py):
reset and set-state applied in order with the samples around them, for a new entity, per model;
every refusal dead-lettered with its reason and changing nothing."""

from __future__ import annotations

import itertools

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from stream_infer.config import load_settings
from stream_infer.kafka.types import ConsumedRecord
from stream_infer.metrics import INVALID_REASONS
from stream_infer.model.card import ModelCard
from stream_infer.pipeline.control import has_control
from stream_infer.service import Service
from stream_infer.state.models import state_key
from stream_infer.testing import LinearEngine, ListProducer, linear_card

W, F, L, HD = 3, 2, 1, 4
H = [[0.5, -0.25, 0.125, 1.0]]  # a given h0, [L, Hd]
C = [[3.0, 2.0, 1.0, 0.0]]  # a given c0
ONE = [{"name": "main", "artifact": "unused-a", "role": "primary"}]
THREE = [
    {"name": "main", "artifact": "unused-a", "role": "primary"},
    {"name": "can", "artifact": "unused-c", "role": "canary", "fraction": 0.5},
    {"name": "shad", "artifact": "unused-s", "role": "shadow"},
]
SLOPES = {"main": 0.5, "can": 0.7, "shad": 0.9}


def card(name: str) -> ModelCard:
    return linear_card(name, W, F, L, HD)


class Stream:
    """A wired service fed in process, with its producer and registry."""

    def __init__(self, models: list[dict] = ONE, enabled: bool = True) -> None:
        s = load_settings(
            None,
            topics={"input": "in", "output": "out"},
            models=models,
            input={"control_messages": enabled},
            batcher={"max_wait_ms": 0, "max_batch": 16},
            metrics={"port": 0},
        )
        self.engines = {m["name"]: LinearEngine((W, F), L, HD, a=SLOPES[m["name"]]) for m in models}
        cards = {m["name"]: card(m["name"]) for m in models}
        primary = models[0]["name"]
        self.registry = CollectorRegistry()
        self.svc = Service(
            s, engine=self.engines[primary], registry=self.registry, card=cards[primary], cards=cards
        )
        self.producer = ListProducer()
        self.svc.wire(self.engines[primary], self.producer, engines=self.engines)
        self.svc.workers.start()
        self.offsets = itertools.count()

    def close(self) -> None:
        self.svc.workers.stop()

    def sample(self, entity: str, seq: int, partition: int = 0) -> ConsumedRecord:
        v = [seq % 5, (seq * 7) % 3]
        doc = {"seq": seq, "ts": 1000 + seq, "values": v}
        return ConsumedRecord("in", partition, next(self.offsets), 0, entity.encode(), orjson.dumps(doc))

    def control(
        self, entity: str | None, kind: bytes, value: object = None, partition: int = 0
    ) -> ConsumedRecord:
        raw = value if isinstance(value, bytes) or value is None else orjson.dumps(value)
        key = entity.encode() if entity is not None else None
        return ConsumedRecord("in", partition, next(self.offsets), 0, key, raw, [("control", kind)])

    def feed(self, records: list[ConsumedRecord]) -> None:
        self.svc.ingest(records)
        self.svc.drain()

    def hops(self, topic: str = "out") -> dict[str, dict[int, list[float]]]:
        """entity -> seq -> scores, of every prediction published on ``topic``."""
        out: dict[str, dict[int, list[float]]] = {}
        for r in self.producer.on(topic):
            d = orjson.loads(r.value)
            assert d["seq"] not in out.get(d["entity"], {}), f"hop {d['entity']}@{d['seq']} published twice"
            out.setdefault(d["entity"], {})[d["seq"]] = d["scores"]
        return out

    def dead(self) -> dict[int, tuple[str, str]]:
        """source offset -> (reason, detail) of every dead letter."""
        out = {}
        for r in self.producer.on("in.dlq"):
            h = dict(r.headers)
            out[int(h["source.offset"])] = (h["error.reason"].decode(), h["error.detail"].decode())
        return out

    def applied(self, kind: str) -> float:
        return self.registry.get_sample_value("stream_infer_control_messages_total", {"kind": kind}) or 0.0

    def invalid(self, reason: str) -> float:
        return self.registry.get_sample_value("stream_infer_invalid_events_total", {"reason": reason}) or 0.0

    def state(self, entity: str) -> dict:
        code, doc = self.svc.describe_entity(entity, tensors=True)
        assert code == 200, doc
        return doc


def window(seqs: range) -> np.ndarray:
    return np.asarray([[s % 5, (s * 7) % 3] for s in seqs], np.float32)  # [W, F]


def expected(engine: LinearEngine, ends: list[int], h=None, c=None) -> dict[int, list[float]]:
    """The scores of one entity's hops ending at ``ends`` (consecutive windows of one segment),
    stepped from (h, c) (zero state when None)."""
    hs = np.zeros((L, 1, HD), np.float32) if h is None else np.asarray(h, np.float32)[:, None, :]
    cs = np.zeros((L, 1, HD), np.float32) if c is None else np.asarray(c, np.float32)[:, None, :]
    out = {}
    for end in ends:
        y, hs, cs = engine.infer(window(range(end - W + 1, end + 1))[None], hs, cs)
        e = np.exp(y[0] - y[0].max())
        out[end] = (e / e.sum()).tolist()
    return out


def assert_hops(got: dict[int, list[float]], want: dict[int, list[float]]) -> None:
    assert sorted(got) == sorted(want), f"hops at {sorted(got)}, expected {sorted(want)}"
    for seq, scores in want.items():
        assert got[seq] == pytest.approx(scores, abs=1e-6), f"hop at seq {seq}"


@pytest.fixture
def one():
    s = Stream()
    yield s
    s.close()


def test_reset_and_set_state_apply_in_order_with_the_samples_around_them(one: Stream):
    s = one
    recs = []
    for q in range(4):
        recs += [s.sample("e1", q), s.sample("e2", q)]
    recs.append(s.control("e1", b"reset"))
    for q in range(4, 7):
        recs += [s.sample("e1", q), s.sample("e2", q)]
    recs.append(s.control("e1", b"set-state", {"states": {"h0": H, "c0": C}}))
    for q in range(7, 10):
        recs += [s.sample("e1", q), s.sample("e2", q)]
    assert has_control(recs)
    s.feed(recs)  # one poll
    eng = s.engines["main"]
    hops = s.hops()
    want = expected(eng, [2, 3]) | expected(eng, [6]) | expected(eng, [9], H, C)
    assert_hops(hops["e1"], want)
    assert_hops(hops["e2"], expected(eng, list(range(2, 10))))  # the other entity: untouched
    assert s.dead() == {}
    assert s.applied("reset") == 1 and s.applied("set-state") == 1
    # The state after the set-state's hop: one step of the engine from (H, C).
    _, hn, cn = eng.infer(
        window(range(7, 10))[None], np.asarray(H, np.float32)[:, None], np.asarray(C, np.float32)[:, None]
    )
    doc = s.state("e1")
    np.testing.assert_allclose(doc["states"][0]["values"], hn[:, 0], atol=1e-6)
    np.testing.assert_allclose(doc["states"][1]["values"], cn[:, 0], atol=1e-6)


def test_a_control_splits_the_poll_and_one_in_its_own_poll_applies_alike(one: Stream):
    s = one
    s.feed([s.sample("e1", q) for q in range(5)])
    s.feed([s.control("e1", b"set-state", {"model": "main", "states": {"h0": H, "c0": C}})])
    doc = s.state("e1")
    assert doc["samples_in_segment"] == 0 and doc["fresh"] is False, "a set-state starts an empty window"
    assert doc["states"][0]["values"] == H and doc["states"][1]["values"] == C
    s.feed([s.sample("e1", q) for q in range(5, 8)])
    assert_hops(
        s.hops()["e1"], expected(s.engines["main"], [2, 3, 4]) | expected(s.engines["main"], [7], H, C)
    )
    s.feed([s.control("e1", b"reset", b"")])
    doc = s.state("e1")
    assert doc["fresh"] is True and doc["samples_in_segment"] == 0
    assert all(v == 0 for t in doc["states"] for v in t["values"][0]), "a reset zeroes the state"


def test_set_state_admits_a_new_entity_from_the_given_state_and_checkpoints_it(one: Stream):
    s = one
    assert s.svc.describe_entity("new", False)[0] == 404
    s.svc.states.snapshot_dirty()
    s.feed([s.control("new", b"set-state", {"states": {"h0": H, "c0": C}}, partition=3)])
    doc = s.state("new")
    assert doc["states"][0]["values"] == H and doc["states"][1]["values"] == C
    assert doc["tier"] == "memory" and doc["samples_in_segment"] == 0
    s.svc.drain()
    written = {k: p for k, v, p in s.svc.states.snapshot_dirty() if v is not None}
    assert written == {state_key("main", b"new"): 3}, "the next checkpoint must write its state"
    s.feed([s.sample("new", q, partition=3) for q in range(3)])
    assert_hops(s.hops()["new"], expected(s.engines["main"], [2], H, C))


def test_a_reset_of_an_entity_not_held_changes_nothing(one: Stream):
    s = one
    s.feed([s.control("ghost", b"reset")])
    assert s.svc.describe_entity("ghost", False)[0] == 404
    assert s.dead() == {}


def test_a_control_read_again_is_not_applied_twice(one: Stream):
    s = one
    first = [s.sample("e1", q) for q in range(2)]
    ctl = s.control("e1", b"set-state", {"states": {"h0": H, "c0": C}})
    s.feed([*first, ctl] + [s.sample("e1", q) for q in range(2, 5)])
    before = s.state("e1")["states"]
    s.feed([ctl])  # input read again from an earlier offset after a restart
    assert s.state("e1")["states"] == before
    assert s.applied("set-state") == 1


def test_each_model_is_steered_only_where_the_control_says():
    s = Stream(THREE)
    try:
        ents = [f"dev-{i}" for i in range(8)]
        s.feed([s.sample(e, q) for q in range(3) for e in ents])
        canary = {e for e, r in zip(ents, s.svc.lanes.router.route(ents), strict=True) if r == 0}
        assert canary and canary != set(ents)
        target = sorted(canary)[0]
        # Only the shadow: the primary and the canary keep their chains.
        s.feed([s.control(target, b"set-state", {"model": "shad", "states": {"h0": H, "c0": C}})])
        s.feed([s.sample(e, q) for q in range(3, 6) for e in ents])
        shadow = s.hops("out.shadow.shad")
        assert_hops(shadow[target], expected(s.engines["shad"], [2]) | expected(s.engines["shad"], [5], H, C))
        out = s.hops()
        assert_hops(out[target], expected(s.engines["can"], [2, 3, 4, 5]))  # the canary serves it
        # A list: the primary and the canary; a reset of every model by default.
        s.feed([s.control(target, b"set-state", {"model": ["can", "main"], "states": {"h0": H, "c0": C}})])
        stores = {name: st for name, st in s.svc.states}
        for name in ("main", "can"):
            assert stores[name].tensors_of(target)[0].tolist() == H, name
        assert stores["shad"].tensors_of(target)[0].tolist() != H
        s.feed([s.control(target, b"reset")])
        for name, st in stores.items():
            view = st.describe(target, 0.0)
            assert view is not None and view.fresh and view.samples_in_segment == 0, name
        s.feed([s.control(target, b"set-state", {"model": "*", "states": {"h0": H, "c0": C}})])
        for name, st in stores.items():
            assert st.tensors_of(target)[1].tolist() == C, name
        assert s.dead() == {}
        assert s.applied("set-state") == 3 and s.applied("reset") == 1
    finally:
        s.close()


BAD = [
    (b"restart", None, "must be 'reset' or 'set-state'"),
    (b"set-state", b"{not json", "not JSON"),
    (b"set-state", b"", "needs a JSON object"),
    (b"set-state", [1, 2], "must be a JSON object"),
    (b"set-state", {"model": "nope", "states": {"h0": H, "c0": C}}, "unknown model 'nope'"),
    (b"set-state", {"model": [], "states": {"h0": H, "c0": C}}, "'model' must be"),
    (b"set-state", {"states": {"h0": H, "c0": C, "x0": H}}, "has no state 'x0'"),
    (b"set-state", {"states": {"h0": H}}, "state 'c0' of model 'main' is missing"),
    (b"set-state", {"states": {"h0": H[0], "c0": C}}, "has shape [4]; expected [1, 4]"),
    (b"set-state", {"states": {"h0": [[1, 2], [3]], "c0": C}}, "nested list of numbers of shape [1, 4]"),
    (b"set-state", {"states": {"h0": [["a", "b", "c", "d"]], "c0": C}}, "nested list of numbers"),
    (b"set-state", {"states": {"h0": [[1e39, 0, 0, 0]], "c0": C}}, "NaN or infinity"),
    (b"set-state", {"states": [H, C]}, "'states' must be an object"),
    (b"set-state", {"states": {"h0": H, "c0": C}, "extra": 1}, "takes 'model' and 'states'"),
    (b"set-state", {"model": "main"}, "needs 'states'"),
    (b"reset", {"states": {}}, "a reset takes only 'model'"),
    (b"reset", b"[]", "must be a JSON object"),
]


@pytest.mark.parametrize(("kind", "value", "detail"), BAD, ids=[b[2][:30] for b in BAD])
def test_a_bad_control_is_dead_lettered_and_changes_nothing(one: Stream, kind, value, detail):
    s = one
    s.feed([s.sample("e1", q) for q in range(4)])
    before = s.state("e1")
    bad = s.control("e1", kind, value)
    s.feed([s.sample("e2", 0), bad, s.sample("e1", 4), s.sample("e2", 1)])
    dead = s.dead()
    assert list(dead) == [bad.offset]
    reason, why = dead[bad.offset]
    assert reason == "bad_control" and detail in why, why
    assert s.invalid("bad_control") == 1
    after = s.state("e1")
    assert after["states"] != before["states"] and after["samples_in_segment"] == 5, "the samples go on"
    assert_hops(s.hops()["e1"], expected(s.engines["main"], [2, 3, 4]))
    assert s.applied("reset") == s.applied("set-state") == 0


def test_a_control_without_a_key_is_dead_lettered(one: Stream):
    s = one
    bad = s.control(None, b"reset")
    s.feed([bad])
    assert s.dead()[bad.offset][0] == "bad_control" and "needs a key" in s.dead()[bad.offset][1]


def test_a_control_while_they_are_off_is_dead_lettered_as_disabled():
    s = Stream(enabled=False)
    try:
        s.feed([s.sample("e1", q) for q in range(4)])
        before = s.state("e1")["states"]
        ctl = s.control("e1", b"set-state", {"states": {"h0": H, "c0": C}})
        s.feed([ctl, s.control("e9", b"set-state", {"states": {"h0": H, "c0": C}})])
        reason, why = s.dead()[ctl.offset]
        assert reason == "control_disabled" and "input.control_messages" in why
        assert s.invalid("control_disabled") == 2
        assert s.state("e1")["states"] == before
        assert s.svc.describe_entity("e9", False)[0] == 404
        assert s.applied("set-state") == 0
    finally:
        s.close()


def test_the_refusal_reasons_are_known():
    assert {"control_disabled", "bad_control"} <= set(INVALID_REASONS)


def test_a_poll_without_headers_is_not_scanned_per_record():
    recs = [ConsumedRecord("in", 0, i, 0, b"e", b"{}") for i in range(3)]
    assert not has_control(recs)
    assert not has_control([*recs, ConsumedRecord("in", 0, 9, 0, b"e", b"{}", [("reset", b"1")])])
    assert has_control([*recs, ConsumedRecord("in", 0, 9, 0, b"e", b"", [("control", b"x")])])


# --- generated controls: nothing crashes, every bad one is refused, the samples are served ---

_STREAM: list[Stream] = []
_NAMES = itertools.count()


def _stream() -> Stream:
    if not _STREAM:
        _STREAM.append(Stream())
    return _STREAM[0]


@pytest.fixture(scope="module", autouse=True)
def _close_generated_stream():
    yield
    for s in _STREAM:
        s.close()
    _STREAM.clear()


json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
)
json_any = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)
state_like = st.one_of(
    json_any,
    st.lists(st.lists(st.floats(allow_nan=False), min_size=0, max_size=6), max_size=3),
)
documents = st.fixed_dictionaries(
    {},
    optional={
        "model": st.one_of(
            st.sampled_from(["main", "*", "other", ""]), st.lists(st.text(max_size=4), max_size=3), json_any
        ),
        "states": st.one_of(
            json_any, st.dictionaries(st.sampled_from(["h0", "c0", "x0", ""]), state_like, max_size=3)
        ),
    },
)
values = st.one_of(st.none(), st.binary(max_size=40), documents.map(orjson.dumps), json_any.map(orjson.dumps))
kinds = st.one_of(
    st.sampled_from([b"reset", b"set-state", b"RESET", b" set-state ", b"", b"\xff"]), st.binary(max_size=12)
)
controls = st.lists(st.tuples(kinds, values), min_size=1, max_size=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(controls)
def test_generated_controls_never_crash_and_the_samples_around_them_are_served(ctls):
    s = _stream()
    n = next(_NAMES)
    target, bystander = f"t{n}", f"b{n}"
    dead_before = set(s.dead())
    applied_before = s.applied("reset") + s.applied("set-state")
    recs = [s.sample(bystander, q) for q in range(2)]
    ctl_offsets = []
    for kind, value in ctls:
        rec = s.control(target, kind, value)
        ctl_offsets.append(rec.offset)
        recs += [rec, s.sample(bystander, len(recs))]
    seqs = [orjson.loads(r.value)["seq"] for r in recs if r.headers == ()]
    s.feed(recs)
    dead = {o: r for o, r in s.dead().items() if o not in dead_before}
    applied = s.applied("reset") + s.applied("set-state") - applied_before
    assert set(dead) <= set(ctl_offsets), "only control messages may be refused here"
    assert all(r[0] == "bad_control" for r in dead.values()), dead
    assert len(dead) + applied == len(ctls), "a control was neither applied nor refused"
    for o, (_, why) in dead.items():
        assert why, f"control at {o} refused without a reason"
    hops = s.hops().get(bystander, {})
    assert sorted(hops) == seqs[W - 1 :], "every hop of the samples around the controls is served"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["drop", "rename", "reshape", "overflow", "string", "model"]),
    st.sampled_from(["h0", "c0"]),
    st.integers(0, 3),
)
def test_every_broken_set_state_is_refused(how, name, i):
    s = _stream()
    n = next(_NAMES)
    target = f"m{n}"
    states = {"h0": [list(r) for r in H], "c0": [list(r) for r in C]}
    doc: dict = {"states": states}
    if how == "drop":
        del states[name]
    elif how == "rename":
        states[name + "x"] = states.pop(name)
    elif how == "reshape":
        states[name] = states[name][0][:i]
    elif how == "overflow":
        states[name][0][i] = 3.5e38 * 10
    elif how == "string":
        states[name][0][i] = "1.0"
    else:
        doc["model"] = ["main", f"m{i}"]
    dead_before = set(s.dead())
    rec = s.control(target, b"set-state", doc)
    s.feed([s.sample(target, 0), rec, s.sample(target, 1)])
    dead = {o: r for o, r in s.dead().items() if o not in dead_before}
    assert list(dead) == [rec.offset] and dead[rec.offset][0] == "bad_control"
    assert s.state(target)["samples_in_segment"] == 2, "a refused control changes nothing"
