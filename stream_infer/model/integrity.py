"""Artifacts that cannot be swapped silently: the card records the SHA-256 of each model file
(``seal``, run by ``stream-infer export`` and so by ``train``), the service checks the files it
loads against it, and a deployment may pin the digest of the card itself
(``model.card_sha256``): then neither the card nor, through it, any model file can change
without the service refusing to start, in one line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path

from stream_infer.errors import ModelError
from stream_infer.model.card import CARD_FILE, ONNX_FILE, WEIGHTS_FILE, ModelCard, load_card

logger = logging.getLogger(__name__)

SEALED_FILES = (ONNX_FILE, WEIGHTS_FILE)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def seal(directory: str | Path) -> ModelCard:
    """Record the SHA-256 of the artifact's model files in its card (rewritten)."""
    directory = Path(directory)
    card = load_card(directory)
    files = {n: sha256_file(directory / n) for n in SEALED_FILES if (directory / n).is_file()}
    sealed = dataclasses.replace(card, files=files)
    sealed.save(directory)
    return sealed


def card_sha256(directory: str | Path) -> str:
    return sha256_file(Path(directory) / CARD_FILE)


def verify(directory: str | Path, names: tuple[str, ...], pinned_card_sha256: str | None = None) -> None:
    """Refuse (``ModelError``, one line) a card whose digest is not the pinned one, or a model
    file among ``names`` whose digest is not the card's. A card without digests (an artifact
    made before they were recorded) is served with a warning, unless the card is pinned."""
    directory = Path(directory)
    if pinned_card_sha256 is not None:
        got = card_sha256(directory)
        if got != pinned_card_sha256.lower():
            raise ModelError(
                f"{directory / CARD_FILE}: sha256 {got} is not the pinned model.card_sha256 "
                f"{pinned_card_sha256}: refusing a changed or swapped artifact"
            )
    card = load_card(directory)
    if not card.files and any((directory / n).is_file() for n in names):
        if pinned_card_sha256 is not None:
            raise ModelError(f"{directory / CARD_FILE}: the pinned card records no file digests")
        logger.warning(
            "%s records no file digests (made before they were recorded): the model files are not "
            "verified; `stream-infer export %s` records them",
            directory / CARD_FILE,
            directory,
        )
        return
    if not card.files:
        return  # nothing here to verify: the backend names the missing file
    for name in names:
        want = card.files.get(name)
        path = directory / name
        if want is None:
            raise ModelError(f"{path}: not in the card's file digests: refusing an unrecorded model file")
        if not path.is_file():
            continue  # the backend names the missing file itself
        got = sha256_file(path)
        if got != want:
            raise ModelError(
                f"{path}: sha256 {got} is not the card's {want}: refusing a changed or swapped model file"
            )
