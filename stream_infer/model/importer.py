"""Bring your own model: an ONNX graph with explicit state, checked against the model contract
(docs/model-contract.md) and written as an artifact the service serves like its own.

``import_onnx`` reads the graph's inputs and outputs with ONNX Runtime (no other dependency),
checks every name, type and shape the card declares, then runs it once on zeros for a batch of
three and checks what comes out. Each breach is a ``ModelError`` of one line. ``export_module``
exports a ``torch.nn.Module`` whose ``forward(x, *states)`` returns ``(y, *next_states)`` and
imports the result.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from stream_infer.errors import ModelError
from stream_infer.model.card import CARD_FILE, ONNX_FILE, ModelCard, load_card

_CARD_KEYS = {
    "name", "version", "kind", "window", "hop", "sample_shape", "labels", "input", "output", "state",
    "channels", "sample_rate_hz", "training", "accuracy", "head", "outputs",
}  # fmt: skip
_REQUIRED = ("name", "kind", "window", "hop", "sample_shape", "labels", "state")
_DRY_BATCH = 3


def read_card(path: str | Path) -> dict[str, Any]:
    """The card of an import, from YAML (or JSON): the keys of ``_CARD_KEYS``."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ModelError(f"{path}: cannot read the card: {exc}") from exc
    if not isinstance(doc, dict):
        raise ModelError(f"{path}: the card must be a mapping of keys to values")
    return doc


def import_onnx(model: str | Path, card: dict[str, Any], out: str | Path) -> ModelCard:
    """Check ``model`` against ``card`` and write the artifact to ``out``."""
    model, out = Path(model), Path(out)
    c = _card(card)
    session = _session(model)
    _check_graph(session, c, model)
    _dry_run(session, c, model)
    _check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Beside ``out``, so the final rename stays on one file system and is atomic.
    tmp = Path(tempfile.mkdtemp(prefix=".import-", dir=out.parent))
    try:
        shutil.copyfile(model, tmp / ONNX_FILE)
        c.save(tmp)
        from stream_infer.model.integrity import seal

        seal(tmp)
        load_card(tmp)  # the written card reads back
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return load_card(out)


def _check_out(out: Path) -> None:
    """``out`` may be new or an earlier artifact (replaced); never another kind of folder."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / CARD_FILE).exists())):
        raise ModelError(f"{out}: exists and is not a model artifact; refusing to overwrite it")


def export_module(module: Any, card: dict[str, Any], out: str | Path, opset: int = 17) -> ModelCard:
    """Export ``module`` (``forward(x, *states) -> (y, *next_states)``, float32) to ONNX with a
    dynamic batch axis on every tensor, then ``import_onnx`` it."""
    import torch

    c = _card(card)
    module = module.eval()
    batch = 2
    x = torch.zeros(batch, *c.input_shape)
    states = tuple(torch.zeros(*s.batched(batch)) for s in c.states)
    dynamic = {c.input_name: {0: "batch"}, c.output_name: {0: "batch"}}
    for s in c.states:
        dynamic[s.input] = {s.batch_axis: "batch"}
        dynamic[s.output] = {s.batch_axis: "batch"}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # The RNN batch-size warning assumes an implicit initial state; here every state is an input.
        warnings.filterwarnings("ignore", message="Exporting a model to ONNX with a batch_size")
        path = Path(tmp) / ONNX_FILE
        try:
            torch.onnx.export(
                module,
                (x, *states),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[c.input_name, *(s.input for s in c.states)],
                output_names=[c.output_name, *(s.output for s in c.states)],
                dynamic_axes=dynamic,
            )
        except Exception as exc:
            raise ModelError(f"the module does not export to ONNX: {type(exc).__name__}: {exc}") from exc
        return import_onnx(path, card, out)


# --- checks -----------------------------------------------------------------------------------


def _card(doc: dict[str, Any]) -> ModelCard:
    unknown = sorted(set(doc) - _CARD_KEYS)
    if unknown:
        raise ModelError(f"card: unknown keys {unknown} (known: {', '.join(sorted(_CARD_KEYS))})")
    if "outputs" in doc:  # a regression or anomaly head names outputs, not class labels
        if "labels" in doc:
            raise ModelError("card: give labels (classes) or outputs (names of the head's values), not both")
        doc = {**doc, "labels": doc["outputs"]}
    missing = [k for k in _REQUIRED if k not in doc]
    if missing:
        raise ModelError(f"card: missing {', '.join(missing)}")
    state = doc["state"]
    if not isinstance(state, list) or not state:
        raise ModelError("card: state must list at least one {input, output, shape, batch_axis} pair")
    for i, s in enumerate(state):
        if not isinstance(s, dict) or not {"input", "output", "shape"} <= set(s):
            raise ModelError(f"card: state[{i}] needs input, output and shape (and batch_axis, default 0)")
    names = [doc.get("input", "x"), doc.get("output", "y")] + [
        s[k] for s in state for k in ("input", "output")
    ]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ModelError(f"card: names used twice: {dup}")
    fields = {
        "name": str(doc["name"]),
        "version": str(doc.get("version", "1")),
        "kind": doc["kind"],
        "window": int(doc["window"]),
        "hop": int(doc["hop"]),
        "sample_shape": [int(d) for d in doc["sample_shape"]],
        "labels": [str(x) for x in doc["labels"]],
        "input_name": str(doc.get("input", "x")),
        "output_name": str(doc.get("output", "y")),
        "state": [
            {
                "input": str(s["input"]),
                "output": str(s["output"]),
                "shape": [int(d) for d in s["shape"]],
                "batch_axis": int(s.get("batch_axis", 0)),
            }
            for s in state
        ],  # fmt: skip
        "channels": [str(x) for x in doc.get("channels", [])],
        "sample_rate_hz": doc.get("sample_rate_hz"),
        "training": dict(doc.get("training", {})),
        "accuracy": dict(doc.get("accuracy", {})),
        "head": _head(doc.get("head", {})),
    }
    if not fields["labels"]:
        raise ModelError("card: labels (or outputs) must name at least one output of the head")
    with tempfile.TemporaryDirectory() as tmp:
        ModelCard(**fields).save(Path(tmp))
        return load_card(tmp)  # the card's own rules (kind, window, hop, state shapes)


def _head(head: Any) -> dict[str, Any]:
    """``head: classification`` or a mapping with ``kind`` (and the kind's own keys)."""
    if isinstance(head, str):
        head = {"kind": head}
    if not isinstance(head, dict):
        raise ModelError(f"card: head must be a kind or a mapping with kind, not {head!r}")
    known = {"kind", "threshold", "targets", "horizon", "season"}
    unknown = sorted(set(head) - known)
    if unknown:
        raise ModelError(f"card: unknown head keys {unknown} (known: {', '.join(sorted(known))})")
    return dict(head)


def _session(model: Path) -> Any:
    import onnxruntime as ort

    if not model.is_file():
        raise ModelError(f"{model}: no such file")
    try:
        return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(
            f"{model}: not an ONNX graph that onnxruntime loads: {str(exc).splitlines()[0]}"
        ) from exc


def _dims(shape: list[Any]) -> list[int | None]:
    """Fixed dimensions as ints, symbolic or unknown ones as None."""
    return [d if isinstance(d, int) and d > 0 else None for d in shape]


def _check_graph(session: Any, c: ModelCard, model: Path) -> None:
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    want_in = {c.input_name: (c.input_shape, 0), **{s.input: (s.shape, s.batch_axis) for s in c.states}}
    want_out = {c.output_name: ((len(c.labels),), 0), **{s.output: (s.shape, s.batch_axis) for s in c.states}}
    for name in want_in:
        if name not in inputs:
            raise ModelError(
                f"{model}: the card's input {name!r} is not a graph input (inputs: {sorted(inputs)})"
            )
    for name in want_out:
        if name not in outputs:
            raise ModelError(
                f"{model}: the card's output {name!r} is not a graph output (outputs: {sorted(outputs)})"
            )
    extra = sorted(set(inputs) - set(want_in))
    if extra:
        raise ModelError(f"{model}: graph inputs {extra} are not in the card: the service cannot feed them")
    for kind, table, want in (("input", inputs, want_in), ("output", outputs, want_out)):
        for name, (shape, axis) in want.items():
            arg = table[name]
            if arg.type != "tensor(float)":
                raise ModelError(
                    f"{model}: {kind} {name!r} is {arg.type}, the contract takes float32 tensors"
                )
            dims = _dims(list(arg.shape))
            expect: list[int | None] = list(shape)
            expect.insert(axis, None)
            if len(dims) != len(expect):
                raise ModelError(
                    f"{model}: {kind} {name!r} has rank {len(dims)}, the card says {_show(expect)}"
                )
            if dims[axis] is not None:
                raise ModelError(
                    f"{model}: {kind} {name!r} has a fixed batch dimension {dims[axis]} (axis {axis}): "
                    "the batch axis must be dynamic"
                )
            for i, (got, exp) in enumerate(zip(dims, expect, strict=True)):
                if exp is not None and got is not None and got != exp:
                    raise ModelError(
                        f"{model}: {kind} {name!r} is {_show(dims)}, the card says {_show(expect)} (axis {i})"
                    )


def _dry_run(session: Any, c: ModelCard, model: Path) -> None:
    feed = {c.input_name: np.zeros((_DRY_BATCH, *c.input_shape), np.float32)}
    rng = np.random.default_rng(0)
    for s in c.states:
        feed[s.input] = rng.normal(scale=0.1, size=s.batched(_DRY_BATCH)).astype(np.float32)
    names = [c.output_name, *(s.output for s in c.states)]
    try:
        got = session.run(names, feed)
    except Exception as exc:
        raise ModelError(
            f"{model}: the dry run on zeros (batch {_DRY_BATCH}) failed: {str(exc).splitlines()[0]}"
        ) from exc
    want: list[tuple[int, ...]] = [(_DRY_BATCH, len(c.labels)), *(s.batched(_DRY_BATCH) for s in c.states)]
    for name, arr, shape in zip(names, got, want, strict=True):
        if tuple(arr.shape) != shape:
            raise ModelError(
                f"{model}: the dry run gave {name!r} of shape {list(arr.shape)}, expected {list(shape)}"
            )
        if not np.isfinite(arr).all():
            raise ModelError(f"{model}: the dry run gave non-finite values in {name!r}")


def _show(dims: Sequence[int | None]) -> str:
    return "[" + ", ".join("B" if d is None else str(d) for d in dims) + "]"


__all__ = ["CARD_FILE", "export_module", "import_onnx", "read_card"]
