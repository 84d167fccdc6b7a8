"""The default models, trained on first use: BasicMotions (sensor) and LFW (frame).

``ensure_model(kind, root)`` is what the demo and the test fixtures call: it returns
``root/<name>`` holding a complete artifact, training and exporting it only if one is not
already there. Training runs in a temporary sibling directory renamed into place at the end, so
an interrupted run never leaves a half-written artifact that looks valid.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Literal

from stream_infer.errors import StreamInferError
from stream_infer.model.card import ONNX_FILE, WEIGHTS_FILE, load_card

logger = logging.getLogger(__name__)

DEFAULT_NAMES = {"sensor": "basicmotions-cnnlstm", "frame": "lfw-cnnlstm"}


def ensure_model(kind: Literal["sensor", "frame"], root: str | Path, progress: bool = False) -> Path:
    """Directory of the default ``kind`` model under ``root``, trained + exported if missing."""
    if kind not in DEFAULT_NAMES:
        raise ValueError(f"kind must be 'sensor' or 'frame', not {kind!r}")
    root = Path(root)
    target = root / DEFAULT_NAMES[kind]
    if is_artifact(target, kind):
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
    try:
        _train_default(kind, tmp, progress)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def is_artifact(directory: Path, kind: str | None = None) -> bool:
    """True when ``directory`` has a readable card (of ``kind``), weights and an ONNX graph."""
    try:
        card = load_card(directory)
    except StreamInferError:
        return False
    if kind is not None and card.kind != kind:
        return False
    return (directory / WEIGHTS_FILE).is_file() and (directory / ONNX_FILE).is_file()


def _train_default(kind: str, out_dir: Path, progress: bool) -> None:
    from stream_infer.model import datasets, train

    if kind == "sensor":
        train.train_sensor(datasets.basic_motions(), out_dir, name=DEFAULT_NAMES[kind], progress=progress)
    else:
        train.train_frames(datasets.lfw_frames(), out_dir, name=DEFAULT_NAMES[kind], progress=progress)
