"""Before/after of the hot-path changes, in one run: the service's max rate on one pre-loaded
topic with each change switched off again in turn (monkeypatched back to the earlier code).

    python -m benchmarks.hotpath [--quick]

Variants, cumulative in this order:
  before               pure-Python CRC32C in kafka-python, per-message JSON decoding, a murmur2
                       hash per prediction in publish (the code as it was)
  + crc32c             kafka-python's C CRC32C (the ``crc32c`` package installed)
  + whole-poll decode  ``Decoder._decode_fast`` (the ``json`` format's ``parse_poll``)
  + partition cache    ``Sink`` computes each entity's partition once (= the current code)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

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

VARIANTS = ("before", "+ crc32c", "+ whole-poll decode", "+ partition cache")


@contextlib.contextmanager
def variant(level: int) -> Iterator[None]:
    """Switch off the changes after the first ``level`` (0 = before: all off)."""
    from kafka.record import default_records
    from kafka.record._crc32c import crc as crc32c_py

    from stream_infer.kafka.kafka_python import KafkaPythonProducer as Producer
    from stream_infer.pipeline.decode import Decoder

    saved = (default_records.calc_crc32c, Decoder.decode, Producer.key_partitions)
    try:
        if level < 1:
            default_records.calc_crc32c = lambda data: crc32c_py(data)
        if level < 2:
            Decoder.decode = Decoder._decode_each  # type: ignore[method-assign]
        if level < 3:
            Producer.key_partitions = lambda self, topic, keys: [None] * len(keys)  # type: ignore[method-assign]
        yield
    finally:
        default_records.calc_crc32c, Decoder.decode, Producer.key_partitions = saved  # type: ignore[method-assign]


def run(
    quick: bool = False, repeats: int | None = None, out_dir: Path = OUT_DIR, plots: bool = True
) -> Report:
    from stream_infer.model.card import load_card
    from stream_infer.model.zoo import ensure_model

    servers = ensure_broker()
    art = ensure_model("sensor", ARTIFACTS)
    card = load_card(art)
    repeats = repeats or (1 if quick else 2)
    case = harness.Case(1000, 1, 60 if quick else 150)
    report = Report(
        "hotpath",
        {
            "case": case.label,
            "events": case.events,
            "repeats": repeats,
            "variants": list(VARIANTS),
            "quick": quick,
        },
        columns=["variant", "events/s", "x before", "spread"],
    )
    topic = new_topic_name("hot")
    extra: list[str] = []
    rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with topics(servers, [topic], harness.PARTITIONS):
        harness.load_case(servers, topic, case)
        for _ in range(repeats):
            for level, name in enumerate(VARIANTS):  # interleaved: each repeat runs every variant
                with variant(level):
                    s = harness.service_settings(servers, topic, art)
                    d, more = harness.drain_backlog(servers, s, case, case.predictions(card.window, card.hop))
                rates[name].append(d.events_per_s)
                extra += more
    delete_topics(servers, extra)
    base = Stat(rates["before"]).median
    for name, vals in rates.items():
        st = Stat(vals)
        report.rows.append(
            {
                "variant": name,
                "events/s": st.median,
                "x before": st.median / base,
                "spread": f"{min(vals):,.0f}..{max(vals):,.0f}",
            }
        )
    report.ratios["after / before"] = Stat(rates[VARIANTS[-1]]).median / base
    if plots:
        fig, ax, path = figure(report, "before-after", out_dir)
        ax.barh(list(rates), [r["events/s"] for r in report.rows], color="tab:blue")
        ax.invert_yaxis()
        ax.set_xlabel("events / s (median), service end to end")
        ax.set_title(f"Hot path changes, cumulative ({case.label})")
        save(report, fig, path)
    return report


def main(argv: list[str] | None = None) -> int:
    return bench_main(__doc__, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
