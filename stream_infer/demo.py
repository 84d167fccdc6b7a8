"""The main job, end to end on the local default: broker, model, service, replay, report.

1. start the local Kafka broker (unless KAFKA_BOOTSTRAP names one);
2. train the BasicMotions model (or reuse it) — the LFW frame model for ``kind="frame"``;
3. start ``stream-infer serve`` as its own process on fresh topics;
4. replay the test split as many interleaved entities (real video per camera for frames);
5. print a live summary and a final table, then stop everything it started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import yaml

from stream_infer.model.card import load_card
from stream_infer.replay import Format, Replayer, Stream, frame_streams, sensor_streams


@dataclass
class Tally:
    """Predictions read back from the output topic."""

    n: int = 0
    latency_ms: list[float] = field(default_factory=list)
    end_correct: int = 0
    end_total: int = 0
    hop_correct: int = 0
    hop_total: int = 0
    labels: dict[str, int] = field(default_factory=dict)
    seen: set[tuple[str, int]] = field(default_factory=set)
    duplicates: int = 0


def find_kafka_script() -> Path | None:
    """The repository's broker script, from the working directory (``make demo`` runs in the
    repository root): an installed package carries no broker. None: run from the repository,
    or set ``KAFKA_BOOTSTRAP`` to a broker of your own."""
    p = Path.cwd() / "deploy" / "local" / "kafka.sh"
    return p if p.is_file() else None


def run_demo(
    kind: str = "sensor",
    entities: int = 200,
    rate: float = 2000.0,
    samples_per_message: int = 1,
    partitions: int = 4,
    artifacts: Path = Path("artifacts"),
    backend: str = "onnxruntime",
    metrics_port: int = 9100,
) -> int:
    from stream_infer.model.zoo import ensure_model

    bootstrap = os.environ.get("KAFKA_BOOTSTRAP", f"127.0.0.1:{os.environ.get('KAFKA_PORT', '9092')}")
    script = find_kafka_script()
    started_broker = False
    if "KAFKA_BOOTSTRAP" not in os.environ:
        if script is None:
            print(
                "error: deploy/local/kafka.sh not found: run from the repository root, "
                "or set KAFKA_BOOTSTRAP to your broker",
                file=sys.stderr,
            )
            return 2
        if subprocess.run([str(script), "status"], capture_output=True).returncode != 0:
            subprocess.run([str(script), "start"], check=True)
            started_broker = True
    service: subprocess.Popen[bytes] | None = None
    try:
        print(f"== model: {kind}")
        art = ensure_model("sensor" if kind == "sensor" else "frame", artifacts, progress=True)
        card = load_card(art)
        print(f"   {card.model_id}: W={card.window} hop={card.hop} accuracy {card.accuracy}")
        run_id = time.strftime("%Y%m%d-%H%M%S")
        topic = f"demo-{kind}-{run_id}"
        streams, fmt = _streams(kind, entities, card)
        _create_topic(bootstrap, topic, partitions)
        out_topic = f"{topic}.predictions"
        cfg: dict[str, Any] = {
            "kafka": {"bootstrap_servers": bootstrap, "group_id": f"demo-{run_id}"},
            "topics": {"input": topic, "output": out_topic},
            "model": {"artifact": str(art), "backend": backend},
            "input": {"format": fmt},
            "batcher": {"max_batch": 256, "max_wait_ms": 10},
            "metrics": {"port": metrics_port, "host": "127.0.0.1"},
        }
        cfg_path = Path(tempfile.mkdtemp(prefix="stream-infer-demo-")) / "config.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        print(f"== service: stream-infer serve --config {cfg_path}")
        service = subprocess.Popen(
            [sys.executable, "-m", "stream_infer.cli", "serve", "--config", str(cfg_path)]
        )
        _wait_ready(metrics_port, service)
        expect = sum(_n_hops(len(s.values), card.window, card.hop) for s in streams)
        tally = Tally()
        reader = threading.Thread(
            target=_read, args=(bootstrap, out_topic, streams, card, tally, expect), daemon=True
        )
        reader.start()
        print(
            f"== replay: {len(streams)} entities, {sum(len(s.values) for s in streams)} events, "
            f"{'as fast as possible' if not rate else f'{rate:.0f} events/s'}"
        )
        replayer = Replayer(bootstrap, topic, fmt, samples_per_message, rate or None)
        t0 = time.monotonic()
        feeder = threading.Thread(target=replayer.run, args=(streams, False), daemon=True)
        feeder.start()
        last_n, last_t = 0, t0
        while reader.is_alive():
            reader.join(1.0)
            now = time.monotonic()
            print(_live(tally, expect, last_n, now - last_t, metrics_port), flush=True)
            last_n, last_t = tally.n, now
            if now - t0 > 600:
                break
        feeder.join()
        replayer.close()
        elapsed = time.monotonic() - t0
        _final(tally, expect, elapsed, card.model_id, kind)
        return 0 if tally.n >= expect else 1
    finally:
        if service is not None and service.poll() is None:
            service.send_signal(signal.SIGTERM)
            try:
                service.wait(60)
            except subprocess.TimeoutExpired:
                service.kill()
        if started_broker and script is not None:
            subprocess.run([str(script), "stop"], check=False)


def _streams(kind: str, entities: int, card: Any) -> tuple[list[Stream], Format]:
    from stream_infer.model import datasets

    if kind == "sensor":
        test = datasets.basic_motions().subset("test")
        return sensor_streams(test.values, test.labels, entities), "json"
    clips = [datasets.video_frames(name, size=(64, 64), n=120) for name in datasets.video_clips()]
    return frame_streams(clips, entities), "image"


def _n_hops(t: int, w: int, k: int) -> int:
    return (t - w) // k + 1 if t >= w else 0


def _kafka(bootstrap: str, topic: str) -> Any:
    from stream_infer.config import load_settings

    return load_settings(
        kafka={"bootstrap_servers": bootstrap, "client_id": "stream-infer-demo"}, topics={"input": topic}
    )


def _create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    from stream_infer.kafka import connect_admin

    admin = connect_admin(_kafka(bootstrap, topic))
    try:
        admin.create_topic(topic, partitions)
    finally:
        admin.close()


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the service exited with code {proc.returncode}")
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("the service did not become ready in time")


def _read(bootstrap: str, topic: str, streams: list[Stream], card: Any, tally: Tally, expect: int) -> None:
    label_of = {s.entity: s.label for s in streams}
    last_hop_seq = {
        s.entity: card.window - 1 + (_n_hops(len(s.values), card.window, card.hop) - 1) * card.hop
        for s in streams
    }
    from stream_infer.kafka import await_partitions, make_reader
    from stream_infer.kafka.types import TopicPartition

    settings = _kafka(bootstrap, topic)
    c = make_reader(settings, "demo-reader")
    c.assign_from_beginning([TopicPartition(topic, p) for p in sorted(await_partitions(settings, topic))])
    deadline = time.monotonic() + 900
    while tally.n < expect and time.monotonic() < deadline:
        for recs in c.poll(timeout_ms=200).values():
            for r in recs:
                if r.value is None:
                    continue
                p = orjson.loads(r.value)
                key = (p["entity"], p["seq"])
                if key in tally.seen:
                    tally.duplicates += 1
                    continue
                tally.seen.add(key)
                tally.n += 1
                tally.latency_ms.append(p["emit_time_ms"] - p["event_time_ms"])
                tally.labels[p["label"]] = tally.labels.get(p["label"], 0) + 1
                truth = label_of.get(p["entity"])
                if truth is not None:
                    tally.hop_total += 1
                    tally.hop_correct += p["label"] == truth
                    if p["seq"] == last_hop_seq[p["entity"]]:
                        tally.end_total += 1
                        tally.end_correct += p["label"] == truth
    c.close()


def _live(t: Tally, expect: int, last_n: int, dt: float, port: int) -> str:
    lat = np.asarray(t.latency_ms[-5000:]) if t.latency_ms else np.zeros(1)
    acc = f"{t.end_correct / t.end_total:.3f}" if t.end_total else "-"
    events = _scrape(port, "stream_infer_events_total")
    return (
        f"   predictions {t.n:>7}/{expect}  {(t.n - last_n) / max(dt, 1e-9):8.0f}/s  events in {events:>8.0f}  "
        f"accuracy@end {acc}  latency p50 {np.percentile(lat, 50):6.1f} ms  p99 {np.percentile(lat, 99):6.1f} ms"
    )


def _scrape(port: int, name: str) -> float:
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read().decode()
    except OSError:
        return float("nan")
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return float("nan")


def _final(t: Tally, expect: int, elapsed: float, model_id: str, kind: str) -> None:
    lat = np.asarray(t.latency_ms) if t.latency_ms else np.zeros(1)
    rows = [
        ("model", model_id),
        ("predictions (unique)", f"{t.n} of {expect} expected"),
        ("duplicates", str(t.duplicates)),
        ("throughput", f"{t.n / elapsed:.0f} predictions/s over {elapsed:.1f} s"),
        ("event -> publish p50 / p99", f"{np.percentile(lat, 50):.1f} / {np.percentile(lat, 99):.1f} ms"),
    ]
    if t.end_total:
        rows.append(
            ("accuracy at recording end", f"{t.end_correct / t.end_total:.3f} ({t.end_total} recordings)")
        )
        rows.append(("accuracy per hop", f"{t.hop_correct / t.hop_total:.3f} ({t.hop_total} hops)"))
    if kind == "frame":
        rows.append(("labels", ", ".join(f"{k}: {v}" for k, v in sorted(t.labels.items()))))
    width = max(len(r[0]) for r in rows)
    print("\n== result")
    for k, v in rows:
        print(f"   {k.ljust(width)}  {v}")
