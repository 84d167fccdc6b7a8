from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from stream_infer.errors import ModelError
from stream_infer.model.export import export_onnx


def test_onnx_graph_is_one_lstm_step_with_dynamic_batch(sensor_model: Path) -> None:
    model = onnx.load(str(sensor_model / "model.onnx"))
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node].count("LSTM") == 1
    assert [i.name for i in model.graph.input] == ["x", "h0", "c0"]
    assert [o.name for o in model.graph.output] == ["y", "hn", "cn"]

    def dims(v: onnx.ValueInfoProto) -> list[str | int]:
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    x, h0, _ = model.graph.input
    assert isinstance(dims(x)[0], str) and dims(x)[1:] == [20, 6]
    assert isinstance(dims(h0)[1], str) and dims(h0)[0] == 1 and dims(h0)[2] == 64


def test_export_rewrites_the_graph(sensor_model: Path, tmp_path: Path) -> None:
    for name in ("model.json", "weights.pt"):
        (tmp_path / name).write_bytes((sensor_model / name).read_bytes())
    result = export_onnx(tmp_path)
    assert result.path == tmp_path / "model.onnx" and result.path.is_file()
    assert result.exporter == "dynamo" and "LSTM" in result.ops and result.max_abs_diff < 1e-5


def test_export_without_weights_names_the_file(sensor_model: Path, tmp_path: Path) -> None:
    (tmp_path / "model.json").write_bytes((sensor_model / "model.json").read_bytes())
    with pytest.raises(ModelError, match=r"weights\.pt: missing weights"):
        export_onnx(tmp_path)
