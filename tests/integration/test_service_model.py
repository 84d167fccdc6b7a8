"""The running service with the real trained models, against the real broker."""

from __future__ import annotations

import urllib.request
from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import pytest

from stream_infer.backends import load_engine
from stream_infer.model.card import load_card
from stream_infer.model.datasets import basic_motions, video_clips, video_frames
from stream_infer.pipeline.decode import Decoder
from stream_infer.replay import Replayer, encode_jpeg, frame_streams, sensor_streams
from tests.reference import hop_by_hop, published
from tests.streaming import RunningService, predictions, read_topic, settings_for

pytestmark = pytest.mark.integration


def _scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()


def _sample(body: str, name: str) -> float:
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in the scrape")


def test_basicmotions_replayed_as_48_entities_matches_reference_and_is_accurate(
    kafka_bootstrap, new_topic, sensor_model
):
    card = load_card(sensor_model)
    test = basic_motions().subset("test")
    streams = sensor_streams(test.values, test.labels, 48)
    topic = new_topic("bm", partitions=4)
    s = settings_for(kafka_bootstrap, topic, str(sensor_model), batcher={"max_batch": 64, "max_wait_ms": 10})
    n_hops = (100 - card.window) // card.hop + 1
    expect = len(streams) * n_hops
    with RunningService(s) as rs:
        rs.wait_ready()
        rp = Replayer(kafka_bootstrap, topic, "json", samples_per_message=2)
        rp.run(streams, progress=False)
        rp.close()
        recs = read_topic(kafka_bootstrap, s.topics.output, expect, timeout_s=120)
        body = _scrape(rs.service.metrics_port)
    preds = predictions(recs)
    keys = [(p["entity"], p["seq"]) for p in preds]
    assert len(keys) == len(set(keys)) == expect  # exactly one prediction per hop per entity
    engine = load_engine(sensor_model, "onnxruntime")
    by_entity = defaultdict(list)
    for p in preds:
        by_entity[p["entity"]].append(p)
    correct = 0
    for st in streams:
        ps = by_entity[st.entity]
        assert [p["seq"] for p in ps] == list(range(card.window - 1, 100, card.hop))
        ref = hop_by_hop(engine, card, st.values)
        np.testing.assert_allclose([p["scores"] for p in ps], published(ref), atol=1e-5)
        correct += ps[-1]["label"] == st.label
    assert correct / len(streams) >= 0.9
    assert _sample(body, "stream_infer_event_to_publish_seconds_count") == expect
    assert _sample(body, "stream_infer_predictions_total") == expect


def test_video_frames_per_camera_match_the_offline_reference(kafka_bootstrap, new_topic, frame_model):
    card = load_card(frame_model)
    clips = [video_frames(name, size=(64, 64), n=24) for name in video_clips()[:3]]
    streams = frame_streams(clips, 6)
    topic = new_topic("cam", partitions=2)
    s = settings_for(kafka_bootstrap, topic, str(frame_model), input={"format": "image"})
    expect = sum(len(st.values) for st in streams)
    with RunningService(s) as rs:
        rs.wait_ready()
        rp = Replayer(kafka_bootstrap, topic, "image")
        rp.run(streams, progress=False)
        rp.close()
        recs = read_topic(kafka_bootstrap, s.topics.output, expect, timeout_s=120)
    preds = predictions(recs)
    assert len(preds) == expect
    engine = load_engine(frame_model, "onnxruntime")
    decoder = Decoder("image", tuple(card.sample_shape))
    by_entity = defaultdict(list)
    for p in preds:
        by_entity[p["entity"]].append(p)
    for st in streams:
        # The offline path decodes the same JPEG bytes with the service's decoder.
        fake = [
            SimpleNamespace(
                topic=topic,
                partition=0,
                offset=i,
                timestamp=0,
                key=st.entity.encode(),
                value=encode_jpeg(f),
                headers=[("seq", str(i).encode()), ("ts", b"1")],
            )
            for i, f in enumerate(st.values)
        ]
        frames = decoder.decode(fake).samples.values
        ref = hop_by_hop(engine, card, frames)
        ps = by_entity[st.entity]
        assert [p["seq"] for p in ps] == list(range(len(st.values)))
        np.testing.assert_allclose([p["scores"] for p in ps], published(ref), atol=1e-5)
