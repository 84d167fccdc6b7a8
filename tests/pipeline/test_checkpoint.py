"""The commit path's order and its background part, with plain fakes for the clients (the real
broker runs the same path in tests/integration/test_durability.py): periodic checkpoints return
while the flush, changelog and commit are in flight, and the offsets go out only after them."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from kafka import TopicPartition
from prometheus_client import CollectorRegistry

from stream_infer.config import load_settings
from stream_infer.kafka.errors import KafkaTimeoutError
from stream_infer.metrics import Metrics
from stream_infer.pipeline.checkpoint import Checkpointer
from stream_infer.pipeline.sink import Sink

TP = TopicPartition("in", 0)


class Log:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.lock = threading.Lock()

    def add(self, e: str) -> None:
        with self.lock:
            self.events.append(e)


class FakeProducer:
    client = "fake"

    def __init__(self, log: Log, gate: threading.Event | None = None, fail_commit: bool = False) -> None:
        self.log = log
        self.gate = gate
        self.fail_commit = fail_commit
        self.on_error: Any = None

    def produce(self, topic, key, value, partition=None, headers=None) -> None:
        self.log.add(f"send {topic}")

    def key_partitions(self, topic, keys):
        return [None] * len(keys)

    def flush_within(self, timeout_s=None) -> None:
        if self.gate is not None:
            assert self.gate.wait(10), "the test never let the flush finish"
        self.log.add("flush")

    def init_transactions(self) -> None:
        self.log.add("init")

    def begin_transaction(self) -> None:
        self.log.add("begin")

    def commit_transaction_with(self, offsets, group, timeout_ms) -> None:
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.fail_commit:
            raise KafkaTimeoutError("no answer")
        self.log.add(f"commit txn {sorted(o.offset for o in offsets.values())}")

    def abandon(self) -> None:
        self.log.add("abandon")

    def close(self, timeout=None) -> None:
        pass


class FakeConsumer:
    client = "fake"

    def __init__(self, log: Log) -> None:
        self.log = log

    def commit_async(self, offsets, callback=None) -> None:
        self.log.add(f"commit {sorted(o.offset for o in offsets.values())}")

    def commit(self, offsets) -> None:
        self.log.add(f"commit sync {sorted(o.offset for o in offsets.values())}")

    def group_metadata(self):
        return "group"


class FakeStore:
    def __init__(self, log: Log) -> None:
        self.log = log

    on_disk = 0
    disk_bytes = 0

    def __len__(self) -> int:
        return 1

    def expire_idle(self, now, ttl) -> int:
        return 0

    def snapshot_dirty(self):
        self.log.add("snapshot")
        return [(b"e1", b"state", 0)]


def make(guarantee: str, gate: threading.Event | None = None, fail_commit: bool = False):
    log = Log()
    settings = load_settings(None, delivery={"guarantee": guarantee})
    producer = FakeProducer(log, gate, fail_commit)
    sink = Sink(producer, "out", "dlq", "cl", "m@1", ["a", "b"])
    cp = Checkpointer(
        consumer=FakeConsumer(log),  # type: ignore[arg-type]
        sink=sink,
        store=FakeStore(log),  # type: ignore[arg-type]
        drain=lambda: log.add("drain"),
        restore=lambda parts: 0,
        metrics=Metrics(CollectorRegistry()),
        settings=settings,
    )
    return cp, log, sink


def test_at_least_once_order_flush_changelog_flush_then_offsets():
    cp, log, _ = make("at-least-once")
    cp.track({TP: [type("R", (), {"offset": 41})()]})
    cp.checkpoint()
    assert log.events == ["drain", "snapshot", "flush", "send cl", "flush", "commit sync [42]"]
    cp.close()


def test_a_periodic_checkpoint_returns_while_its_flush_is_in_flight():
    gate = threading.Event()
    cp, log, _ = make("at-least-once", gate)
    cp.track({TP: [type("R", (), {"offset": 9})()]})
    cp.checkpoint(wait_commit=False)  # returns at once: the flush waits for the gate
    assert log.events == ["drain", "snapshot"]
    cp.settle()  # not done yet: nothing is committed
    cp.checkpoint(wait_commit=False)  # one in flight: skipped, not waited for
    assert "commit [10]" not in log.events and log.events.count("drain") == 1
    cp.track({TP: [type("R", (), {"offset": 19})()]})  # polling goes on meanwhile
    gate.set()
    cp._in_flight.done.result(5)
    cp.settle()
    assert log.events[-4:] == ["flush", "send cl", "flush", "commit [10]"]  # the snapshot's offsets
    cp.checkpoint()  # the next one commits what was tracked since
    assert log.events[-1] == "commit sync [20]"
    cp.close()


def test_exactly_once_holds_the_sink_while_the_transaction_commits():
    gate = threading.Event()
    cp, log, sink = make("exactly-once", gate)
    cp.track({TP: [type("R", (), {"offset": 4})()]})
    cp.checkpoint(wait_commit=False)
    assert not sink._gate.is_set(), "predictions must wait for the next transaction"
    published = threading.Event()
    t = threading.Thread(target=lambda: (sink._open(), published.set()))
    t.start()
    assert not published.wait(0.2)
    gate.set()
    assert published.wait(5)
    cp.settle(wait=True)
    after = log.events[log.events.index("snapshot") :]
    assert after == ["snapshot", "send cl", "commit txn [5]", "begin"]
    cp.close()


def test_a_failed_background_transaction_rewinds_and_drops_the_held_sends(monkeypatch):
    gate = threading.Event()
    gate.set()
    cp, log, sink = make("exactly-once", gate, fail_commit=True)
    rewound = []
    monkeypatch.setattr(cp, "rewind", lambda: rewound.append(1))
    cp.track({TP: [type("R", (), {"offset": 4})()]})
    cp.checkpoint(wait_commit=False)
    cp.settle(wait=True)
    assert rewound == [1] and cp.rewind_pending
    assert sink._gate.is_set() and not sink._open()  # nothing waits; sends are dropped
    cp.close()


@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
def test_checkpoint_in_a_callback_waits_for_the_one_in_flight(guarantee):
    gate = threading.Event()
    cp, log, _ = make(guarantee, gate)
    cp.track({TP: [type("R", (), {"offset": 1})()]})
    cp.checkpoint(wait_commit=False)
    threading.Timer(0.1, gate.set).start()
    cp.checkpoint(in_callback=True)
    assert log.events.count("drain") == 2 and cp._in_flight is None
    cp.close()
