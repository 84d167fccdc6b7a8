"""ONNX export of one LSTM step: ``model.onnx`` with inputs ``x, h0, c0`` and outputs ``y, hn, cn``.

Batch is dynamic: dim 0 of ``x``/``y`` and dim 1 of the states. The graph keeps the LSTM as one
ONNX ``LSTM`` node (TensorRT and ONNX Runtime both have a fused kernel for it); constants are
folded so the gate weights are plain initializers. Export steps, in order:

    load card + weights.pt -> torch.onnx.export(dynamo=True) -> fold constants
    -> onnx.checker -> require an LSTM node -> ONNX Runtime vs torch on a random batch -> save
"""

from __future__ import annotations

import contextlib
import io
import logging
import pickle
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from stream_infer.errors import ModelError
from stream_infer.model.card import ONNX_FILE, WEIGHTS_FILE, ModelCard, load_card
from stream_infer.model.integrity import seal
from stream_infer.model.net import CNNLSTM, build_model

logger = logging.getLogger(__name__)

INPUT_NAMES = ["x", "h0", "c0"]
OUTPUT_NAMES = ["y", "hn", "cn"]
PARITY_ATOL = 1e-4


@dataclass(frozen=True)
class ExportResult:
    path: Path
    exporter: str  # "dynamo" or "legacy" (the fallback)
    max_abs_diff: float  # ONNX Runtime vs torch on a random batch of 5
    ops: list[str]  # distinct op types in the graph


def load_model(artifact: str | Path, device: str = "cpu") -> tuple[ModelCard, CNNLSTM]:
    """Card and eval-mode module from an artifact; weights loaded with ``weights_only=True``."""
    artifact = Path(artifact)
    card = load_card(artifact)
    if card.state:
        raise ModelError(
            f"{artifact}: an imported graph has no weights.pt of stream-infer's CNN-LSTM: serve it "
            "with the onnxruntime backend"
        )
    model = build_model(card)
    path = artifact / WEIGHTS_FILE
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        model.load_state_dict(state)
    except FileNotFoundError as exc:
        raise ModelError(f"{path}: missing weights") from exc
    except pickle.UnpicklingError as exc:  # weights_only refused something that is not plain tensors
        raise ModelError(f"{path}: refused to load (not plain tensor weights): {exc}") from exc
    except (RuntimeError, OSError, ValueError) as exc:
        raise ModelError(
            f"{path}: weights do not load into the model of {artifact / 'model.json'}: {exc}"
        ) from exc
    return card, model.to(device).eval()


def example_inputs(
    card: ModelCard, batch: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random (x, h0, c0) of the right shapes; x on the scale of the training data."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *card.input_shape, generator=g)
    if card.norm_mean:
        shape = (-1, 1, 1) if card.kind == "frame" else (-1,)
        x = x * torch.tensor(card.norm_std).reshape(shape) + torch.tensor(card.norm_mean).reshape(shape)
    h0 = 0.5 * torch.randn(card.lstm_layers, batch, card.hidden_size, generator=g)
    c0 = 0.5 * torch.randn(card.lstm_layers, batch, card.hidden_size, generator=g)
    return x, h0, c0


def export_onnx(artifact: str | Path, opset: int = 18) -> ExportResult:
    """Write ``artifact/model.onnx`` from ``weights.pt`` and check it; returns what was done."""
    artifact = Path(artifact)
    card, model = load_model(artifact)
    args = example_inputs(card, batch=3)
    out = artifact / ONNX_FILE
    exporter = "dynamo"
    try:
        proto = _export_dynamo(model, args, opset)
    except Exception as exc:  # noqa: BLE001 - any exporter failure falls back, loudly
        logger.warning("dynamo ONNX export failed (%s); falling back to the legacy exporter", exc)
        exporter = "legacy"
        proto = _export_legacy(model, args, opset)
    proto = _fold_constants(proto)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"{out}: exported graph fails onnx.checker: {exc}") from exc
    ops = sorted({n.op_type for n in proto.graph.node})
    if "LSTM" not in ops:
        raise ModelError(f"{out}: exported graph has no LSTM node (ops: {', '.join(ops)})")
    tmp = out.with_suffix(".onnx.tmp")
    onnx.save_model(proto, str(tmp))
    diff = _ort_vs_torch(tmp, model, card)
    if diff > PARITY_ATOL:
        tmp.unlink()
        raise ModelError(f"{out}: ONNX Runtime differs from torch by {diff:.3g} (> {PARITY_ATOL})")
    tmp.replace(out)
    seal(artifact)
    logger.info("exported %s (%s exporter, ort-vs-torch %.2g)", out, exporter, diff)
    return ExportResult(out, exporter, diff, ops)


def _export_dynamo(model: CNNLSTM, args: tuple[torch.Tensor, ...], opset: int) -> onnx.ModelProto:
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    with _quiet():
        program = torch.onnx.export(
            model,
            args,
            dynamo=True,
            opset_version=opset,
            input_names=INPUT_NAMES,
            output_names=OUTPUT_NAMES,
            dynamic_shapes={"x": {0: batch}, "h0": {1: batch}, "c0": {1: batch}},
            verbose=False,
        )
    assert program is not None
    program.optimize()
    return program.model_proto


def _export_legacy(model: CNNLSTM, args: tuple[torch.Tensor, ...], opset: int) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        path = Path(tmp) / ONNX_FILE
        torch.onnx.export(
            model,
            args,
            path,
            dynamo=False,
            opset_version=opset,
            input_names=INPUT_NAMES,
            output_names=OUTPUT_NAMES,
            do_constant_folding=True,
            dynamic_axes={
                "x": {0: "batch"},
                "h0": {1: "batch"},
                "c0": {1: "batch"},
                "y": {0: "batch"},
                "hn": {1: "batch"},
                "cn": {1: "batch"},
            },
        )
        return onnx.load(str(path))


def _fold_constants(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Fold the Slice/Concat chains the exporter leaves on the LSTM gate weights."""
    import onnxscript.optimizer

    folded = onnxscript.optimizer.optimize(proto, input_size_limit=1 << 22, output_size_limit=1 << 24)
    assert isinstance(folded, onnx.ModelProto)
    return folded


def _ort_vs_torch(path: Path, model: CNNLSTM, card: ModelCard) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x, h0, c0 = example_inputs(card, batch=5, seed=1)
    got = session.run(OUTPUT_NAMES, {"x": x.numpy(), "h0": h0.numpy(), "c0": c0.numpy()})
    with torch.inference_mode():
        want = model(x, h0, c0)
    return max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want, strict=True))


@contextlib.contextmanager
def _quiet():  # type: ignore[no-untyped-def]
    """The exporter prints progress and FutureWarnings; keep them out of the user's terminal."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        level = logging.getLogger("torch").level
        logging.getLogger("torch").setLevel(logging.ERROR)
        try:
            yield
        finally:
            logging.getLogger("torch").setLevel(level)
