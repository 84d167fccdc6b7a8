"""The engine seam: one Protocol that the torch, ONNX Runtime and TensorRT backends implement.

An engine is stateless across calls: it computes one step for a batch of windows from whatever
state tensors it is handed (an LSTM's h and c, a GRU's h, any pairs the model contract names).
Per-entity state lives in the state store, which gathers rows by slot before the call and
scatters them after, on the engine's device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from stream_infer.model.contract import StateSpec, lstm_states

# numpy.ndarray on CPU backends; torch.Tensor on CUDA backends (state stays on the device).
Array = Any


@dataclass(frozen=True, slots=True)
class EngineSpec:
    input_shape: tuple[int, ...]  # per item, no batch: [W, F] or [C, H, W]
    state_shape: tuple[int, ...]  # (L, Hd) of an LSTM pair; () when ``states`` says otherwise
    n_outputs: int  # K
    max_batch: int  # largest batch the engine accepts in one call
    device: str  # "cpu" or "cuda:N": where x, the state tensors and y live
    states: tuple[StateSpec, ...] = ()  # the contract's state pairs (default: the LSTM pair)

    def __post_init__(self) -> None:
        if not self.states:
            if len(self.state_shape) != 2:
                raise ValueError("EngineSpec needs states, or state_shape (L, Hd) of an LSTM pair")
            object.__setattr__(self, "states", lstm_states(*self.state_shape))


@runtime_checkable
class Engine(Protocol):
    """``infer(x [B, *input_shape], *states) -> (y [B, K], *next_states)``, one state tensor per
    ``spec.states`` entry, in the graph's layout (an LSTM: ``infer(x, h0, c0) -> (y, hn, cn)``,
    ``[L, B, Hd]`` each).

    Inputs and outputs are float32 on ``spec.device``. ``infer`` must release the GIL while it
    computes so that polling and decoding overlap with it. Not thread-safe: one caller at a time.
    """

    spec: EngineSpec
    name: str

    def infer(self, x: Array, *states: Array) -> tuple[Array, ...]: ...

    def close(self) -> None: ...
