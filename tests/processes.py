"""Helpers for durability tests: the service as real OS processes, real BasicMotions streams fed
at a steady rate, and the offline reference to compare every prediction with.

A ``ServiceProcess`` is ``python -m stream_infer.cli serve --config FILE`` with a YAML file
written by the test; it is killed (``SIGKILL``), terminated (``SIGTERM``) or left to run, and
its log is kept in the test's temporary directory for the failure message.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import yaml
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from tests.reference import output_of, published
from tests.streaming import client_choice

ROOT = Path(__file__).resolve().parents[1]
TS0 = 1_700_000_000_000


# Connection settings (TLS, SASL) of a secured broker, by bootstrap address: every client these
# helpers make for that address uses them (tests/integration/test_secured_broker.py).
SECURED: dict[str, dict[str, Any]] = {}


def connection(bootstrap: str) -> dict[str, Any]:
    """kafka-python connection keywords for ``bootstrap`` (its ``SECURED`` settings, if any)."""
    return {"bootstrap_servers": bootstrap, **SECURED.get(bootstrap, {})}


def _client_id(role: str) -> str:
    """A client id of its own: kafka-python 3 shares one network loop between clients of the
    same id in a process, so a client left wedged by a broker outage must not serve the next."""
    return f"test-{role}-{uuid.uuid4().hex[:8]}"


def reader_consumer(bootstrap: str, committed_only: bool = True, **kw: Any) -> KafkaConsumer:
    """A group-less consumer that reads from the start, with a client id of its own."""
    return KafkaConsumer(
        **connection(bootstrap),
        client_id=_client_id("reader"),
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed" if committed_only else "read_uncommitted",
        **kw,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def service_config(bootstrap: str, topic: str, artifact: Path, instance: str, **over: Any) -> dict[str, Any]:
    """Settings for one instance: static membership, short session timeout, fast commits."""
    base: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "group_id": f"g-{topic}",
            "client_id": f"c-{topic}-{instance}",
            "group_instance_id": instance,
            "session_timeout_ms": 6000,
            "reconnect_backoff_max_ms": 1000,
            **client_choice(),
        },
        "topics": {"input": topic, "output": f"{topic}.out"},
        "model": {"artifact": str(artifact), "backend": "onnxruntime"},
        "metrics": {"host": "127.0.0.1", "port": free_port()},
        "batcher": {"max_wait_ms": 5, "max_batch": 256},
        "delivery": {"commit_interval_ms": 1000},
        "shutdown_grace_s": 20,
    }
    return _merge(base, over)


_WITHOUT = """
import sys
from importlib.abc import MetaPathFinder

class _NotInstalled(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NotInstalled())
sys.argv[0] = "stream-infer"
from stream_infer.cli import main
main()
"""


def python_without(blocked: tuple[str, ...] = ()) -> list[str]:
    """The argv prefix of ``stream-infer`` run by this interpreter; the top-level packages in
    ``blocked`` fail to import there as if they were not installed."""
    if not blocked:
        return [sys.executable, "-m", "stream_infer.cli"]
    return [sys.executable, "-c", f"BLOCKED = {set(blocked)!r}\n{_WITHOUT}"]


def run_cli(
    *args: str, without: tuple[str, ...] = (), timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    """``stream-infer *args`` as a process of this interpreter (no ``STREAM_INFER_*`` variables
    of the caller's environment), its output captured; ``without`` as for ``python_without``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_INFER_")}
    return subprocess.run(
        [*python_without(without), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


class ServiceProcess:
    """One ``stream-infer serve`` process; stdout and stderr go to ``<dir>/<instance>-N.log``."""

    _n = 0

    def __init__(self, config: dict[str, Any], directory: Path, without: tuple[str, ...] = ()) -> None:
        """``without``: top-level packages the process cannot import, as if not installed."""
        ServiceProcess._n += 1
        self.config = config
        self.name = f"{config['kafka']['group_instance_id']}-{ServiceProcess._n}"
        self.cfg_path = directory / f"{self.name}.yaml"
        self.cfg_path.write_text(yaml.safe_dump(config))
        self.log_path = directory / f"{self.name}.log"
        self.port = int(config["metrics"]["port"])
        self._log = self.log_path.open("wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_INFER_")}
        self.proc = subprocess.Popen(
            [*python_without(without), "serve", "--config", str(self.cfg_path)],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def _get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, ""
        except OSError:
            return 0, ""

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while self._get("/readyz")[0] != 200:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} not ready in {timeout_s}s:\n{self.log()}")
            time.sleep(0.1)

    def metric(self, name: str) -> float:
        """Sum of every sample of ``name`` (labels included, e.g. ``name{a="b"}``)."""
        _, body = self._get("/metrics")
        total = 0.0
        for line in body.splitlines():
            if line.startswith(name) and line[len(name)] in " {":
                total += float(line.rsplit(" ", 1)[1])
        return total

    def wait_metric(self, name: str, at_least: float, timeout_s: float = 60) -> None:
        """Until ``metric(name) >= at_least``; fails at once if the process exits."""
        deadline = time.monotonic() + timeout_s
        while (got := self.metric(name)) < at_least:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name}: {name} = {got} < {at_least} after {timeout_s}s:\n{self.log()}"
                )
            time.sleep(0.05)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout_s: float) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"{self.name} did not exit within {timeout_s}s:\n{self.log()}") from None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self, tail: int = 60) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-tail:])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


# --- data: BasicMotions recordings as entity streams, and their reference ---


def entity_streams(n_entities: int, recordings_per_entity: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``n_entities`` streams [T, 6] float32, each a few real recordings back to back."""
    from stream_infer.model import datasets

    recs = datasets.basic_motions().values  # R recordings [T, 6]
    rng = np.random.default_rng(seed)
    return {
        f"ent-{i:03d}": np.concatenate(
            [recs[j] for j in rng.choice(len(recs), recordings_per_entity)]
        ).astype(np.float32)
        for i in range(n_entities)
    }


def reference(artifact: Path, streams: dict[str, np.ndarray]) -> dict[tuple[str, int], np.ndarray]:
    """(entity, seq of the hop's last sample) -> scores, computed offline with torch from zero state."""
    from stream_infer.model.export import load_model
    from stream_infer.model.train import predict_recording

    card, model = load_model(artifact)
    out: dict[tuple[str, int], np.ndarray] = {}
    for e, x in streams.items():
        y = predict_recording(model, x, card.window, card.hop)
        for i, row in enumerate(y):
            out[(e, card.window - 1 + i * card.hop)] = published(row)
    return out


@dataclass
class Feeder:
    """Sends the streams round by round (one sample of every entity per round) at ``rate`` msg/s,
    on a thread; remembers each sample's (partition, offset)."""

    bootstrap: str
    topic: str
    streams: dict[str, np.ndarray]
    rate: float
    offsets: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    sent: int = 0

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._error: BaseException | None = None
        self._resume = threading.Event()
        self._resume.set()

    @property
    def total(self) -> int:
        return sum(len(x) for x in self.streams.values())

    def start(self) -> Feeder:
        self._thread.start()
        return self

    def pause(self) -> None:
        self._resume.clear()

    def resume(self) -> None:
        self._resume.set()

    def join(self, timeout_s: float = 120) -> None:
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "feeder did not finish"
        if self._error:
            raise self._error

    def _run(self) -> None:
        try:
            p = KafkaProducer(
                **connection(self.bootstrap), client_id=_client_id("feeder"), linger_ms=2, acks="all"
            )
            futs = []
            n = max(len(x) for x in self.streams.values())
            t0 = time.monotonic()
            for i in range(n):
                self._resume.wait()
                for e, x in self.streams.items():
                    if i < len(x):
                        doc = {"seq": i, "ts": TS0 + 10 * i, "values": x[i].tolist()}
                        futs.append(((e, i), p.send(self.topic, key=e.encode(), value=orjson.dumps(doc))))
                        self.sent += 1
                ahead = self.sent / self.rate - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
            p.flush()
            for k, f in futs:
                md = f.get(30)
                self.offsets[k] = (md.partition, md.offset)
            p.close()
        except BaseException as exc:
            self._error = exc


def read_predictions(
    bootstrap: str, topic: str, expect: int, timeout_s: float = 60, committed_only: bool = True
) -> list[dict[str, Any]]:
    """Every record of ``topic`` from the start, once at least ``expect`` arrived (or the timeout),
    plus a short grace for extra ones (duplicates)."""
    c = reader_consumer(bootstrap, committed_only)
    parts = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or [])]
    c.assign(parts)
    c.seek_to_beginning(*parts)
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    quiet_until = None
    while time.monotonic() < deadline:
        got = c.poll(timeout_ms=200)
        for recs in got.values():
            out.extend(orjson.loads(r.value) for r in recs)
        if len(out) >= expect:
            quiet_until = quiet_until or time.monotonic() + 1.0
            if time.monotonic() > quiet_until:
                break
    c.close()
    return out


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offsets (0 where none), read without joining the group."""
    c = KafkaConsumer(
        **connection(bootstrap), client_id=_client_id("offsets"), group_id=group, enable_auto_commit=False
    )
    try:
        out = {}
        for p in range(partitions):
            out[p] = c.committed(TopicPartition(topic, p)) or 0
        return out
    finally:
        c.close(autocommit=False)


def open_transaction_records(bootstrap: str, topic: str, partitions: int) -> int:
    """Records of ``topic`` in transactions still open: the high watermark (read_uncommitted's
    end) minus the last stable offset (read_committed's end), summed over partitions."""
    parts = [TopicPartition(topic, p) for p in range(partitions)]
    ends = {}
    for iso in ("read_uncommitted", "read_committed"):
        c = KafkaConsumer(
            **connection(bootstrap),
            client_id=_client_id(f"ends-{iso}"),
            group_id=None,
            isolation_level=iso,
        )
        try:
            ends[iso] = c.end_offsets(parts)
        finally:
            c.close()
    return sum(ends["read_uncommitted"][tp] - ends["read_committed"][tp] for tp in parts)


def check_against_reference(
    preds: list[dict[str, Any]], ref: dict[tuple[str, int], np.ndarray], atol: float = 1e-4
) -> dict[tuple[str, int], int]:
    """Assert every prediction equals the reference hop; return the count per (entity, seq)."""
    counts: dict[tuple[str, int], int] = {}
    wrong = []
    for p in preds:
        k = (p["entity"], p["seq"])
        counts[k] = counts.get(k, 0) + 1
        if k not in ref:
            wrong.append((k, "not a hop"))
        elif not np.allclose(output_of(p), ref[k], atol=atol):
            wrong.append((k, f"{output_of(p)} != {ref[k].tolist()}"))
    assert not wrong, f"{len(wrong)} predictions differ from the reference, e.g. {wrong[:3]}"
    return counts


# --- bad messages between good traffic: any input format, injected messages, the DLQ ---

Message = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]  # key, value, headers
Origin = tuple[int, int]  # (partition, offset) of an input message


def good_message(fmt: str, entity: str, seq: int, row: np.ndarray) -> Message:
    """Sample ``seq`` of ``entity`` in the ``json``, ``f32`` or ``registry`` (Avro, schema id 1 of
    ``tests/registry.py``) input format, timed like ``Feeder``."""
    ts = TS0 + 10 * seq
    if fmt == "registry":
        from tests.registry import avro_sample

        return entity.encode(), avro_sample(seq, ts, row.tolist()), []
    if fmt == "json":
        return entity.encode(), orjson.dumps({"seq": seq, "ts": ts, "values": row.tolist()}), []
    if fmt == "f32":
        return entity.encode(), row.astype("<f4").tobytes(), [("seq", b"%d" % seq), ("ts", b"%d" % ts)]
    raise ValueError(f"no good messages for format {fmt!r}")


def create_topic(bootstrap: str, name: str, partitions: int, **configs: str) -> None:
    """``name`` with ``configs`` (broker defaults otherwise), e.g. a dead-letter topic made before
    the service starts, so the service finds it and keeps its settings."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(**connection(bootstrap), client_id=_client_id("admin"))
    try:
        admin.create_topics([NewTopic(name, partitions, 1, topic_configs=configs)])
    finally:
        admin.close()


class StreamFeeder:
    """Sends ``streams`` round by round (sample i of every entity is round i) in the ``json`` or
    ``f32`` format at ``rate`` good messages per second, on a thread, and never past the round
    given to ``release`` (at that point everything sent is flushed and acknowledged).

    ``extra[i]``: messages (bad ones, bursts of new entities) sent just before round i, through a
    second producer and flushed at once, so that each group travels as one record batch per
    partition and reaches the service in one poll. Every message's (partition, offset) is kept:
    ``offsets`` for the good samples, ``extra_offsets`` for the extra messages.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        streams: dict[str, np.ndarray],
        rate: float,
        fmt: str = "json",
        extra: dict[int, list[Message]] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.streams = streams
        self.rate = rate
        self.fmt = fmt
        self.extra = extra or {}
        self.rounds = max(len(x) for x in streams.values())
        self.sent = 0  # messages handed to a producer, good and extra
        self.done = 0  # rounds handed to the producer
        self.offsets: dict[tuple[str, int], Origin] = {}
        self.extra_offsets: list[tuple[Message, Origin]] = []
        self._upto = 0
        self._cond = threading.Condition()
        self._idle = threading.Event()
        self._stopped = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def total(self) -> int:
        return sum(len(x) for x in self.streams.values()) + sum(len(m) for m in self.extra.values())

    def start(self, upto: int | None = None) -> StreamFeeder:
        self.release(upto)
        self._thread.start()
        return self

    def release(self, upto: int | None = None) -> None:
        """Send up to round ``upto`` (exclusive; all rounds when ``None``)."""
        with self._cond:
            self._upto = self.rounds if upto is None else min(upto, self.rounds)
            if self.done < self._upto:
                self._idle.clear()
            self._cond.notify_all()

    def wait_round(self, r: int, timeout_s: float = 60) -> None:
        """Until round ``r`` is handed to the producer (not necessarily acknowledged)."""
        deadline = time.monotonic() + timeout_s
        while self.done < r:
            self._raise()
            assert self._thread.is_alive(), "feeder stopped"
            assert time.monotonic() < deadline, f"the feeder did not reach round {r} in {timeout_s}s"
            time.sleep(0.02)

    def wait_idle(self, timeout_s: float = 60) -> None:
        """Until everything released is sent, flushed and acknowledged."""
        assert self._idle.wait(timeout_s), f"the feeder did not finish its rounds in {timeout_s}s"
        self._raise()

    def join(self, timeout_s: float = 120) -> None:
        """Release every round, wait until all are acknowledged; their offsets are then known."""
        self.release()
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "feeder did not finish"
        self._raise()

    def stop(self) -> None:
        """Give up: the thread sends nothing more and closes its producers (a failed test)."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join(30)

    def _raise(self) -> None:
        if self._error:
            raise self._error

    def _run(self) -> None:
        futs: list[tuple[tuple[str, int], Any]] = []
        extra_futs: list[tuple[Message, Any]] = []
        try:
            kw: dict[str, Any] = dict(**connection(self.bootstrap), acks="all", max_request_size=16 << 20)
            p = KafkaProducer(client_id=_client_id("feeder"), linger_ms=2, **kw)
            burst = KafkaProducer(
                client_id=_client_id("feeder-extra"), linger_ms=1000, batch_size=1 << 20, **kw
            )
            t0, base = time.monotonic(), 0
            for i in range(self.rounds):
                if i >= self._upto:
                    p.flush()
                    burst.flush()
                    with self._cond:
                        self._idle.set()
                        self._cond.wait_for(lambda i=i: i < self._upto or self._stopped)
                    t0, base = time.monotonic(), self.sent  # no catching up for the pause
                if self._stopped:
                    break
                for m in self.extra.get(i, []):
                    extra_futs.append((m, burst.send(self.topic, key=m[0], value=m[1], headers=m[2])))
                    self.sent += 1
                if i in self.extra:
                    burst.flush()
                for e, x in self.streams.items():
                    if i < len(x):
                        key, value, headers = good_message(self.fmt, e, i, x[i])
                        futs.append(((e, i), p.send(self.topic, key=key, value=value, headers=headers)))
                        self.sent += 1
                self.done = i + 1
                ahead = (self.sent - base) / self.rate - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
            if self._stopped:
                for producer in (p, burst):
                    try:
                        producer.close(timeout=1)
                    except Exception as exc:  # records still unsent: nobody waits for them
                        self._error = exc
                return
            p.flush()
            burst.flush()
            for k, f in futs:
                md = f.get(60)
                self.offsets[k] = (md.partition, md.offset)
            for m, f in extra_futs:
                md = f.get(60)
                self.extra_offsets.append((m, (md.partition, md.offset)))
            p.close()
            burst.close()
        except BaseException as exc:
            self._error = exc
        finally:
            self._idle.set()


class TopicReader:
    """Reads every partition of a topic from the start, with a client id of its own."""

    def __init__(self, bootstrap: str, topic: str, committed_only: bool = True) -> None:
        self.consumer = reader_consumer(bootstrap, committed_only, max_partition_fetch_bytes=16 << 20)
        deadline = time.monotonic() + 30
        while not (parts := self.consumer.partitions_for_topic(topic)):
            assert time.monotonic() < deadline, f"topic {topic} has no partitions"
            time.sleep(0.2)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)

    def poll(self, timeout_ms: int = 200) -> list[Any]:
        return [r for recs in self.consumer.poll(timeout_ms=timeout_ms).values() for r in recs]

    def close(self) -> None:
        self.consumer.close()


def read_hops(
    bootstrap: str,
    topic: str,
    hops: set[tuple[str, int]],
    timeout_s: float = 60,
    committed_only: bool = True,
    grace_s: float = 1.0,
) -> list[dict[str, Any]]:
    """Every prediction of ``topic``, read until each of ``hops`` (entity, seq) has arrived (or
    the timeout), then ``grace_s`` longer for late duplicates. Unlike a count, a set is not
    fooled by duplicates arriving before the last hops."""
    reader = TopicReader(bootstrap, topic, committed_only)
    out: list[dict[str, Any]] = []
    left = set(hops)
    deadline = time.monotonic() + timeout_s
    try:
        while left and time.monotonic() < deadline:
            for r in reader.poll():
                p = _located(r)
                out.append(p)
                left.discard((p["entity"], p["seq"]))
        end = time.monotonic() + grace_s
        while time.monotonic() < end:
            out.extend(_located(r) for r in reader.poll(100))
    finally:
        reader.close()
    return out


def _located(record: Any) -> dict[str, Any]:
    """A prediction with where it was read (``_at``: partition@offset), for failure messages."""
    p = orjson.loads(record.value)
    p["_at"] = f"{record.partition}@{record.offset}"
    return p


def read_dead_letters(
    bootstrap: str, topic: str, origins: set[Origin], timeout_s: float = 60, grace_s: float = 1.0
) -> list[Any]:
    """Every record of the dead-letter ``topic`` (read_committed), read until one for each of
    ``origins`` (its ``source.partition``/``source.offset``) has arrived, then ``grace_s``."""
    reader = TopicReader(bootstrap, topic)
    out: list[Any] = []
    left = set(origins)
    deadline = time.monotonic() + timeout_s
    try:
        while left and time.monotonic() < deadline:
            for r in reader.poll():
                out.append(r)
                h = dict(r.headers)
                if "source.partition" in h and "source.offset" in h:
                    left.discard((int(h["source.partition"]), int(h["source.offset"])))
        end = time.monotonic() + grace_s
        while time.monotonic() < end:
            out.extend(reader.poll(100))
    finally:
        reader.close()
    return out


def check_delivery(
    preds: list[dict[str, Any]], ref: dict[tuple[str, int], np.ndarray], guarantee: str, atol: float = 1e-5
) -> dict[tuple[str, int], int]:
    """Every hop of ``ref`` predicted; every prediction at a hop (none out of phase, none of an
    entity without a reference) and within ``atol`` of it; exactly once under exactly-once, and
    under at-least-once duplicates identical to each other (same scores and label). Returns the
    count per hop."""
    counts = check_against_reference(preds, ref, atol)
    worst = max(
        (float(np.max(np.abs(np.subtract(output_of(p), ref[p["entity"], p["seq"]])))) for p in preds),
        default=0.0,
    )
    assert worst <= atol, f"a prediction is {worst:.2e} from the reference (> {atol})"
    missing = sorted(set(ref) - set(counts))
    assert not missing, f"{len(missing)} of {len(ref)} hops have no prediction, e.g. {missing[:5]}"
    dups = {k: n for k, n in counts.items() if n > 1}
    if guarantee == "exactly-once":
        where: dict[tuple[str, int], list[str]] = {}
        for p in preds:
            if (k := (p["entity"], p["seq"])) in dups:
                where.setdefault(k, []).append(p.get("_at", "?"))
        assert not dups, (
            f"{len(dups)} hops published more than once, e.g. {sorted(dups)[:5]}; "
            f"copies at (partition@offset): {dict(sorted(where.items())[:8])}"
        )
    else:
        first: dict[tuple[str, int], dict[str, Any]] = {}
        differ = []
        for p in preds:
            k = (p["entity"], p["seq"])
            if k in dups:
                f = first.setdefault(k, p)
                if _content(f) != _content(p):
                    differ.append((k, output_of(f), output_of(p)))
        assert not differ, f"{len(differ)} duplicates differ from their first copy, e.g. {differ[:2]}"
    return counts


def _content(prediction: dict[str, Any]) -> dict[str, Any]:
    """What a duplicate must repeat: everything but when it was emitted and where it landed."""
    return {k: v for k, v in prediction.items() if k not in ("emit_time_ms", "_at")}


def check_dead_letters(
    records: list[Any], source_topic: str, expected: dict[Origin, tuple[Message, str]], guarantee: str
) -> dict[Origin, int]:
    """Each of ``expected`` (origin -> (message, reason)) on the dead-letter topic with its reason,
    origin, key, original headers and value, and nothing else there; once under exactly-once, and
    under at-least-once possibly more often (a replay), each copy alike. A value cut to fit the
    topic must be a prefix of the original and carry ``error.value_truncated`` (original size).
    Returns the count per origin."""
    counts: dict[Origin, int] = {}
    wrong = []
    for r in records:
        h = dict(r.headers)
        where = (int(h.get("source.partition", -1)), int(h.get("source.offset", -1)))
        if h.get("source.topic") != source_topic.encode() or where not in expected:
            wrong.append((where, "not a message sent as bad", h.get("error.reason")))
            continue
        counts[where] = counts.get(where, 0) + 1
        (key, value, headers), reason = expected[where]
        if h.get("error.reason") != reason.encode():
            wrong.append((where, f"reason {h.get('error.reason')!r} != {reason}", h.get("error.detail")))
        if r.key != key:
            wrong.append((where, f"key {r.key!r} != {key!r}"))
        kept = [hd for hd in r.headers if not hd[0].startswith(("error.", "source."))]
        if kept != headers and "error.headers_dropped" not in h:
            wrong.append((where, f"headers {kept} != {headers}"))
        if "error.value_truncated" in h:
            ok = value is not None and h["error.value_truncated"] == b"%d" % len(value)
            if not ok or r.value is None or len(r.value) >= len(value) or not value.startswith(r.value):
                wrong.append((where, "truncated value is not a prefix of the original or its size is wrong"))
        elif r.value != value:
            wrong.append((where, f"value differs ({len(r.value or b'')} bytes, sent {len(value or b'')})"))
    assert not wrong, f"{len(wrong)} dead letters are wrong, e.g. {wrong[:3]}"
    missing = sorted(set(expected) - set(counts))
    assert not missing, f"{len(missing)} of {len(expected)} bad messages are not dead-lettered: {missing[:5]}"
    if guarantee == "exactly-once":
        twice = sorted(k for k, n in counts.items() if n > 1)
        assert not twice, f"{len(twice)} bad messages dead-lettered more than once: {twice[:5]}"
    return counts
