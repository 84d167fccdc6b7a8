"""Building TensorRT plans from ``model.onnx``; shared by ``stream-infer build-engine`` and
``engines/build_trt.py``.

A plan only runs on the TensorRT version and GPU architecture it was built for, so its name
carries both: ``artifact/trt/model.<fp16|fp32>.trt<major.minor>.sm<cc>.plan``.

TensorRT 10.12+ deprecates weakly typed networks (``BuilderFlag.FP16``), so every network is
built strongly typed and the precision lives in the ONNX itself: the FP16 variant is the graph
converted by :func:`convert_float16`, which keeps the graph's inputs/outputs, the input normalisation and the LSTM in FP32
(the recurrent state accumulates error over hops) and runs the convolutional encoder and the head
in FP16.

Build steps, in order: (optionally) convert to FP16 -> parse ONNX -> one optimisation profile
(min/opt/max batch; batch is dim 0 of x and dim 1 of h0/c0) -> load the timing cache -> build
serialized network -> save the timing cache -> write the plan.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from stream_infer.errors import EngineError, ModelError
from stream_infer.model.card import ONNX_FILE, load_card

logger = logging.getLogger(__name__)

Precision = Literal["fp16", "fp32"]
TRT_DIR = "trt"
FP32_OPS = frozenset({"LSTM", "Sub", "Div"})  # LSTM + input normalisation (raw values can exceed FP16)
_MOVE_OPS = frozenset(
    {
        "Slice",
        "Reshape",
        "Transpose",
        "Gather",
        "Unsqueeze",
        "Squeeze",
        "Concat",
        "Identity",
        "Flatten",
        "Split",
        "Expand",
    }
)


def plan_path(artifact: Path, precision: str, trt_version: str, compute_capability: tuple[int, int]) -> Path:
    """``artifact/trt/model.fp16.trt10.12.sm90.plan`` (TensorRT major.minor, SM major minor)."""
    major_minor = ".".join(trt_version.split(".")[:2])
    sm = f"{compute_capability[0]}{compute_capability[1]}"
    return artifact / TRT_DIR / f"model.{precision}.trt{major_minor}.sm{sm}.plan"


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError as exc:
        raise EngineError(
            "the tensorrt backend needs the TensorRT Python package "
            "(pip install 'stream-infer[gpu]') and an NVIDIA GPU"
        ) from exc
    return tensorrt


def convert_float16(model: onnx.ModelProto, keep_fp32: frozenset[str] = FP32_OPS) -> onnx.ModelProto:
    """FP16 copy of ``model``: float initializers and activations in FP16 except for the ops in
    ``keep_fp32``; graph inputs and outputs stay FP32 (Casts are inserted at the boundaries)."""
    model = onnx.shape_inference.infer_shapes(model)
    graph = model.graph
    if any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for n in graph.node
        for a in n.attribute
    ):
        raise ModelError("convert_float16 does not handle graphs with subgraphs (If/Loop/Scan)")
    floats = {
        v.name
        for v in (*graph.input, *graph.value_info, *graph.output)
        if v.type.tensor_type.elem_type == TensorProto.FLOAT
    }
    inits = {i.name: i for i in graph.initializer}
    floats |= {n for n, i in inits.items() if i.data_type == TensorProto.FLOAT}
    produced: dict[str, int] = {i.name: TensorProto.FLOAT for i in graph.input}
    converted: dict[tuple[str, int], str] = {}
    new_inits: list[TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    # Graph outputs are renamed inside; an FP32 Identity restores each public name at the end.
    outputs = {o.name: f"{o.name}__internal" for o in graph.output}
    for node in graph.node:
        node.output[:] = [outputs.get(o, o) for o in node.output]
        node.input[:] = [outputs.get(i, i) for i in node.input]
    floats |= set(outputs.values())

    def as_type(name: str, dtype: int) -> str:
        if (name, dtype) in converted:
            return converted[(name, dtype)]
        if name in inits:
            new = f"{name}__fp16" if dtype == TensorProto.FLOAT16 else name
            if dtype == TensorProto.FLOAT16:
                arr = numpy_helper.to_array(inits[name]).astype(np.float16)
                new_inits.append(numpy_helper.from_array(arr, new))
        elif produced.get(name, TensorProto.FLOAT) == dtype:
            new = name
        else:
            new = f"{name}__to{'16' if dtype == TensorProto.FLOAT16 else '32'}"
            nodes.append(helper.make_node("Cast", [name], [new], to=dtype, name=f"cast_{new}"))
        converted[(name, dtype)] = new
        return new

    for node in graph.node:
        dtype: int = TensorProto.FLOAT if node.op_type in keep_fp32 else TensorProto.FLOAT16
        if node.op_type in _MOVE_OPS:  # data movement keeps its input's precision (e.g. h0 slices)
            first = next((i for i in node.input if i in floats and i not in inits), None)
            if first is not None:
                dtype = produced.get(first, TensorProto.FLOAT)
        node.input[:] = [as_type(i, dtype) if i in floats else i for i in node.input]
        if node.op_type == "Cast":
            for a in node.attribute:
                if a.name == "to" and a.i == TensorProto.FLOAT:
                    a.i = dtype
        if node.op_type == "Constant":
            dtype = TensorProto.FLOAT  # constants keep their values; consumers cast them
        for o in node.output:
            if o in floats:
                produced[o] = dtype
        nodes.append(node)
    for public, internal in outputs.items():
        nodes.append(helper.make_node("Identity", [as_type(internal, TensorProto.FLOAT)], [public]))
    used = {i for n in nodes for i in n.input}
    keep = [i for i in graph.initializer if i.name in used] + [i for i in new_inits if i.name in used]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(keep)
    del graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model)
    return model


@dataclass(frozen=True)
class BuildResult:
    path: Path
    precision: str
    seconds: float


class TrtBuilder:
    """Builds plans for one artifact on the current GPU."""

    def __init__(
        self, artifact: str | Path, max_batch: int = 4096, opt_batch: int = 256, workspace_mib: int = 1024
    ) -> None:
        self.artifact = Path(artifact)
        self.card = load_card(self.artifact)
        self.onnx_path = self.artifact / ONNX_FILE
        if not self.onnx_path.is_file():
            raise ModelError(f"{self.onnx_path}: missing (run `stream-infer export {self.artifact}`)")
        self.max_batch = max_batch
        self.opt_batch = min(opt_batch, max_batch)
        self.workspace_mib = workspace_mib
        self.trt = import_tensorrt()
        import torch

        if not torch.cuda.is_available():
            raise EngineError("building a TensorRT plan needs a CUDA GPU; torch sees none")
        self.compute_capability = torch.cuda.get_device_capability()
        self.timing_cache = (
            self.artifact
            / TRT_DIR
            / f"timing.trt{self.trt.__version__}.sm{self.compute_capability[0]}{self.compute_capability[1]}.cache"
        )

    def build(self, precision: Precision = "fp16") -> BuildResult:
        import time

        trt = self.trt
        started = time.perf_counter()
        model = onnx.load(str(self.onnx_path))
        if precision == "fp16":
            model = convert_float16(model)
        trt_logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(trt_logger)
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = trt.OnnxParser(network, trt_logger)
        if not parser.parse(model.SerializeToString()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineError(f"{self.onnx_path}: TensorRT cannot parse it: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_mib << 20)
        profile = builder.create_optimization_profile()
        layers, hidden = self.card.state_shape
        item = self.card.input_shape
        for b_min, b_opt, b_max in [(1, self.opt_batch, self.max_batch)]:
            profile.set_shape("x", (b_min, *item), (b_opt, *item), (b_max, *item))
            for state in ("h0", "c0"):
                profile.set_shape(
                    state, (layers, b_min, hidden), (layers, b_opt, hidden), (layers, b_max, hidden)
                )
        config.add_optimization_profile(profile)
        cache = config.create_timing_cache(
            self.timing_cache.read_bytes() if self.timing_cache.is_file() else b""
        )
        config.set_timing_cache(cache, ignore_mismatch=False)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise EngineError(f"{self.onnx_path}: TensorRT build failed ({precision}); see the log above")
        out = plan_path(self.artifact, precision, trt.__version__, self.compute_capability)
        out.parent.mkdir(parents=True, exist_ok=True)
        self.timing_cache.write_bytes(memoryview(config.get_timing_cache().serialize()))
        out.write_bytes(memoryview(plan))
        seconds = time.perf_counter() - started
        logger.info("built %s in %.1f s", out, seconds)
        return BuildResult(out, precision, seconds)
