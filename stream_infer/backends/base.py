"""The engine seam: one Protocol that the torch, ONNX Runtime and TensorRT backends implement.

An engine is stateless across calls: it computes one LSTM step for a batch of windows from
whatever (h, c) rows it is handed. Per-entity state lives in the state store, which gathers rows
by slot before the call and scatters them after, on the engine's device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

# numpy.ndarray on CPU backends; torch.Tensor on CUDA backends (state stays on the device).
Array = Any


@dataclass(frozen=True, slots=True)
class EngineSpec:
    input_shape: tuple[int, ...]  # per item, no batch: [W, F] or [C, H, W]
    state_shape: tuple[int, int]  # (L, Hd)
    n_outputs: int  # K
    max_batch: int  # largest batch the engine accepts in one call
    device: str  # "cpu" or "cuda:N": where x, h, c and y live


@runtime_checkable
class Engine(Protocol):
    """``infer(x [B, *input_shape], h0 [L, B, Hd], c0 [L, B, Hd]) -> (y [B, K], hn, cn)``.

    Inputs and outputs are float32 on ``spec.device``. ``infer`` must release the GIL while it
    computes so that polling and decoding overlap with it. Not thread-safe: one caller at a time.
    """

    spec: EngineSpec
    name: str

    def infer(self, x: Array, h0: Array, c0: Array) -> tuple[Array, Array, Array]: ...

    def close(self) -> None: ...
