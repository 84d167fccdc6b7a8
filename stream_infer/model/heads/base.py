"""What a head is (``HeadType``, registered in ``stream_infer.model.heads.HEADS``) and the
``Head`` of one served model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream_infer.errors import ModelError

HeadKind = str  # a key of ``stream_infer.model.heads.HEADS``
SCHEMA_VERSION = 2


@dataclass(frozen=True)
class HeadType:
    """One kind of head: how a batch of outputs becomes the head's fields of each document."""

    kind: str
    fields: Callable[[Head, np.ndarray], list[dict[str, Any]]]  # (head, y [B, width]) -> fields
    # Checks of a head of this kind (e.g. its number of outputs); raise ModelError.
    check: Callable[[Head], None] | None = None
    # The kind's own settings read from the card's ``head`` mapping (e.g. a threshold), as
    # ``Head`` keyword arguments; raise ModelError.
    from_card: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    top_k: bool = False  # output.top_k and output.logits apply
    schema_v1: bool = False  # can be published in the original (v1) document


def _registered() -> dict[str, HeadType]:
    from stream_infer.model.heads import HEADS  # the package imports this module first

    return HEADS


def head_type(kind: str) -> HeadType:
    heads = _registered()
    if kind not in heads:
        raise ModelError(f"head kind must be one of {list(heads)}, not {kind!r}")
    return heads[kind]


@dataclass(frozen=True)
class Head:
    """A model's head and how its predictions are published."""

    kind: HeadKind = "classification"
    labels: tuple[str, ...] = ()  # one name per output column
    threshold: float = 0.0  # anomaly: a score above it is an anomaly
    top_k: int = 0  # classification: publish the k most probable labels
    logits: bool = False  # classification: publish the raw logits too
    schema_version: int = SCHEMA_VERSION  # 1: the original document (classification only)
    type: HeadType = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "type", head_type(self.kind))
        if not self.labels:
            raise ModelError("the head names no output (labels is empty)")
        if len(set(self.labels)) != len(self.labels):
            dup = sorted({x for x in self.labels if self.labels.count(x) > 1})
            raise ModelError(f"the head names an output twice: {dup}")
        if self.type.check is not None:
            self.type.check(self)
        if self.schema_version == 1 and not self.type.schema_v1:
            raise ModelError(f"output.schema_version 1 is for classification models; this one is {self.kind}")

    @property
    def width(self) -> int:
        """Output columns the graph must return per item."""
        return len(self.labels)

    def fields(self, y: np.ndarray) -> list[dict[str, Any]]:
        """The head's fields of each prediction document, for outputs ``y`` [B, width]."""
        y = np.asarray(y, dtype=np.float32).reshape(len(y), -1)
        return self.type.fields(self, y)
