"""Engine backends. Each is imported only when chosen, so torch and tensorrt stay off the
start-up path of a service that does not use them."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from stream_infer.backends.base import Engine, EngineSpec
from stream_infer.errors import ConfigError, EngineError, ModelError, StreamInferError

BackendName = Literal["onnxruntime", "torch", "tensorrt"]

__all__ = ["BackendName", "Engine", "EngineSpec", "dry_run", "load_engine", "open_engine"]


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


def dry_run(engine: Engine) -> np.ndarray:
    """One inference on zeros (batch 1, zero state): proves at start that the engine loads and
    runs, not at the first window. Returns ``y`` [1, K] on the host; ``EngineError`` if it fails
    or gives non-finite outputs."""
    spec = engine.spec
    x = np.zeros((1, *spec.input_shape), np.float32)
    states = [np.zeros(st.batched(1), np.float32) for st in spec.states]
    try:
        if spec.device.startswith("cuda"):
            import torch

            yt, *_ = engine.infer(*(torch.from_numpy(a).to(spec.device) for a in (x, *states)))
            y = yt.float().cpu().numpy()
        else:
            y, *_ = engine.infer(x, *states)
    except StreamInferError:
        raise
    except Exception as exc:
        raise EngineError(f"the engine failed on a zero input: {type(exc).__name__}: {exc}") from exc
    y = np.asarray(y)
    if y.shape != (1, spec.n_outputs) or not np.isfinite(y).all():
        raise EngineError(
            f"the engine gave {y.shape} outputs (want (1, {spec.n_outputs})), or non-finite ones"
        )
    return y


def open_engine(
    artifact: str | Path,
    backend: BackendName,
    device: str,
    max_batch: int,
    card_sha256: str | None = None,
) -> Engine:
    """Verify the artifact (the pinned card digest, the digests of the files this backend
    loads), ``load_engine``, then ``dry_run``; a model file that cannot be opened or verified
    is a ``ModelError``."""
    from stream_infer.model.card import ONNX_FILE, WEIGHTS_FILE, load_card
    from stream_infer.model.integrity import verify

    if backend != "onnxruntime" and load_card(artifact).state:
        raise ModelError(
            f"{artifact}: an imported graph (state pairs in its card): the {backend} backend serves "
            "the CNN-LSTM's (h, c) contract only; serve it with onnxruntime"
        )
    verify(artifact, (WEIGHTS_FILE,) if backend == "torch" else (ONNX_FILE,), card_sha256)
    try:
        engine = load_engine(artifact, backend, device, max_batch=max_batch)
    except StreamInferError:
        raise
    except Exception as exc:
        raise ModelError(
            f"{artifact}: cannot open the {backend} engine: {type(exc).__name__}: {exc}"
        ) from exc
    dry_run(engine)
    return engine
