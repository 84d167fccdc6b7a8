"""In-band control messages through the real broker: a ``reset`` and a ``set-state`` on the input
topic, keyed by the entity, are applied in order with the entity's samples around them (the
mechanics in process: tests/pipeline/test_control.py). The service runs as a real process
(``stream-infer serve``) on the BasicMotions model; every hop is compared with the ONNX engine
stepped offline from the state the control left."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
from kafka import KafkaProducer

from stream_infer.backends import open_engine
from stream_infer.model.card import load_card
from stream_infer.model.datasets import hop_windows
from tests.processes import (
    TS0,
    ServiceProcess,
    check_against_reference,
    entity_streams,
    read_dead_letters,
    read_hops,
    service_config,
)
from tests.reference import published

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TARGET, BYSTANDER = "ent-000", "ent-001"
RESET_AT, SET_AT, END = 60, 100, 140  # the target's samples before each control, and in all


def stepped(
    engine, card, values: np.ndarray, h: np.ndarray, c: np.ndarray, first_seq: int
) -> dict[int, np.ndarray]:
    """seq of each hop's last sample -> published scores, for one segment of samples ``values``
    stepped from (h, c) [L, Hd]."""
    hs, cs = h[:, None].astype(np.float32), c[:, None].astype(np.float32)
    out = {}
    for i, w in enumerate(hop_windows(values, card.window, card.hop)):
        y, hs, cs = engine.infer(w.reshape(1, *card.input_shape).astype(np.float32), hs, cs)
        out[first_seq + card.window - 1 + i * card.hop] = published(y[0])
    return out


def test_reset_and_set_state_apply_in_order_with_the_samples_around_them(
    kafka_bootstrap, new_topic, artifact: Path, tmp_path, procs: list[ServiceProcess]
):
    topic = new_topic("control", partitions=1)
    card = load_card(artifact)
    layers, hidden = card.state_shape
    rng = np.random.default_rng(5)
    h = rng.uniform(-0.5, 0.5, (layers, hidden)).astype(np.float32)
    c = rng.uniform(-1.0, 1.0, (layers, hidden)).astype(np.float32)
    streams = entity_streams(2, 2, seed=11)
    x, y = streams[TARGET][:END], streams[BYSTANDER][:END]

    cfg = service_config(kafka_bootstrap, topic, artifact, "c0", input={"control_messages": True})
    procs.append(p := ServiceProcess(cfg, tmp_path))
    p.wait_ready(90)

    def sample(entity: str, seq: int, row: np.ndarray) -> tuple[bytes, bytes, list]:
        return entity.encode(), orjson.dumps({"seq": seq, "ts": TS0 + 10 * seq, "values": row.tolist()}), []

    msgs: list[tuple[bytes, bytes | None, list]] = []
    for i in range(END):
        if i == RESET_AT:
            msgs.append((TARGET.encode(), None, [("control", b"reset")]))
        if i == SET_AT:
            doc = {"states": {"h0": h.tolist(), "c0": c.tolist()}}
            msgs.append((TARGET.encode(), orjson.dumps(doc), [("control", b"set-state")]))
            bad = {"states": {"h0": h[0].tolist(), "c0": c.tolist()}}  # h0 without its layer axis
            bad_at = len(msgs)
            msgs.append((TARGET.encode(), orjson.dumps(bad), [("control", b"set-state")]))
        msgs += [sample(TARGET, i, x[i]), sample(BYSTANDER, i, y[i])]
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
    futures = [producer.send(topic, key=k, value=v, headers=hd) for k, v, hd in msgs]
    producer.flush()
    offsets = [f.get(30).offset for f in futures]
    producer.close()
    bad_offset = offsets[bad_at]

    engine = open_engine(artifact, "onnxruntime", "cpu", 1)
    zero = np.zeros((layers, hidden), np.float32)
    ref = {(BYSTANDER, s): v for s, v in stepped(engine, card, y, zero, zero, 0).items()}
    target = (
        stepped(engine, card, x[:RESET_AT], zero, zero, 0)  # before the reset
        | stepped(engine, card, x[RESET_AT:SET_AT], zero, zero, RESET_AT)  # from zero again
        | stepped(engine, card, x[SET_AT:], h, c, SET_AT)  # from the given state
    )
    ref |= {(TARGET, s): v for s, v in target.items()}
    first = SET_AT + card.window - 1
    unsteered = stepped(engine, card, x[SET_AT:], zero, zero, SET_AT)[first]
    assert not np.allclose(target[first], unsteered, atol=1e-3), "the given state must show in the hop"
    preds = read_hops(kafka_bootstrap, cfg["topics"]["output"], set(ref), timeout_s=90)
    counts = check_against_reference(preds, ref, atol=1e-4)
    assert set(counts) == set(ref), f"hops missing: {sorted(set(ref) - set(counts))[:5]}"

    dead = read_dead_letters(kafka_bootstrap, f"{topic}.dlq", {(0, bad_offset)}, timeout_s=30)
    reasons = {int(dict(r.headers)["source.offset"]): dict(r.headers) for r in dead}
    assert set(reasons) == {bad_offset}, reasons
    assert reasons[bad_offset]["error.reason"] == b"bad_control"
    assert b"expected [%d, %d]" % (layers, hidden) in reasons[bad_offset]["error.detail"]
    p.wait_metric('stream_infer_control_messages_total{kind="reset"}', 1)
    p.wait_metric('stream_infer_control_messages_total{kind="set-state"}', 1)
    assert p.metric("stream_infer_control_messages_total") == 2
    assert p.metric('stream_infer_invalid_events_total{reason="bad_control"}') == 1
    assert p.terminate(30) == 0
