"""Memory, disk and speed of the entity store as fleets larger than memory pass through.

Drives the service's real ingest path without a broker - ``Decoder`` (f32 records) ->
``EntityStore.admit`` (paging to the RocksDB disk tier at the slot cap) -> ``push`` (windows) ->
the slab rows of completed windows written (as the engine thread would) -> ``snapshot_dirty``
after every poll (the checkpoint's changelog records) - for fleets of N entities that each send
one message of one hop (10 samples) per round, in two rounds: the first brings every entity in,
the second brings every one back (with a 100k cap and N > 100k, each is then paged in, and
another paged out, to take its window). Each scenario runs in a fresh process, so one's memory
never hides in another's.

    python -m benchmarks.memory            # 100k in memory, 1M through a 100k cap, idle TTL
    python -m benchmarks.memory --big      # also 10M through a 100k cap (~15 GB of disk)

Prints a table and writes docs/benchmarks/memory.json. Shapes are the BasicMotions model's
(W=20, hop 10, 6 channels, 1x64 LSTM state).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "benchmarks" / "memory.json"

W, HOP, F, LAYERS, HIDDEN = 20, 10, 6, 1, 64
CAP = 100_000
CHUNK = 10_000  # messages (entities) per poll; the simulated clock advances 1 s per poll
SCENARIOS = {
    # name: (entities, slot cap, idle TTL in simulated seconds, rounds)
    "memory-100k": (100_000, CAP, 1e9, 2),
    "tiers-1M": (1_000_000, CAP, 1e9, 2),
    "idle-ttl-1M": (1_000_000, CAP, 5.0, 1),
}
BIG = {"tiers-10M": (10_000_000, CAP, 1e9, 2)}


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_scenario(name: str, n: int, cap: int, ttl_s: float, rounds: int, q: Any) -> None:
    from stream_infer.kafka.types import ConsumedRecord as Rec
    from stream_infer.pipeline.decode import Decoder, Record
    from stream_infer.state.disk import DiskTier
    from stream_infer.state.slab import NumpyStateSlab
    from stream_infer.state.store import EntityStore, ModelShape

    Decoder("f32", (F,)).decode([])  # load what decoding imports lazily before the baseline

    base = rss_mb()  # the interpreter and the imports
    decoder = Decoder("f32", (F,), 4_194_304, 10_000)
    model = ModelShape("bench@1", W, HOP, (F,), (LAYERS, HIDDEN))
    slab = NumpyStateSlab(cap, LAYERS, HIDDEN)  # the inference thread's, in the service
    path = Path(tempfile.mkdtemp(prefix="bench-tier-"))
    disk = DiskTier(path, 64 * 1024**3)
    store = EntityStore(cap, model, slab, max_seq_gap=100, disk=disk)
    allocated = rss_mb()
    rng = np.random.default_rng(0)
    # Distinct, incompressible values (as sensor noise and trained states are): a pool larger
    # than the entities of one RocksDB block, and random state rows.
    pool = 4096
    payloads = [rng.normal(size=(HOP, F)).astype("<f4").tobytes() for _ in range(pool)]
    rows: list[dict[str, Any]] = []
    now = 0.0
    offset = 0
    paged_out = paged_in = refused = expired = 0
    for rnd in range(rounds):
        headers = [("seq", str(rnd * HOP).encode()), ("ts", b"1700000000000")]
        poll_s: list[float] = []
        t0 = time.perf_counter()
        for lo in range(0, n, CHUNK):
            recs = [
                Rec(
                    "in",
                    i % 8,
                    offset + i,
                    0,
                    f"entity-{lo + i:08d}".encode(),
                    payloads[(lo + i) % pool],
                    headers,
                )
                for i in range(min(CHUNK, n - lo))
            ]
            offset += len(recs)
            now += 1.0
            t = time.perf_counter()
            # The checkpoint's idle expiry, then ingest's admission and windows (pipeline/ingest.py)
            expired += store.expire_idle(now, ttl_s)
            batch = decoder.decode(cast("list[Record]", recs)).samples
            adm = store.admit(batch.entities, batch.partition, now)
            paged_out += adm.paged_out
            paged_in += adm.paged_in
            refused += len(adm.refused)
            wb, _ = store.push(batch, now)
            # the engine thread's scatter of the new state for every completed window
            h = rng.normal(size=(LAYERS, len(wb), HIDDEN)).astype(np.float32)
            slab.scatter(wb.slots, h, -h)
            store.snapshot_dirty()  # the checkpoint writes the changelog and clears the marks
            poll_s.append(time.perf_counter() - t)
        secs = time.perf_counter() - t0
        rows.append(
            {
                "round": rnd + 1,
                "entities": n,
                "in_memory": len(store),
                "on_disk": store.on_disk,
                "paged_out": paged_out,
                "paged_in": paged_in,
                "refused": refused,
                "expired": expired,
                "events_per_s": round(n * HOP / secs),
                "poll_p50_ms": round(float(np.percentile(poll_s, 50)) * 1000, 1),
                "poll_p99_ms": round(float(np.percentile(poll_s, 99)) * 1000, 1),
                "us_per_entity": round(secs / n * 1e6, 1),
                "rss_mb": round(rss_mb(), 1),
                "structures_mb": round(rss_mb() - base, 1),
                "disk_mb": round(store.disk_bytes / 2**20, 1),
                "seconds": round(secs, 1),
            }
        )
    store.close()
    shutil.rmtree(path, ignore_errors=True)
    q.put(
        {
            "scenario": name,
            "entities": n,
            "slot_cap": cap,
            "idle_ttl_s": ttl_s if ttl_s < 1e8 else None,
            "rss_start_mb": round(base, 1),
            "rss_after_allocation_mb": round(allocated, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "rounds": rows,
        }
    )


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    sys.path.insert(0, str(ROOT))
    ctx = mp.get_context("spawn")
    results = []
    scenarios = {**SCENARIOS, **(BIG if "--big" in args else {})}
    only = [a for a in args if not a.startswith("--")]
    for name, spec in scenarios.items():
        if only and name not in only:
            continue
        q = ctx.Queue()
        p = ctx.Process(target=run_scenario, args=(name, *spec, q))
        p.start()
        results.append(q.get(timeout=6 * 3600))
        p.join()
    cols = "scenario       round  entities   memory    disk  paged_out   paged_in  events/s  p50 ms  p99 ms  us/entity  RSS MB  disk MB"
    print(cols)
    for r in results:
        for row in r["rounds"]:
            print(
                f"{r['scenario']:<14} {row['round']:>5} {row['entities']:>9,} {row['in_memory']:>8,} "
                f"{row['on_disk']:>7,} {row['paged_out']:>10,} {row['paged_in']:>10,} {row['events_per_s']:>9,} "
                f"{row['poll_p50_ms']:>7} {row['poll_p99_ms']:>7} {row['us_per_entity']:>10} "
                f"{row['rss_mb']:>7} {row['disk_mb']:>8}"
            )
        print(f"{'':<14} peak RSS {r['peak_rss_mb']:.1f} MB (slot cap {r['slot_cap']:,})")
    old = json.loads(OUT.read_text())["results"] if OUT.exists() else []
    merged = {r["scenario"]: r for r in old if "rounds" in r} | {r["scenario"]: r for r in results}
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
                "results": list(merged.values()),
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
