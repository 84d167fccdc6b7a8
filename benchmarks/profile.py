"""Where the service's time goes at its max rate: every thread sampled from outside.

    python -m benchmarks.profile [--client confluent-kafka|kafka-python] [--quick]

The e2e case of 1k entities at 1 JSON sample per message is drained from a pre-loaded topic by
the in-process service while a sampler thread reads every thread's stack (``sys._current_frames``)
every 2 ms. Each sample is charged to the innermost frame of the service, its client or its engine
(``stream_infer``, ``kafka``, ``confluent_kafka``, ``onnxruntime``, ``orjson``, ``numpy``), per
thread; a thread blocked in C (a lock, ``poll``, the engine) shows as the Python frame that called
it. The table is each thread's share of samples per place, and the JSON holds them all.
"""

from __future__ import annotations

import argparse
import collections
import sys
import threading
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks.common import ARTIFACTS, OUT_DIR, Report, ensure_broker, new_topic_name, topics


def _place(frame: Any) -> str:
    """``module.function`` of the innermost frame that belongs to the service or its libraries."""
    f = frame
    while f is not None:
        mod = f.f_globals.get("__name__", "")
        if mod.startswith(("stream_infer", "kafka", "confluent_kafka", "onnxruntime")):
            return f"{mod}.{f.f_code.co_name}"
        f = f.f_back
    return f"{frame.f_globals.get('__name__', '?')}.{frame.f_code.co_name}"


class Sampler(threading.Thread):
    def __init__(self, every_s: float = 0.002) -> None:
        super().__init__(daemon=True, name="sampler")
        self.every_s = every_s
        self.counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self._halt = threading.Event()

    def run(self) -> None:
        me = threading.get_ident()
        while not self._halt.wait(self.every_s):
            names = {t.ident: t.name for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                self.counts[names.get(ident, str(ident))][_place(frame)] += 1

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


def run(quick: bool = False, client: str = "confluent-kafka", out_dir: Path = OUT_DIR) -> Report:
    from stream_infer.model.card import load_card
    from stream_infer.model.zoo import ensure_model

    servers = ensure_broker()
    art = ensure_model("sensor", ARTIFACTS)
    card = load_card(art)
    case = harness.Case(1000, 1, 100 if quick else 300)
    report = Report(
        f"profile-{client}",
        {"case": case.label, "client": client, "sample_every_ms": 2},
        columns=["thread", "place", "share"],
    )
    topic = new_topic_name("prof")
    with topics(servers, [topic], harness.PARTITIONS):
        harness.load_case(servers, topic, case)
        s = harness.service_settings(
            servers, topic, art, kafka={"client": client}, batcher={"max_batch": 256, "max_wait_ms": 20}
        )
        sampler = Sampler()
        sampler.start()
        d, extra = harness.drain_backlog(servers, s, case, case.predictions(card.window, card.hop))
        sampler.stop()
    from benchmarks.common import delete_topics

    delete_topics(servers, extra)
    report.notes.append(f"{d.events_per_s:,.0f} events/s while sampled")
    for thread, counter in sorted(sampler.counts.items()):
        total = sum(counter.values())
        if not thread.startswith(("bench-service", "inference", "commit-path")) or not total:
            continue
        for place, n in counter.most_common(8):
            report.rows.append({"thread": thread, "place": place, "share": n / total})
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--client", default="confluent-kafka", choices=("confluent-kafka", "kafka-python"))
    p.add_argument("--out", type=Path, default=OUT_DIR)
    a = p.parse_args(argv)
    report = run(a.quick, a.client, a.out)
    print(report.summary())
    print(f"wrote {report.write(a.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
