"""Memory of the per-entity structures as distinct entities pass through: flat beyond the slot cap.

Drives the service's real ingest path without a broker - ``Decoder`` (f32 records) ->
``EntityStore`` (LRU eviction at the cap, idle-TTL eviction on a simulated clock, windows, the
``NumpyStateSlab`` whose completed windows' rows are written, as the engine thread would) - and reads the process RSS when 10k, 100k and 1M distinct entities have
been seen. Each scenario runs in a fresh process, so one's memory never hides in another's.

    python -m benchmarks.memory           # prints a table, writes docs/benchmarks/memory.json

Shapes are the BasicMotions model's (W=20, hop 10, 6 channels, 1x64 LSTM state).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any, cast

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "benchmarks" / "memory.json"

W, HOP, F, LAYERS, HIDDEN = 20, 10, 6, 1, 64
CAP = 100_000
CHECKPOINTS = (10_000, 100_000, 1_000_000)
CHUNK = 10_000  # entities per poll; the simulated clock advances 1 s per poll
SCENARIOS = {
    # name: (slot cap, idle TTL in simulated seconds)
    "cap-lru": (CAP, 1e9),
    "idle-ttl": (CAP, 5.0),
}


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_scenario(name: str, cap: int, ttl_s: float, q: Any) -> None:
    from stream_infer.kafka.types import ConsumedRecord as Rec
    from stream_infer.pipeline.decode import Decoder
    from stream_infer.state.slab import NumpyStateSlab
    from stream_infer.state.store import EntityStore, ModelShape

    Decoder("f32", (F,)).decode([])  # load what decoding imports lazily before the baseline

    base = rss_mb()  # the interpreter and the imports
    decoder = Decoder("f32", (F,), 4_194_304, 10_000)
    model = ModelShape("bench@1", W, HOP, (F,), (LAYERS, HIDDEN))
    store = EntityStore(cap, model, NumpyStateSlab(cap, LAYERS, HIDDEN), max_seq_gap=100)
    allocated = rss_mb()
    rng = np.random.default_rng(0)
    payload = rng.normal(size=(W, F)).astype("<f4").tobytes()  # W samples: one window each
    headers = [("seq", b"0"), ("ts", b"1700000000000")]
    rows: list[dict[str, Any]] = []
    seen = 0
    now = 0.0
    t0 = time.perf_counter()
    evicted = 0
    while seen < CHECKPOINTS[-1]:
        recs = [
            Rec("in", i % 8, seen + i, 0, f"entity-{seen + i:08d}".encode(), payload, headers)
            for i in range(CHUNK)
        ]
        now += 1.0
        # The checkpoint's idle eviction, then the service's ingest (Service._window)
        evicted += store.evict_idle(now, ttl_s)
        batch = decoder.decode(cast("list[Rec]", recs)).samples
        need = store.shortfall(batch.entities)
        if need:
            evicted += store.evict_lru(need + max(1, cap // 10), protect=set(batch.entities))
        wb, _ = store.push(batch, now)
        # the engine thread's scatter of the new state for every completed window
        h = np.full((LAYERS, len(wb), HIDDEN), 0.5, np.float32)
        store.slab.scatter(wb.slots, h, h)
        store.snapshot_dirty()  # the checkpoint writes the changelog and clears the marks
        seen += CHUNK
        if seen in CHECKPOINTS:
            rows.append(
                {
                    "entities_seen": seen,
                    "active_entities": len(store),
                    "evicted": evicted,
                    "rss_mb": round(rss_mb(), 1),
                    "structures_mb": round(rss_mb() - base, 1),
                    "seconds": round(time.perf_counter() - t0, 1),
                }
            )
    q.put(
        {
            "scenario": name,
            "slot_cap": cap,
            "idle_ttl_s": ttl_s if ttl_s < 1e8 else None,
            "rss_start_mb": round(base, 1),
            "rss_after_allocation_mb": round(allocated, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "checkpoints": rows,
        }
    )


def main() -> None:
    sys.path.insert(0, str(ROOT))
    ctx = mp.get_context("spawn")
    results = []
    for name, (cap, ttl) in SCENARIOS.items():
        q = ctx.Queue()
        p = ctx.Process(target=run_scenario, args=(name, cap, ttl, q))
        p.start()
        results.append(q.get(timeout=600))
        p.join()
    print(f"{'scenario':<10} {'seen':>9} {'active':>8} {'evicted':>9} {'RSS MB':>8} {'+MB':>7} {'s':>6}")
    for r in results:
        for row in r["checkpoints"]:
            print(
                f"{r['scenario']:<10} {row['entities_seen']:>9,} {row['active_entities']:>8,} "
                f"{row['evicted']:>9,} {row['rss_mb']:>8.1f} {row['structures_mb']:>7.1f} {row['seconds']:>6.1f}"
            )
        print(f"{'':<10} peak RSS {r['peak_rss_mb']:.1f} MB (slot cap {r['slot_cap']:,})")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(
        json.dumps(
            {
                "benchmark": "memory",
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                "python": platform.python_version(),
                "numpy": np.__version__,
                "shapes": {"window": W, "hop": HOP, "channels": F, "layers": LAYERS, "hidden": HIDDEN},
                "entities_per_poll": CHUNK,
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
