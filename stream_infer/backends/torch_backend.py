"""PyTorch engine: the eager module from ``weights.pt`` (loaded with ``weights_only=True``).

On the CPU it takes and returns numpy arrays; on CUDA it takes and returns torch tensors on the
device. With ``cuda_graphs=True`` (CUDA only) each batch is padded up to a power-of-two bucket
and replayed from a CUDA graph captured for that bucket on first use: no per-kernel launch
overhead for the many small ops of the encoder. Torch releases the GIL inside its kernels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from stream_infer.backends.base import Array, EngineSpec
from stream_infer.errors import EngineError
from stream_infer.model.export import load_model


class _GraphBucket:
    """Static input/output tensors and the CUDA graph captured for one batch size."""

    def __init__(self, model: torch.nn.Module, batch: int, spec: EngineSpec, device: torch.device) -> None:
        layers, hidden = spec.state_shape
        self.x = torch.zeros(batch, *spec.input_shape, device=device)
        self.h = torch.zeros(layers, batch, hidden, device=device)
        self.c = torch.zeros(layers, batch, hidden, device=device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(3):  # warm-up on a side stream, as capture requires
                model(self.x, self.h, self.c)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.inference_mode():
            self.y, self.hn, self.cn = model(self.x, self.h, self.c)

    def run(self, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor) -> tuple[torch.Tensor, ...]:
        b = x.shape[0]
        self.x[:b].copy_(x)
        self.h[:, :b].copy_(h0)
        self.c[:, :b].copy_(c0)
        self.graph.replay()
        # clone: the static outputs are overwritten by the next replay
        return self.y[:b].clone(), self.hn[:, :b].clone(), self.cn[:, :b].clone()


class TorchEngine:
    name = "torch"

    def __init__(
        self, artifact: str | Path, device: str = "cpu", max_batch: int = 4096, cuda_graphs: bool = False
    ) -> None:
        self._device = torch.device(device)
        if self._device.type == "cuda" and not torch.cuda.is_available():
            raise EngineError(f"device {device!r} asked for, but torch sees no CUDA device")
        self.card, self._model = load_model(artifact, device=device)
        self._cuda = self._device.type == "cuda"
        self._graphs = cuda_graphs and self._cuda
        self._buckets: dict[int, _GraphBucket] = {}
        self.spec = EngineSpec(
            input_shape=self.card.input_shape,
            state_shape=self.card.state_shape,
            n_outputs=len(self.card.labels),
            max_batch=max_batch,
            device=str(self._device),
        )

    def infer(self, x: Array, h0: Array, c0: Array) -> tuple[Array, Array, Array]:
        """x [B, *input_shape], h0/c0 [L, B, Hd] float32 -> (y [B, K], hn, cn): numpy on the
        CPU, tensors on ``spec.device`` for CUDA."""
        batch = x.shape[0]
        if batch > self.spec.max_batch:
            raise EngineError(f"batch of {batch} exceeds max_batch {self.spec.max_batch}")
        if tuple(x.shape[1:]) != self.spec.input_shape:
            raise EngineError(
                f"x has shape {list(x.shape)}, expected [B, {', '.join(map(str, self.spec.input_shape))}]"
            )
        try:
            if not self._cuda:
                with torch.inference_mode():
                    y, hn, cn = self._model(
                        torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                        torch.from_numpy(np.ascontiguousarray(h0, dtype=np.float32)),
                        torch.from_numpy(np.ascontiguousarray(c0, dtype=np.float32)),
                    )
                return y.numpy(), hn.numpy(), cn.numpy()
            if self._graphs:
                return self._bucket(batch).run(x, h0, c0)  # type: ignore[return-value]
            with torch.inference_mode():
                out: tuple[Any, Any, Any] = self._model(x, h0, c0)
            return out
        except RuntimeError as exc:
            raise EngineError(f"torch failed on a batch of {batch}: {exc}") from exc

    def _bucket(self, batch: int) -> _GraphBucket:
        size = min(1 << max(0, (batch - 1).bit_length()), self.spec.max_batch)
        if size not in self._buckets:
            self._buckets[size] = _GraphBucket(self._model, size, self.spec, self._device)
        return self._buckets[size]

    def close(self) -> None:
        self._buckets.clear()
