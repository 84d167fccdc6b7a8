"""Bring your own model: the contract is checked at import with one line per breach, and any
number and shape of state tensors goes through the slab, the changelog and the pipeline."""

from __future__ import annotations

import copy
import json
import struct
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import torch
from torch import nn

from examples import convlstm_frames, gru_sensor, lstm2_sensor
from stream_infer import evaluate
from stream_infer.backends import open_engine
from stream_infer.errors import ModelError, StateError
from stream_infer.model.card import load_card
from stream_infer.model.contract import StateSpec
from stream_infer.model.datasets import Recordings, basic_motions
from stream_infer.model.importer import export_module, import_onnx
from stream_infer.state import codec as changelog
from stream_infer.state.slab import NumpyStateSlab
from tests.reference import hop_by_hop_any, output_of, published


@pytest.fixture(scope="module")
def gru_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gru") / "artifact"
    gru_sensor.build(out)
    return out / "model.onnx"


def _card(**over: Any) -> dict[str, Any]:
    card = copy.deepcopy(gru_sensor.CARD)
    card.update(over)
    return {k: v for k, v in card.items() if v is not None}


class _FixedBatch(nn.Module):
    def forward(self, window: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return window.mean(dim=1)[:, :4], h


def _fixed_batch_onnx(tmp: Path) -> Path:
    path = tmp / "fixed.onnx"
    torch.onnx.export(
        _FixedBatch(),
        (torch.zeros(2, 20, 6), torch.zeros(1, 2, 32)),
        str(path),
        dynamo=False,
        input_names=["window", "h_in"],
        output_names=["logits", "h_out"],
    )
    return path


BREACHES: dict[str, tuple[Any, str]] = {
    "missing file": (lambda p, t: (t / "nope.onnx", _card()), "no such file"),
    "not onnx": (lambda p, t: (_garbage(t), _card()), "not an ONNX graph"),
    "unknown card key": (lambda p, t: (p, _card(colour="blue")), "unknown keys ['colour']"),
    "no state": (lambda p, t: (p, {k: v for k, v in _card().items() if k != "state"}), "missing state"),
    "state without shape": (
        lambda p, t: (p, _card(state=[{"input": "h_in", "output": "h_out"}])),
        "state[0] needs",
    ),
    "hop over window": (lambda p, t: (p, _card(hop=30)), "1 <= hop <= window"),
    "window input not in graph": (lambda p, t: (p, _card(input="x")), "input 'x' is not a graph input"),
    "head output not in graph": (lambda p, t: (p, _card(output="y")), "output 'y' is not a graph output"),
    "state output not in graph": (
        lambda p, t: (p, _card(state=[{"input": "h_in", "output": "hn", "shape": [1, 32], "batch_axis": 1}])),
        "output 'hn' is not a graph output",
    ),
    "a graph input the card does not feed": (
        lambda p, t: (p, _card(state=[])),
        "state must list at least one",
    ),
    "state shape differs": (
        lambda p, t: (
            p,
            _card(state=[{"input": "h_in", "output": "h_out", "shape": [1, 16], "batch_axis": 1}]),
        ),
        "input 'h_in' is [1, B, 32], the card says [1, B, 16]",
    ),
    "batch axis elsewhere": (
        lambda p, t: (
            p,
            _card(state=[{"input": "h_in", "output": "h_out", "shape": [32, 1], "batch_axis": 0}]),
        ),
        "input 'h_in' has a fixed batch dimension 1",
    ),
    "head size differs from labels": (
        lambda p, t: (p, _card(labels=["a", "b", "c"])),
        "output 'logits' is [B, 4], the card says [B, 3]",
    ),
    "window shape differs": (
        lambda p, t: (p, _card(sample_shape=[3])),
        "input 'window' is [B, 20, 6], the card says [B, 20, 3]",
    ),
    "fixed batch": (lambda p, t: (_fixed_batch_onnx(t), _card()), "fixed batch dimension 2"),
    "unknown head kind": (lambda p, t: (p, _card(head="ranking")), "head kind must be one of"),
    "anomaly without threshold": (
        lambda p, t: (p, _card(labels=None, outputs=["score"], head={"kind": "anomaly"})),
        "needs a finite number as head.threshold",
    ),
    "labels and outputs": (lambda p, t: (p, _card(outputs=["a"])), "not both"),
    "unknown head key": (lambda p, t: (p, _card(head={"kind": "regression", "lag": 3})), "unknown head keys"),
    "names used twice": (
        lambda p, t: (
            p,
            _card(state=[{"input": "window", "output": "h_out", "shape": [1, 32], "batch_axis": 1}]),
        ),
        "names used twice: ['window']",
    ),
}


def _garbage(tmp: Path) -> Path:
    path = tmp / "garbage.onnx"
    path.write_bytes(b"\x00not a protobuf at all" * 10)
    return path


@pytest.mark.parametrize("case", list(BREACHES))
def test_each_contract_breach_is_refused_in_one_line(gru_onnx: Path, tmp_path: Path, case: str) -> None:
    make, expected = BREACHES[case]
    model, card = make(gru_onnx, tmp_path)
    with pytest.raises(ModelError) as info:
        import_onnx(model, card, tmp_path / "out")
    line = str(info.value)
    assert expected in line and "\n" not in line, line
    assert not (tmp_path / "out").exists()


def test_an_imported_graph_is_served_by_the_service_pipeline(tmp_path: Path) -> None:
    """The in-process pipeline (decode, windows, slab, engine, sink) equals the graph stepped
    hop by hop with its state carried, for one and for two state tensors."""
    sensors = basic_motions().subset("test").select(list(range(6)))
    for example in (gru_sensor, lstm2_sensor, convlstm_frames):
        card = example.build(tmp_path / example.__name__.rsplit(".", 1)[-1])
        artifact = tmp_path / example.__name__.rsplit(".", 1)[-1]
        recs = sensors if card.kind == "sensor" else frame_sequences(4, 7)
        assert load_card(artifact).states == card.states
        preds = evaluate.replay(artifact, recs)
        engine = open_engine(artifact, "onnxruntime", "cpu", 8)
        try:
            for i, (name, values) in enumerate(zip(recs.names, recs.values, strict=True)):
                got = sorted(
                    (p for p in preds if p["entity"] == evaluate.entity_of(i, name)), key=lambda p: p["seq"]
                )
                np.testing.assert_allclose(
                    [p["scores"] for p in got], published(hop_by_hop_any(engine, card, values)), atol=1e-5
                )
        finally:
            engine.close()


def frame_sequences(n: int, length: int, seed: int = 0) -> Recordings:
    """Synthetic frame streams [T, 1, 16, 16] of pixels 0..255 (mechanics, not accuracy)."""
    rng = np.random.default_rng(seed)
    frames = [rng.uniform(0, 255, size=(length, 1, 16, 16)).astype(np.float32) for _ in range(n)]
    labels = [convlstm_frames.LABELS[i % 2] for i in range(n)]
    return Recordings(frames, labels, [f"cam{i}" for i in range(n)], ["test"] * n, [])


def test_the_torch_and_tensorrt_backends_refuse_an_imported_graph(tmp_path: Path) -> None:
    gru_sensor.build(tmp_path / "a")
    for backend in ("torch", "tensorrt"):
        with pytest.raises(ModelError, match="imported graph"):
            open_engine(tmp_path / "a", backend, "cpu", 8)  # type: ignore[arg-type]


SPECS = (
    StateSpec("h", "hn", (2, 5), 1),  # an LSTM-like [L, B, H]
    StateSpec("m", "mn", (3, 4, 4), 0),  # a ConvLSTM-like [B, C, H, W]
    StateSpec("k", "kn", (7,), 1),  # batch last: [7, B]
)


def test_the_slab_keeps_any_state_shapes_batch_first_and_gathers_in_the_graph_layout() -> None:
    slab = NumpyStateSlab(8, states=SPECS)
    slots = np.array([5, 1, 6])
    rng = np.random.default_rng(0)
    values = [rng.normal(size=s.batched(3)).astype(np.float32) for s in SPECS]
    slab.scatter(slots, *values)
    for got, want, s in zip(slab.gather(slots), values, SPECS, strict=True):
        assert got.shape == s.batched(3)
        np.testing.assert_array_equal(got, want)
    slab.zero(slots[:1])
    assert not np.any(slab.gather(slots[:1])[1])


def test_changelog_round_trips_any_state_and_formats_1_and_2_are_still_read() -> None:
    rng = np.random.default_rng(1)
    tail = rng.normal(size=(2, 20, 6)).astype(np.float32)
    states = [rng.normal(size=s.batched(2)).astype(np.float32) for s in SPECS]
    vals = changelog.encode_many("m@1", np.array([3, 4]), np.array([7, 8]), np.array([20, 21]),
                                 np.array([False, True]), tail, *states, specs=SPECS)  # fmt: skip
    assert vals[0][4] == changelog.FORMAT_VERSION == 3
    st = changelog.decode(vals[1], "m@1", 20, (6,), SPECS)
    for got, full, s in zip(st.states, states, SPECS, strict=True):
        np.testing.assert_array_equal(got, np.moveaxis(full, s.batch_axis, 0)[1])
    with pytest.raises(StateError, match="shapes"):
        changelog.decode(vals[1], "m@1", 20, (6,), SPECS[:2])
    # Format 2 (no anchor) is format 3 less its anchor field: still read.
    v2 = bytearray(vals[1][:36])
    v2[4] = 2
    old = changelog.decode(bytes(v2) + vals[1][52:], "m@1", 20, (6,), SPECS)
    assert old.anchor == changelog.NO_ANCHOR and old.count == 21
    # Format 1, as written for the CNN-LSTM's (h, c) pair before: still read.
    h = rng.normal(size=(1, 4)).astype(np.float32)
    mid = b"m@1"
    v1 = (
        struct.pack("<4sBBHqqqI", b"SIST", 1, 0, len(mid), 3, 7, 20, 20)
        + struct.pack("<BI", 1, 6)
        + struct.pack("<HI", 1, 4)
        + mid
        + tail[0].astype("<f4").tobytes()
        + h.astype("<f4").tobytes()
        + (-h).astype("<f4").tobytes()
    )
    got1 = changelog.decode(v1, "m@1", 20, (6,), (1, 4))
    np.testing.assert_array_equal(got1.c, -h)
    assert got1.anchor == changelog.NO_ANCHOR and got1.last_seq == 3


def test_export_module_refuses_a_module_that_does_not_export(tmp_path: Path) -> None:
    class Broken(nn.Module):
        def forward(self, window: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            raise RuntimeError("cannot trace me")

    with pytest.raises(ModelError, match="does not export to ONNX"):
        export_module(Broken(), gru_sensor.CARD, tmp_path / "out")


def test_import_creates_a_nested_out_and_never_overwrites_another_folder(
    gru_onnx: Path, tmp_path: Path
) -> None:
    nested = tmp_path / "models" / "gru" / "v1"
    import_onnx(gru_onnx, _card(), nested)
    assert (nested / "model.json").exists()
    import_onnx(gru_onnx, _card(), nested)  # an earlier artifact is replaced
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ModelError, match="not a model artifact"):
        import_onnx(gru_onnx, _card(), other)
    assert (other / "keep.txt").read_text() == "mine"
    assert not [p for p in tmp_path.rglob(".import-*")]


class _GRUHead(nn.Module):
    """The GRU example's encoder and state with a head of ``k`` outputs."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.body = gru_sensor.GRUSensor()
        self.body.head = nn.Linear(gru_sensor.HIDDEN, k)

    def forward(self, window: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.body(window, h)  # type: ignore[no-any-return]


@pytest.mark.parametrize("kind", ["regression", "anomaly"])
def test_regression_and_anomaly_heads_are_imported_and_published(tmp_path: Path, kind: str) -> None:
    """Through the service's pipeline: documents of the head's kind that validate against the
    prediction schema, their numbers equal to the graph stepped hop by hop."""
    torch.manual_seed(3)
    outputs = ["acc_x+1", "acc_y+1"] if kind == "regression" else ["score"]
    head = {"kind": kind} | ({"threshold": 0.0} if kind == "anomaly" else {})
    card = export_module(
        _GRUHead(len(outputs)), _card(labels=None, outputs=outputs, head=head), tmp_path / "a"
    )
    assert card.head_kind == kind and card.labels == outputs
    recs = basic_motions().subset("test").select(list(range(4)))
    preds = evaluate.replay(tmp_path / "a", recs)
    schema = json.loads((files("stream_infer") / "schemas" / "prediction.schema.json").read_text())
    engine = open_engine(tmp_path / "a", "onnxruntime", "cpu", 8)
    try:
        for i, (name, values) in enumerate(zip(recs.names, recs.values, strict=True)):
            got = sorted(
                (p for p in preds if p["entity"] == evaluate.entity_of(i, name)), key=lambda p: p["seq"]
            )
            for p in got:
                jsonschema.validate(p, schema)
                assert p["head"] == kind
            np.testing.assert_allclose(
                [output_of(p) for p in got], hop_by_hop_any(engine, card, values), atol=1e-5
            )
            if kind == "anomaly":
                assert all(p["anomaly"] == (p["score"] > 0.0) for p in got)
            else:
                assert all(list(p["values"]) == outputs for p in got)
    finally:
        engine.close()
    # Version 1 documents exist for classification only: refused before the service starts.
    from prometheus_client import CollectorRegistry

    from stream_infer.config import load_settings
    from stream_infer.service import Service

    v1 = load_settings(None, model={"artifact": str(tmp_path / "a")}, output={"schema_version": 1})
    with pytest.raises(ModelError, match="schema_version 1 is for classification models"):
        Service(v1, registry=CollectorRegistry())
