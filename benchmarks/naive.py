"""The naive baseline a first implementation would be, against the service on the same data.

    python -m benchmarks.naive [--quick]

Naive: iterate the consumer one message at a time; parse it; keep the entity's last W samples in
a deque; on every completed hop run the torch model on that one window with the entity's carried
(h, c); produce one JSON prediction per window. Same broker, same pre-loaded topic (1k entities,
one JSON sample per message), same model. It is timed over a fixed number of messages, from the
first one consumed until its predictions are flushed; the service's rate is measured the same way
in the same run, and the ratio is the headline figure.
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import Any

import orjson

from benchmarks import harness
from benchmarks.common import (
    ARTIFACTS,
    OUT_DIR,
    Report,
    Stat,
    bench_main,
    delete_topics,
    ensure_broker,
    figure,
    new_topic_name,
    save,
    topics,
)


def naive(servers: str, topic: str, art: Path, n_messages: int, sync: bool = False) -> float:
    """Events/s of the one-message-at-a-time loop over the first ``n_messages`` of ``topic``;
    ``sync`` waits for each prediction's acknowledgement (a common first version)."""
    import torch
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    from stream_infer.model.export import load_model

    card, model = load_model(art)
    w, k = card.window, card.hop
    out_topic = f"{topic}.naive"
    consumer = KafkaConsumer(bootstrap_servers=servers.split(","), group_id=None, client_id="naive-in")
    producer = KafkaProducer(bootstrap_servers=servers.split(","), client_id="naive-out", acks="all")
    tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    windows: dict[str, deque[list[float]]] = {}
    counts: dict[str, int] = {}
    state: dict[str, tuple[Any, Any]] = {}
    n = 0
    t0 = None
    torch.set_num_threads(1)
    with torch.inference_mode():
        for msg in consumer:
            t0 = t0 or time.monotonic()
            ent = msg.key.decode()
            doc = orjson.loads(msg.value)
            win = windows.setdefault(ent, deque(maxlen=w))
            win.append(doc["values"])
            counts[ent] = c = counts.get(ent, 0) + 1
            if c >= w and (c - w) % k == 0:
                h, cc = state.get(ent) or model.zero_state(1)
                y, h, cc = model(torch.tensor([list(win)], dtype=torch.float32), h, cc)
                state[ent] = (h, cc)
                scores = torch.softmax(y[0], dim=0).tolist()
                pred = {
                    "v": 2,
                    "entity": ent,
                    "seq": doc["seq"],
                    "event_time_ms": doc["ts"],
                    "emit_time_ms": time.time_ns() // 1_000_000,
                    "head": "classification",
                    "label": card.labels[max(range(len(scores)), key=scores.__getitem__)],
                    "scores": scores,
                    "model": card.model_id,
                }
                fut = producer.send(out_topic, key=msg.key, value=orjson.dumps(pred))
                if sync:
                    fut.get(timeout=30)
            n += 1
            if n >= n_messages:
                break
    producer.flush()
    elapsed = time.monotonic() - (t0 or time.monotonic())
    producer.close()
    consumer.close()
    delete_topics(servers, [out_topic])
    return n / elapsed


def run(
    quick: bool = False, repeats: int | None = None, out_dir: Path = OUT_DIR, plots: bool = True
) -> Report:
    from stream_infer.model.card import load_card
    from stream_infer.model.zoo import ensure_model

    servers = ensure_broker()
    art = ensure_model("sensor", ARTIFACTS)
    card = load_card(art)
    repeats = repeats or (1 if quick else 3)
    case = harness.Case(1000, 1, 60 if quick else 120)
    # Entities are interleaved: no window completes before 20 messages per entity (20k), so
    # the timed span covers the whole topic (async produce) or 40k messages (synchronous).
    naive_msgs = case.messages
    sync_msgs = 30_000 if quick else 40_000
    report = Report(
        "naive",
        {
            "case": case.label,
            "events": case.events,
            "naive_messages_timed": naive_msgs,
            "naive_sync_messages_timed": sync_msgs,
            "repeats": repeats,
            "service_backend": "onnxruntime",
            "naive_backend": "torch (1 thread, batch 1)",
            "quick": quick,
        },
        columns=["pipeline", "events/s", "spread"],
    )
    topic = new_topic_name("naive")
    extra: list[str] = []
    naive_rates, sync_rates, service_rates = [], [], []
    with topics(servers, [topic], harness.PARTITIONS):
        harness.load_case(servers, topic, case)
        for _ in range(repeats):
            naive_rates.append(naive(servers, topic, art, naive_msgs))
            sync_rates.append(naive(servers, topic, art, sync_msgs, sync=True))
            s = harness.service_settings(servers, topic, art)
            d, more = harness.drain_backlog(servers, s, case, case.predictions(card.window, card.hop))
            service_rates.append(d.events_per_s)
            extra += more
    delete_topics(servers, extra)
    nv, sy, sv = Stat(naive_rates), Stat(sync_rates), Stat(service_rates)
    for name, st in (
        ("naive + synchronous produce", sy),
        ("naive: one message at a time, torch batch 1", nv),
        ("stream-infer service", sv),
    ):
        report.rows.append(
            {
                "pipeline": name,
                "events/s": st.median,
                "spread": f"{min(st.values):,.0f}..{max(st.values):,.0f}",
            }
        )
    ratio = sv.median / nv.median
    report.ratios["service / naive"] = ratio
    report.ratios["service / naive with synchronous produce"] = sv.median / sy.median
    report.target("service >= 20x the naive baseline", ratio, 20.0)
    if plots:
        fig, ax, path = figure(report, "ratio", out_dir)
        ax.barh(
            [r["pipeline"] for r in report.rows],
            [r["events/s"] for r in report.rows],
            color=["lightgrey", "grey", "tab:blue"],
        )
        ax.set_xlabel("events / s (median)")
        ax.set_title(f"Service vs naive baseline ({ratio:.1f}x), {case.label}")
        save(report, fig, path)
    return report


def main(argv: list[str] | None = None) -> int:
    return bench_main(__doc__, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
