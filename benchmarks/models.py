"""Several models on one stream: what a shadow or a canary costs, end to end, and whether two
models are better served by one inference thread or one each.

    python -m benchmarks.models [--quick] [--repeats N]

1. End to end (the real broker, the in-process ``Service``, ONNX Runtime, BasicMotions JSON):
   the same pre-loaded topic drained by one model, by a primary with a canary (30 % of the
   entities), and by a primary with a shadow; events/s until every expected prediction is on the
   broker (the shadow's topic included), the configurations interleaved per repeat.
2. The engines alone: the same batches through two models, one after the other on one thread
   (what one shared inference thread would do) against each on its own thread at once (what the
   service does), windows/s of both models together.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import harness
from benchmarks.common import (
    ARTIFACTS,
    OffsetWatch,
    Report,
    Stat,
    bench_main,
    delete_topics,
    ensure_broker,
    new_topic_name,
    topics,
)

CANARY_FRACTION = 0.3


def _models(artifact: Path, kind: str) -> dict[str, Any]:
    """The ``models:`` of one configuration (empty: the single model)."""
    primary = {"name": "main", "artifact": str(artifact), "role": "primary"}
    if kind == "one model":
        return {}
    if kind == "primary + canary":
        extra = {"name": "canary", "artifact": str(artifact), "role": "canary", "fraction": CANARY_FRACTION}
    else:
        extra = {"name": "shadow", "artifact": str(artifact), "role": "shadow"}
    return {"models": [primary, extra]}


def drain(servers: str, topic: str, artifact: Path, kind: str, case: harness.Case, expect: int) -> float:
    """Events/s of one configuration draining the pre-loaded ``topic``, until every expected
    prediction is on the output (and, with a shadow, on the shadow's topic too)."""
    settings = harness.service_settings(
        servers,
        topic,
        artifact,
        topics={"output": new_topic_name("models-out")},
        batcher={"max_batch": 256, "max_wait_ms": 20},
        **_models(artifact, kind),
    )
    outs = [settings.topics.output] + [
        settings.shadow_topic(m) for m in settings.served_models if m.role == "shadow"
    ]
    svc = harness.InProcessService(settings)
    watches = [OffsetWatch(servers, t) for t in outs]
    try:
        svc.start()
        t0 = None
        deadline = time.monotonic() + 600
        while True:
            now = time.monotonic()
            if t0 is None and svc.sample("stream_infer_events_total") > 0:
                t0 = now
            if t0 is not None and all(w.total() >= expect for w in watches):
                break
            if svc.error is not None:
                raise svc.error
            if now > deadline:
                raise TimeoutError(f"{kind}: not every prediction in 600 s")
            time.sleep(0.02)
        return case.events / (time.monotonic() - t0)
    finally:
        for w in watches:
            w.close()
        svc.stop()
        delete_topics(servers, [*outs, settings.dead_letter_topic, settings.changelog_topic])


def engines_alone(artifact: Path, batches: int, batch: int) -> dict[str, float]:
    """Windows/s of two models over the same batches: one thread in turn vs a thread each."""
    from stream_infer.backends import open_engine
    from stream_infer.model.card import load_card

    card = load_card(artifact)
    engines = [open_engine(artifact, "onnxruntime", "cpu", max_batch=batch) for _ in range(2)]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *card.input_shape)).astype(np.float32)
    h = np.zeros((card.lstm_layers, batch, card.hidden_size), np.float32)

    def steps(engine: Any) -> None:
        for _ in range(batches):
            engine.infer(x, h, h)

    for e in engines:
        steps(e)  # warm up
    t0 = time.perf_counter()
    for e in engines:
        steps(e)
    shared = 2 * batches * batch / (time.perf_counter() - t0)
    threads = [threading.Thread(target=steps, args=(e,)) for e in engines]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    own = 2 * batches * batch / (time.perf_counter() - t0)
    for e in engines:
        e.close()
    return {"one thread, in turn": shared, "a thread each": own}


def run(quick: bool = False, repeats: int | None = None, out_dir: Path | None = None) -> Report:
    from stream_infer.model.card import load_card
    from stream_infer.model.zoo import ensure_model

    servers = ensure_broker()
    art = ensure_model("sensor", ARTIFACTS)
    card = load_card(art)
    reps = repeats or (1 if quick else 3)
    case = harness.Case(1000, 10, 60 if quick else 300)
    expect = case.predictions(card.window, card.hop)
    kinds = ("one model", "primary + canary", "primary + shadow")
    report = Report(
        "models",
        {
            "model": card.model_id,
            "backend": "onnxruntime",
            "case": case.label,
            "samples_per_entity": case.samples_per_entity,
            "canary_fraction": CANARY_FRACTION,
            "repeats": reps,
            "quick": quick,
        },
        columns=["part", "configuration", "events/s or windows/s", "vs one model", "spread"],
    )
    got: dict[str, list[float]] = {k: [] for k in kinds}
    topic = new_topic_name("models")
    with topics(servers, [topic], harness.PARTITIONS):
        harness.load_case(servers, topic, case)
        for _ in range(reps):
            for k in kinds:  # interleaved: load from elsewhere falls on all alike
                got[k].append(drain(servers, topic, art, k, case, expect))
    base = Stat(got["one model"]).median
    for k in kinds:
        st = Stat(got[k])
        report.rows.append(
            {
                "part": "end to end",
                "configuration": k,
                "events/s or windows/s": round(st.median),
                "vs one model": round(st.median / base, 3),
                "spread": f"{min(st.values):.0f}-{max(st.values):.0f}",
            }
        )
    report.ratios["e2e canary / one model"] = Stat(got["primary + canary"]).median / base
    report.ratios["e2e shadow / one model"] = Stat(got["primary + shadow"]).median / base
    alone: dict[str, list[float]] = {"one thread, in turn": [], "a thread each": []}
    for _ in range(reps):
        for k, rate in engines_alone(art, 20 if quick else 100, 256).items():
            alone[k].append(rate)
    for k, rates in alone.items():
        st = Stat(rates)
        report.rows.append(
            {
                "part": "two engines alone",
                "configuration": k,
                "events/s or windows/s": round(st.median),
                "vs one model": None,
                "spread": f"{min(st.values):.0f}-{max(st.values):.0f}",
            }
        )
    report.ratios["engines: a thread each / one thread"] = (
        Stat(alone["a thread each"]).median / Stat(alone["one thread, in turn"]).median
    )
    report.notes.append(
        "a canary adds the primary's reference hops of its entities (the primary runs every "
        "entity); a shadow runs every entity again and publishes to its own topic"
    )
    return report


def main(argv: list[str] | None = None) -> int:
    return bench_main(__doc__, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
