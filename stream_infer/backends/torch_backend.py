"""PyTorch engine: the eager module from ``weights.pt`` (loaded with ``weights_only=True``), or
any module in a card's state contract (``TorchEngine.from_module``).

On the CPU it takes numpy arrays or torch tensors and returns numpy arrays; on CUDA it takes and
returns torch tensors on the device. With ``cuda_graphs=True`` (CUDA only: ignored on the CPU)
each batch is padded up to a power-of-two bucket and replayed from a CUDA graph captured for that
bucket on first use: no per-kernel launch overhead for the many small ops of the encoder. Every
state tensor is in the graph's layout, its batch axis where the contract says (``[L, B, Hd]``
for an LSTM's h and c, ``[B, ...]`` for a batch-first one). Torch releases the GIL inside its
kernels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from stream_infer.backends.base import Array, EngineSpec
from stream_infer.errors import EngineError
from stream_infer.model.card import ModelCard
from stream_infer.model.export import load_model


class _GraphBucket:
    """Static input/output tensors and the CUDA graph captured for one batch size."""

    def __init__(self, model: torch.nn.Module, batch: int, spec: EngineSpec, device: torch.device) -> None:
        self.spec = spec
        self.x = torch.zeros(batch, *spec.input_shape, device=device)
        self.states = [torch.zeros(*s.batched(batch), device=device) for s in spec.states]
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(3):  # warm-up on a side stream, as capture requires
                model(self.x, *self.states)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.inference_mode():
            self.y, *self.next = model(self.x, *self.states)

    def run(self, x: torch.Tensor, *states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        b = x.shape[0]
        self.x[:b].copy_(x)
        for static, s, v in zip(self.states, self.spec.states, states, strict=True):
            static.narrow(s.batch_axis, 0, b).copy_(v)
        self.graph.replay()
        # clone: the static outputs are overwritten by the next replay
        return (
            self.y[:b].clone(),
            *(o.narrow(s.batch_axis, 0, b).clone() for o, s in zip(self.next, self.spec.states, strict=True)),
        )


def _cpu_tensor(a: Any) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.to("cpu", torch.float32).contiguous()
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _check_device(device: str) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EngineError(f"device {device!r} asked for, but torch sees no CUDA device")
    return dev


class TorchEngine:
    name = "torch"

    def __init__(
        self, artifact: str | Path, device: str = "cpu", max_batch: int = 4096, cuda_graphs: bool = False
    ) -> None:
        _check_device(device)
        card, model = load_model(artifact, device=device)
        self._setup(card, model, device, max_batch, cuda_graphs)

    @classmethod
    def from_module(
        cls,
        module: torch.nn.Module,
        card: ModelCard,
        device: str = "cpu",
        max_batch: int = 4096,
        cuda_graphs: bool = False,
    ) -> TorchEngine:
        """An engine over ``module`` (``forward(x, *states) -> (y, *next_states)``, float32) in
        ``card``'s state contract (``card.states``: any pairs, any batch axis)."""
        dev = _check_device(device)
        engine = cls.__new__(cls)
        engine._setup(card, module.to(dev).eval(), device, max_batch, cuda_graphs)
        return engine

    def _setup(
        self, card: ModelCard, model: torch.nn.Module, device: str, max_batch: int, cuda_graphs: bool
    ) -> None:
        self._device = torch.device(device)
        self.card, self._model = card, model
        self._cuda = self._device.type == "cuda"
        self._graphs = cuda_graphs and self._cuda
        self._buckets: dict[int, _GraphBucket] = {}
        self.spec = EngineSpec(
            input_shape=card.input_shape,
            state_shape=card.state_shape,
            n_outputs=len(card.labels),
            max_batch=max_batch,
            device=str(self._device),
            states=card.states,
        )

    def infer(self, x: Array, *states: Array) -> tuple[Array, ...]:
        """x [B, *input_shape] and one tensor per state pair (graph layout; h0/c0 [L, B, Hd] for
        the CNN-LSTM), float32 -> (y [B, K], *next states): numpy on the CPU (from numpy or
        torch inputs), tensors on ``spec.device`` for CUDA."""
        batch = x.shape[0]
        if batch > self.spec.max_batch:
            raise EngineError(f"batch of {batch} exceeds max_batch {self.spec.max_batch}")
        if tuple(x.shape[1:]) != self.spec.input_shape:
            raise EngineError(
                f"x has shape {list(x.shape)}, expected [B, {', '.join(map(str, self.spec.input_shape))}]"
            )
        if len(states) != len(self.spec.states):
            raise EngineError(f"{len(states)} state tensors given, the model takes {len(self.spec.states)}")
        try:
            if not self._cuda:
                with torch.inference_mode():
                    outs = self._model(_cpu_tensor(x), *(_cpu_tensor(s) for s in states))
                return tuple(o.numpy() for o in outs)
            if self._graphs:
                return self._bucket(batch).run(x, *states)
            with torch.inference_mode():
                out: tuple[Any, ...] = tuple(self._model(x, *states))
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
