"""Engine backends. Each is imported only when chosen, so torch and tensorrt stay off the
start-up path of a service that does not use them."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from stream_infer.backends.base import Engine, EngineSpec
from stream_infer.errors import ConfigError

BackendName = Literal["onnxruntime", "torch", "tensorrt"]

__all__ = ["BackendName", "Engine", "EngineSpec", "load_engine"]


def load_engine(
    artifact: str | Path, backend: BackendName = "onnxruntime", device: str = "cpu", max_batch: int = 4096
) -> Engine:
    """Open the engine for a model artifact directory on ``device`` ("cpu" or "cuda:N")."""
    artifact = Path(artifact)
    if backend == "onnxruntime":
        from stream_infer.backends.onnxruntime_backend import OrtEngine

        return OrtEngine(artifact, device=device, max_batch=max_batch)
    if backend == "torch":
        from stream_infer.backends.torch_backend import TorchEngine

        return TorchEngine(artifact, device=device, max_batch=max_batch)
    if backend == "tensorrt":
        from stream_infer.backends.tensorrt_backend import TrtEngine

        return TrtEngine(artifact, device=device, max_batch=max_batch)
    raise ConfigError(f"unknown backend {backend!r}: choose onnxruntime, torch or tensorrt")
