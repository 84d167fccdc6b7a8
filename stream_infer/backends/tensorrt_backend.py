"""TensorRT engine: a plan built for this TensorRT version and GPU (see ``trt_build``), run with
the name-based tensor API (``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``).

Inputs and outputs are torch CUDA tensors; TensorRT reads and writes them in place through
``data_ptr()`` on torch's current stream, so kernels queue behind the state gather. ``infer``
synchronises the stream before returning so engine time is measured where it is spent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stream_infer.backends.base import Array, EngineSpec
from stream_infer.backends.trt_build import import_tensorrt, plan_path
from stream_infer.errors import EngineError, ModelError
from stream_infer.model.card import load_card


class TrtEngine:
    name = "tensorrt"

    def __init__(
        self, artifact: str | Path, device: str = "cuda:0", max_batch: int = 4096, precision: str = "auto"
    ) -> None:
        trt = import_tensorrt()
        import torch

        if not device.startswith("cuda") or not torch.cuda.is_available():
            raise EngineError(
                f"the tensorrt backend runs on a CUDA device, not {device!r} "
                f"(torch.cuda.is_available() is {torch.cuda.is_available()})"
            )
        artifact = Path(artifact)
        self.card = load_card(artifact)
        if self.card.state:
            raise ModelError(
                f"{artifact}: an imported graph (state pairs in its card): the tensorrt backend serves "
                "the CNN-LSTM's (h, c) contract only; serve it with onnxruntime"
            )
        self._device = torch.device(device)
        torch.cuda.set_device(self._device)
        cc = torch.cuda.get_device_capability(self._device)
        choices = ["fp16", "fp32"] if precision == "auto" else [precision]
        candidates = [plan_path(artifact, p, trt.__version__, cc) for p in choices]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise ModelError(
                f"no TensorRT plan for TensorRT {trt.__version__} on sm{cc[0]}{cc[1]}: "
                f"looked for {', '.join(str(p) for p in candidates)} "
                f"(run `stream-infer build-engine {artifact}`)"
            )
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            raise ModelError(f"{path}: TensorRT cannot deserialize this plan")
        self._context = self._engine.create_execution_context()
        profile_max = self._engine.get_tensor_profile_shape("x", 0)[2][0]
        self.plan = path
        self.spec = EngineSpec(
            input_shape=self.card.input_shape,
            state_shape=self.card.state_shape,
            n_outputs=len(self.card.labels),
            max_batch=min(max_batch, int(profile_max)),
            device=str(self._device),
        )

    def infer(self, x: Array, h0: Array, c0: Array) -> tuple[Array, Array, Array]:
        """x [B, *input_shape], h0/c0 [L, B, Hd] float32 CUDA tensors -> (y [B, K], hn, cn)."""
        import torch

        batch = x.shape[0]
        if batch > self.spec.max_batch:
            raise EngineError(f"batch of {batch} exceeds the plan's max batch {self.spec.max_batch}")
        layers, hidden = self.spec.state_shape
        ins: dict[str, Any] = {"x": x.contiguous(), "h0": h0.contiguous(), "c0": c0.contiguous()}
        outs = {
            "y": torch.empty(batch, self.spec.n_outputs, device=self._device),
            "hn": torch.empty(layers, batch, hidden, device=self._device),
            "cn": torch.empty(layers, batch, hidden, device=self._device),
        }
        ctx = self._context
        for name, t in ins.items():
            ctx.set_input_shape(name, tuple(t.shape))
            ctx.set_tensor_address(name, t.data_ptr())
        for name, t in outs.items():
            ctx.set_tensor_address(name, t.data_ptr())
        stream = torch.cuda.current_stream(self._device)
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise EngineError(f"TensorRT execute_async_v3 failed on a batch of {batch}")
        stream.synchronize()
        return outs["y"], outs["hn"], outs["cn"]

    def close(self) -> None:
        self._context = None
        self._engine = None
