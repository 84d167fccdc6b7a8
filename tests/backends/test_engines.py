from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from stream_infer.backends import Engine, load_engine
from stream_infer.backends.parity import compare, random_inputs
from stream_infer.backends.trt_build import convert_float16
from stream_infer.errors import EngineError
from stream_infer.model.card import load_card
from stream_infer.model.datasets import basic_motions, hop_windows
from stream_infer.model.export import load_model
from stream_infer.state.cuda_slab import CudaStateSlab
from stream_infer.state.slab import NumpyStateSlab


@pytest.fixture(scope="module")
def engines(sensor_model: Path) -> tuple[Engine, Engine]:
    return load_engine(sensor_model, "torch"), load_engine(sensor_model, "onnxruntime")


def test_engines_satisfy_the_protocol(engines: tuple[Engine, Engine], sensor_model: Path) -> None:
    card = load_card(sensor_model)
    for engine in engines:
        assert isinstance(engine, Engine)
        assert engine.spec.input_shape == (20, 6) and engine.spec.state_shape == (1, 64)
        assert engine.spec.n_outputs == 4 and engine.spec.device == "cpu"
    assert card.model_id.startswith("basicmotions-cnnlstm@")


@pytest.mark.parametrize("model", ["sensor_model", "frame_model"])
def test_torch_and_onnxruntime_agree_on_random_and_real_inputs(
    model: str, request: pytest.FixtureRequest
) -> None:
    artifact: Path = request.getfixturevalue(model)
    card = load_card(artifact)
    reports = compare(load_engine(artifact, "torch"), load_engine(artifact, "onnxruntime"), card, (1, 7, 256))
    assert {(r.inputs, r.batch) for r in reports} == {(k, b) for k in ("random", "real") for b in (1, 7, 256)}
    for r in reports:
        assert r.worst <= 1e-5, r


def test_state_carried_hop_by_hop_through_onnxruntime_equals_forward_sequence(sensor_model: Path) -> None:
    card, model = load_model(sensor_model)
    engine = load_engine(sensor_model, "onnxruntime")
    recs = basic_motions().subset("test")
    # a long stream: three test recordings back to back, so state is carried over 29 hops
    values = np.concatenate([recs.values[0], recs.values[15], recs.values[30]])
    windows = hop_windows(values, card.window, card.hop)  # [n_hops, W, F]
    with torch.inference_mode():
        ref_y, ref_h, ref_c = model.forward_sequence(torch.from_numpy(windows)[None])
    h = np.zeros((1, 1, 64), np.float32)
    c = np.zeros_like(h)
    ys = []
    for w in windows:
        y, h, c = engine.infer(w[None], h, c)
        ys.append(y[0])
    assert len(ys) == 29
    np.testing.assert_allclose(np.stack(ys), ref_y[0].numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(h, ref_h.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(c, ref_c.numpy(), atol=1e-5, rtol=0)


def test_batch_over_max_batch_is_an_engine_error(sensor_model: Path) -> None:
    engine = load_engine(sensor_model, "onnxruntime", max_batch=4)
    card = load_card(sensor_model)
    x = random_inputs(card, 5)
    h = np.zeros((1, 5, 64), np.float32)
    with pytest.raises(EngineError, match="max_batch 4"):
        engine.infer(x, h, h)
    with pytest.raises(EngineError, match="expected"):
        engine.infer(x[:4, :10], h[:, :4], h[:, :4])


def test_torch_state_slab_matches_numpy_slab() -> None:
    rng = np.random.default_rng(0)
    ref, slab = NumpyStateSlab(16, 2, 8), CudaStateSlab("cpu", 16, 2, 8)
    for _ in range(5):
        slots = rng.choice(16, size=6, replace=False).astype(np.int64)
        h, c = rng.standard_normal((2, 2, 6, 8)).astype(np.float32)
        ref.scatter(slots, h, c)
        slab.scatter(slots, torch.from_numpy(h), torch.from_numpy(c))
        zero = slots[:2]
        ref.zero(zero)
        slab.zero(zero)
    every = np.arange(16)
    for a, b in zip(ref.read(every), slab.read(every), strict=True):
        np.testing.assert_array_equal(a, b)
    gh, _ = slab.gather(np.array([3, 1]))
    np.testing.assert_array_equal(gh.numpy(), ref.gather(np.array([3, 1]))[0])
    slab.write(np.array([0]), np.ones((2, 1, 8), np.float32), np.ones((2, 1, 8), np.float32))
    assert slab.read(np.array([0]))[0].sum() == 16


def test_fp16_conversion_keeps_lstm_and_io_in_fp32(sensor_model: Path, tmp_path: Path) -> None:
    model = convert_float16(onnx.load(str(sensor_model / "model.onnx")))
    lstm = next(n for n in model.graph.node if n.op_type == "LSTM")
    types = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.value_info, *model.graph.input)}
    inits = {i.name: i.data_type for i in model.graph.initializer}
    assert all(types.get(i, inits.get(i)) == onnx.TensorProto.FLOAT for i in lstm.input if i)
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    assert inits[conv.input[1]] == onnx.TensorProto.FLOAT16
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in model.graph.output)
    path = tmp_path / "fp16.onnx"
    onnx.save(model, str(path))
    card = load_card(sensor_model)
    x = random_inputs(card, 7)
    h = np.zeros((1, 7, 64), np.float32)
    got = ort.InferenceSession(str(path)).run(None, {"x": x, "h0": h, "c0": h})
    want = load_engine(sensor_model, "onnxruntime").infer(x, h, h)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=2e-2, rtol=0)


# --- GPU ---------------------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="torch.cuda.is_available() is false: no NVIDIA GPU"
)


def _has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_torch_cuda_matches_cpu(sensor_model: Path, cuda_graphs: bool) -> None:
    from stream_infer.backends.torch_backend import TorchEngine

    card = load_card(sensor_model)
    gpu = TorchEngine(sensor_model, "cuda:0", cuda_graphs=cuda_graphs)
    for r in compare(load_engine(sensor_model, "onnxruntime"), gpu, card, (1, 7, 256)):
        assert r.worst <= 1e-4, r


@pytest.mark.gpu
@needs_cuda
def test_cuda_state_slab_on_gpu() -> None:
    slab = CudaStateSlab("cuda:0", 8, 1, 4)
    slab.scatter(np.array([2, 5]), torch.ones(1, 2, 4, device="cuda:0"), torch.ones(1, 2, 4, device="cuda:0"))
    h, _ = slab.gather(np.array([5, 0]))
    assert h.device.type == "cuda" and h[:, 0].sum().item() == 4 and h[:, 1].sum().item() == 0


@pytest.mark.gpu
@needs_cuda
@pytest.mark.skipif(not _has_tensorrt(), reason="tensorrt is not installed (pip install 'stream-infer[gpu]')")
@pytest.mark.parametrize(("precision", "tol"), [("fp32", 1e-3), ("fp16", 3e-2)])
def test_tensorrt_matches_onnxruntime(sensor_model: Path, tmp_path: Path, precision: str, tol: float) -> None:
    from stream_infer.backends.tensorrt_backend import TrtEngine
    from stream_infer.backends.trt_build import TrtBuilder

    for name in ("model.json", "weights.pt", "model.onnx"):
        (tmp_path / name).write_bytes((sensor_model / name).read_bytes())
    TrtBuilder(tmp_path, max_batch=512, opt_batch=64).build(precision)  # type: ignore[arg-type]
    trt_engine = TrtEngine(tmp_path, "cuda:0", precision=precision)
    for r in compare(load_engine(tmp_path, "onnxruntime"), trt_engine, load_card(tmp_path), (1, 7, 256)):
        assert r.worst <= tol, r


def test_tensorrt_unavailable_is_a_clear_engine_error(sensor_model: Path) -> None:
    if _has_tensorrt() and torch.cuda.is_available():
        pytest.skip("TensorRT and a GPU are present")
    with pytest.raises(EngineError, match="(?i)tensorrt|cuda"):
        load_engine(sensor_model, "tensorrt", "cuda:0")
