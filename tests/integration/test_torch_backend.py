"""The service with ``backend: torch`` on the CPU, its state in the torch slab, end to end
through the real broker: predictions equal the offline replay, across a restart that restores
every entity's state from the changelog into a fresh torch slab."""

from __future__ import annotations

import numpy as np
import pytest

from stream_infer.backends import load_engine
from stream_infer.model.card import load_card
from stream_infer.model.datasets import basic_motions
from stream_infer.replay import Replayer, Stream, sensor_streams
from stream_infer.state.cuda_slab import TorchStateSlab
from tests.reference import hop_by_hop, published
from tests.streaming import RunningService, predictions, read_topic, settings_for

pytestmark = pytest.mark.integration

SPLIT = 50  # samples of each recording sent before the restart


def test_torch_backend_with_the_torch_slab_matches_the_offline_replay_across_a_restart(
    kafka_bootstrap, new_topic, sensor_model
):
    card = load_card(sensor_model)
    test = basic_motions().subset("test")
    streams = sensor_streams(test.values, test.labels, 16)
    topic = new_topic("torch", partitions=2)
    s = settings_for(
        kafka_bootstrap,
        topic,
        str(sensor_model),
        model={"backend": "torch", "device": "cpu", "state_slab": "torch"},
        batcher={"max_batch": 8, "max_wait_ms": 10},
    )
    hops = list(range(card.window - 1, 100, card.hop))
    before = sum(h < SPLIT for h in hops) * len(streams)
    expect = len(hops) * len(streams)

    def send(part: list[Stream], first_seq: int) -> None:
        rp = Replayer(kafka_bootstrap, topic, "json", samples_per_message=3)
        rp.run(part, progress=False, first_seq=first_seq)
        rp.close()

    with RunningService(s) as rs:
        rs.wait_ready()
        slab = rs.service.worker.slab
        assert isinstance(slab, TorchStateSlab) and slab.device.type == "cpu"
        assert rs.service.engine.name == "torch"
        send([Stream(st.entity, st.values[:SPLIT]) for st in streams], 0)
        assert len(read_topic(kafka_bootstrap, s.topics.output, before, timeout_s=120)) >= before
    with RunningService(s) as rs:  # a fresh slab: the state comes back from the changelog
        rs.wait_ready()
        send([Stream(st.entity, st.values[SPLIT:]) for st in streams], SPLIT)
        recs = read_topic(kafka_bootstrap, s.topics.output, expect, timeout_s=120)
    latest = {(p["entity"], p["seq"]): p for p in predictions(recs)}  # at-least-once: last wins
    assert len(latest) == expect
    engine = load_engine(sensor_model, "onnxruntime")
    for st in streams:
        got = [latest[(st.entity, h)]["scores"] for h in hops]
        np.testing.assert_allclose(got, published(hop_by_hop(engine, card, st.values)), atol=1e-5)
