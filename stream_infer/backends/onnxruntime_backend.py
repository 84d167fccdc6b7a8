"""ONNX Runtime engine: ``model.onnx`` on the CPU (numpy in and out) or on CUDA (torch tensors
bound in place with I/O binding, so state never leaves the GPU).

``InferenceSession.run`` releases the GIL while it computes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from stream_infer.backends.base import Array, EngineSpec
from stream_infer.errors import EngineError, ModelError
from stream_infer.model.card import ONNX_FILE, load_card


def default_threads() -> int:
    """Half the cores (at least 1): the rest poll, decode and batch."""
    return max(1, (os.cpu_count() or 2) // 2)


class OrtEngine:
    name = "onnxruntime"

    def __init__(
        self,
        artifact: str | Path,
        device: str = "cpu",
        max_batch: int = 4096,
        intra_op_threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        artifact = Path(artifact)
        card = load_card(artifact)
        path = artifact / ONNX_FILE
        if not path.is_file():
            raise ModelError(f"{path}: missing (run `stream-infer export {artifact}`)")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = intra_op_threads or default_threads()
        opts.inter_op_num_threads = 1
        self._cuda = device.startswith("cuda")
        self._device_id = int(device.split(":")[1]) if ":" in device else 0
        if self._cuda:
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise EngineError(
                    f"device {device!r} asked for, but this onnxruntime has no CUDA "
                    "provider (install onnxruntime-gpu)"
                )
            providers: list[Any] = [("CUDAExecutionProvider", {"device_id": self._device_id})]
        else:
            providers = ["CPUExecutionProvider"]
        try:
            self._session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped exceptions
            raise ModelError(f"{path}: onnxruntime cannot load it: {exc}") from exc
        self.card = card
        self.spec = EngineSpec(
            input_shape=card.input_shape,
            state_shape=card.state_shape,
            n_outputs=len(card.labels),
            max_batch=max_batch,
            device=f"cuda:{self._device_id}" if self._cuda else "cpu",
            states=card.states,
        )
        self._x = card.input_name
        self._outputs = [card.output_name, *(st.output for st in self.spec.states)]
        self._inputs = [st.input for st in self.spec.states]

    def infer(self, x: Array, *states: Array) -> tuple[Array, ...]:
        """x [B, *input_shape] and one tensor per state pair (graph layout), float32 ->
        (y [B, K], *next states)."""
        batch = x.shape[0]
        if batch > self.spec.max_batch:
            raise EngineError(f"batch of {batch} exceeds max_batch {self.spec.max_batch}")
        if tuple(x.shape[1:]) != self.spec.input_shape:
            raise EngineError(
                f"x has shape {list(x.shape)}, expected [B, {', '.join(map(str, self.spec.input_shape))}]"
            )
        if len(states) != len(self._inputs):
            raise EngineError(f"{len(states)} state tensors given, the model takes {len(self._inputs)}")
        if self._cuda:
            return self._infer_cuda(x, states)
        feed = {self._x: np.ascontiguousarray(x, dtype=np.float32)}
        for name, st in zip(self._inputs, states, strict=True):
            feed[name] = np.ascontiguousarray(st, dtype=np.float32)
        try:
            return tuple(self._session.run(self._outputs, feed))
        except Exception as exc:
            raise EngineError(f"onnxruntime failed on a batch of {batch}: {exc}") from exc

    def _infer_cuda(self, x: Any, states: tuple[Any, ...]) -> tuple[Any, ...]:
        import torch

        batch = x.shape[0]
        dev = x.device
        outs = {self.card.output_name: torch.empty(batch, self.spec.n_outputs, device=dev)}
        for st in self.spec.states:
            outs[st.output] = torch.empty(*st.batched(batch), device=dev)
        ins = {self._x: x.contiguous()}  # kept alive until the run returns
        for name, t in zip(self._inputs, states, strict=True):
            ins[name] = t.contiguous()
        binding = self._session.io_binding()
        for name, t in ins.items():
            binding.bind_input(name, "cuda", self._device_id, np.float32, list(t.shape), t.data_ptr())
        for name, t in outs.items():
            binding.bind_output(name, "cuda", self._device_id, np.float32, list(t.shape), t.data_ptr())
        torch.cuda.current_stream(dev).synchronize()  # inputs written by torch are visible to ORT
        try:
            self._session.run_with_iobinding(binding)
        except Exception as exc:
            raise EngineError(f"onnxruntime (CUDA) failed on a batch of {batch}: {exc}") from exc
        return tuple(outs[name] for name in self._outputs)

    def close(self) -> None:
        self._session = None  # type: ignore[assignment]
