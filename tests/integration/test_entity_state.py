"""Entity state you can see, through the real broker: ``GET /entities/<id>`` on a running
service (last seq, the last prediction on the output topic, tensors' norms), then, with the
service stopped, ``stream-infer state show`` and ``state export`` agree with it, and
``state import`` under another model id writes changelog records that decode to the exported
tensors."""

from __future__ import annotations

import dataclasses
import json
import time
import urllib.error
import urllib.request
from typing import Any

import numpy as np
import orjson
import pytest
import yaml
from typer.testing import CliRunner

from stream_infer.cli import app
from stream_infer.config import load_settings
from stream_infer.kafka.compacted import read_changelog
from stream_infer.model.card import ModelCard
from stream_infer.state import codec
from stream_infer.state.inspection import load_npz, partition_for
from stream_infer.testing import LinearEngine
from tests.streaming import RunningService, client_choice, produce_json, read_topic

pytestmark = pytest.mark.integration

W, K, F, N, PARTS = 4, 2, 3, 9, 3
ENTITIES = [f"ent-{i}" for i in range(6)]


def card() -> ModelCard:
    return ModelCard(
        name="lin",
        version="1",
        kind="sensor",
        window=W,
        hop=K,
        sample_shape=[F],
        labels=["a", "b"],
        lstm_layers=1,
        hidden_size=4,
    )


def get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def trim_hidden(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The ``--transform`` hook of the refused file below: back to the card's hidden size."""
    return {k: v[..., :4] if k.startswith("state.") else v for k, v in arrays.items()}


def test_entity_api_state_show_export_and_import_agree(kafka_bootstrap, new_topic, tmp_path):
    topic = new_topic("ents", partitions=PARTS)
    (tmp_path / "model.json").write_text(json.dumps(dataclasses.asdict(card())))
    cfg: dict[str, Any] = {
        "kafka": {"bootstrap_servers": kafka_bootstrap, "group_id": f"g-{topic}", "client_id": f"c-{topic}"}
        | client_choice(),
        "topics": {"input": topic, "output": f"{topic}.out"},
        "model": {"artifact": str(tmp_path)},
        "metrics": {"port": 0, "host": "127.0.0.1", "entity_api": True},
        "batcher": {"max_wait_ms": 5},
        "delivery": {"commit_interval_ms": 300},
    }
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    s = load_settings(None, **cfg)
    rng = np.random.default_rng(3)
    data = {e: rng.normal(size=(N, F)).astype(np.float32) for e in ENTITIES}
    msgs = [
        (e, {"seq": i, "ts": 1_700_000_000_000 + i, "values": x[i].tolist()})
        for i in range(N)
        for e, x in data.items()
    ]
    n_hops = (N - W) // K + 1
    with RunningService(s, engine=LinearEngine((W, F)), card=card()) as rs:
        rs.wait_ready(60)
        produce_json(kafka_bootstrap, topic, msgs)
        recs = read_topic(kafka_bootstrap, s.topics.output, len(ENTITIES) * n_hops, timeout_s=120)
        port = rs.service.metrics_port
        assert port is not None
        deadline = time.monotonic() + 60
        while True:  # the samples past the last hop may still be on their way in
            status, doc = get(port, "/entities/ent-0?tensors=1")
            if status == 200 and doc["last_seq"] == N - 1 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        for _ in range(10):  # 503: the loop did not answer within its bound (a loaded machine)
            missing_status, missing = get(port, "/entities/nobody")
            if missing_status != 503:
                break
    assert status == 200, doc
    assert doc["last_seq"] == N - 1 and doc["tier"] == "memory" and doc["owned"] is True
    assert doc["partition"] == partition_for("ent-0", PARTS)
    published = [orjson.loads(r.value) for r in recs if r.key == b"ent-0"]
    assert doc["last_prediction"] == published[-1] and published[-1]["seq"] == N - 2
    names = [t["name"] for t in doc["states"]]
    assert names == ["h0", "c0"]
    for t in doc["states"]:
        assert t["norm"] == pytest.approx(float(np.linalg.norm(t["values"])), rel=1e-5)
    assert missing_status == 404 and missing["owned"] is True and "reason" in missing

    runner = CliRunner()
    shown = runner.invoke(app, ["state", "show", "ent-0", "--config", str(cfg_path)])
    assert shown.exit_code == 0, shown.output
    assert f"last_seq {N - 1}" in shown.output and "model lin@1" in shown.output
    for t in doc["states"]:
        line = next(ln for ln in shown.output.splitlines() if ln.startswith(f"state {t['name']} "))
        assert float(line.rsplit(" ", 1)[1]) == pytest.approx(t["norm"], rel=1e-4)
    absent = runner.invoke(app, ["state", "show", "nobody", "--config", str(cfg_path)])
    assert absent.exit_code == 1 and len(absent.output.strip().splitlines()) == 1

    out = tmp_path / "states.npz"
    exported = runner.invoke(app, ["state", "export", "--config", str(cfg_path), "--out", str(out)])
    assert exported.exit_code == 0, exported.output
    arrays = load_npz(out)
    assert sorted(arrays["entity"].tolist()) == ENTITIES
    assert (arrays["last_seq"] == N - 1).all() and (arrays["model_id"] == "lin@1").all()
    i0 = arrays["entity"].tolist().index("ent-0")
    np.testing.assert_allclose(arrays["state.h0"][i0], doc["states"][0]["values"], rtol=1e-6)
    np.testing.assert_allclose(arrays["state.c0"][i0], doc["states"][1]["values"], rtol=1e-6)

    padded = tmp_path / "padded.npz"
    np.savez(
        padded,
        **{
            k: np.pad(v, ((0, 0), (0, 0), (0, 2))) if k.startswith("state.") else v for k, v in arrays.items()
        },
    )
    refused = runner.invoke(app, ["state", "import", "--config", str(cfg_path), "--in", str(padded)])
    assert refused.exit_code == 2 and len(refused.output.strip().splitlines()) == 1, refused.output
    assert "state.h0 has shape [1, 6] per entity, model lin@1 needs [1, 4]" in refused.output
    before = read_changelog(s, range(PARTS))
    assert all(codec.decode(v, "lin@1", W, (F,), card().states) for _, v in before.values() if v is not None)
    imported = runner.invoke(
        app,
        [
            "state",
            "import",
            "--config",
            str(cfg_path),
            "--in",
            str(padded),
            "--model-id",
            "lin@2",
            "--transform",
            f"{__name__}:trim_hidden",
        ],
    )
    assert imported.exit_code == 0, imported.output
    latest = read_changelog(s, range(PARTS))
    specs = card().states
    for i, e in enumerate(arrays["entity"].tolist()):
        part, value = latest[e.encode()]
        assert part == partition_for(e, PARTS) == arrays["partition"][i]
        assert value is not None
        st = codec.decode(value, "lin@2", W, (F,), specs)
        assert st.last_seq == arrays["last_seq"][i] and st.count == arrays["count"][i]
        np.testing.assert_array_equal(st.tail, arrays["tail"][i])
        np.testing.assert_array_equal(st.states[0], arrays["state.h0"][i])
        np.testing.assert_array_equal(st.states[1], arrays["state.c0"][i])
