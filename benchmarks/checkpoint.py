"""What a checkpoint costs as the number of entities touched since the last one grows (1k, 10k,
100k), split the way the commit path splits it:

* on the source thread (polling waits): the changelog snapshot of the touched entities (their
  windows' tails and state rows, serialised) and the offsets;
* on the commit path's thread (polling goes on): the changelog records sent and acknowledged
  (acks=all), per Kafka client, against the real broker.

    python -m benchmarks.checkpoint [--quick]
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from benchmarks.common import (
    ARTIFACTS,
    OUT_DIR,
    Report,
    Stat,
    bench_main,
    ensure_broker,
    figure,
    new_topic_name,
    save,
    topics,
)

if TYPE_CHECKING:
    from stream_infer.model.card import ModelCard
    from stream_infer.state.store import EntityStore

CLIENTS = ("kafka-python", "confluent-kafka")


def _store(n: int, card: ModelCard) -> EntityStore:
    """``n`` entities, each with one full window pushed (so each is touched and has state)."""
    from stream_infer.records import SampleBatch
    from stream_infer.state.slab import make_state_slab
    from stream_infer.state.store import EntityStore, ModelShape

    c = card
    shape = ModelShape(
        c.model_id, c.window, c.hop, tuple(c.sample_shape), tuple(c.state_shape), False, c.states
    )
    store = EntityStore(n, shape, make_state_slab("cpu", n, c.states), 1000)
    rng = np.random.default_rng(0)
    w = c.window
    entities = [f"sensor-{i:06d}" for i in range(n) for _ in range(w)]
    batch = SampleBatch(
        entities,
        np.tile(np.arange(w, dtype=np.int64), n),
        np.full(n * w, 1_700_000_000_000, dtype=np.int64),
        rng.normal(size=(n * w, *c.sample_shape)).astype(np.float32),
        (np.arange(n * w, dtype=np.int32) // w) % 4,
    )
    store.push(batch, time.monotonic())
    return store


def run(quick: bool = False, repeats: int | None = None, out_dir: Path = OUT_DIR) -> Report:
    from stream_infer.config import load_settings
    from stream_infer.kafka import make_producer
    from stream_infer.model.card import load_card
    from stream_infer.model.zoo import ensure_model
    from stream_infer.pipeline.sink import Sink

    servers = ensure_broker()
    card = load_card(ensure_model("sensor", ARTIFACTS))
    repeats = repeats or (2 if quick else 5)
    sizes = (1_000, 10_000) if quick else (1_000, 10_000, 100_000)
    report = Report(
        "checkpoint",
        {"model": card.model_id, "sizes": list(sizes), "repeats": repeats, "clients": list(CLIENTS)},
        columns=["entities", "part", "client", "ms", "records/s", "bytes/record", "spread"],
    )
    points: dict[str, list[tuple[int, float]]] = {}
    topic = new_topic_name("cl")
    with topics(servers, [topic], 4):
        for n in sizes:
            store = _store(n, card)
            snaps = []
            records: list[tuple[bytes, bytes | None, int]] = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                records = store.snapshot_dirty(everything=True)
                snaps.append(time.perf_counter() - t0)
            size = float(np.mean([len(v or b"") + len(k) for k, v, _ in records]))
            st = Stat(snaps)
            report.rows.append(
                {
                    "entities": n,
                    "part": "snapshot (source thread)",
                    "client": "-",
                    "ms": st.median * 1000,
                    "records/s": n / st.median,
                    "bytes/record": size,
                    "spread": f"{min(snaps) * 1000:.1f}..{max(snaps) * 1000:.1f}",
                }
            )
            points.setdefault("snapshot (source thread)", []).append((n, st.median * 1000))
            for client in CLIENTS:
                s = load_settings(None, kafka={"bootstrap_servers": servers, "client": client})
                producer = make_producer(s, role=f"bench-{client}")
                sink = Sink(producer, "out", "dlq", topic, card.model_id, list(card.labels))
                sink.changelog(records[:100])
                sink.flush()  # connections and metadata first
                sends = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    sink.changelog(records)
                    sink.flush()
                    sends.append(time.perf_counter() - t0)
                sink.close()
                st = Stat(sends)
                report.rows.append(
                    {
                        "entities": n,
                        "part": "changelog sent + acknowledged (commit-path thread)",
                        "client": client,
                        "ms": st.median * 1000,
                        "records/s": n / st.median,
                        "bytes/record": size,
                        "spread": f"{min(sends) * 1000:.1f}..{max(sends) * 1000:.1f}",
                    }
                )
                points.setdefault(f"changelog, {client}", []).append((n, st.median * 1000))
    big = max(sizes)
    by = {(r["part"][:9], r["client"]): r["ms"] for r in report.rows if r["entities"] == big}
    if ("changelog", "kafka-python") in by and ("changelog", "confluent-kafka") in by:
        report.ratios[f"changelog send kafka-python / confluent-kafka ({big:,} entities)"] = (
            by[("changelog", "kafka-python")] / by[("changelog", "confluent-kafka")]
        )
    report.notes.append(
        "only the snapshot runs on the source thread; the sends and acknowledgements run on the "
        "commit path's thread while polling goes on (at-least-once; under exactly-once the "
        "predictions wait at the sink meanwhile)"
    )
    fig, ax, path = figure(report, "checkpoint", out_dir)
    for label, pts in points.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("entities touched since the last checkpoint")
    ax.set_ylabel("ms (median)")
    ax.set_title("Checkpoint cost vs touched entities")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    save(report, fig, path)
    return report


def main(argv: list[str] | None = None) -> int:
    return bench_main(__doc__, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
