"""Prediction heads: what a row of the model's output means, and the fields it is published as.

The card says which head a model has (``head.kind``) and names each output column in
``labels``. Three kinds (``docs/formats.md`` has the documents):

* ``classification``: one logit per label; published as probabilities (softmax), the most
  probable label, optionally the top k and, on request, the raw logits.
* ``regression``: a named vector, e.g. a forecast of the next N values of some channels;
  published as ``values``: ``{name: value}``.
* ``anomaly``: one score per hop; published with the card's threshold and whether it is above.

Everything but the final per-prediction dict is computed once per batch with numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

from stream_infer.errors import ModelError

HeadKind = Literal["classification", "regression", "anomaly"]
HEAD_KINDS: tuple[str, ...] = get_args(HeadKind)
SCHEMA_VERSION = 2


@dataclass(frozen=True)
class Head:
    """A model's head and how its predictions are published."""

    kind: HeadKind = "classification"
    labels: tuple[str, ...] = ()  # one name per output column
    threshold: float = 0.0  # anomaly: a score above it is an anomaly
    top_k: int = 0  # classification: publish the k most probable labels
    logits: bool = False  # classification: publish the raw logits too
    schema_version: int = SCHEMA_VERSION  # 1: the original document (classification only)

    def __post_init__(self) -> None:
        if self.kind not in HEAD_KINDS:
            raise ModelError(f"head kind must be one of {list(HEAD_KINDS)}, not {self.kind!r}")
        if not self.labels:
            raise ModelError("the head names no output (labels is empty)")
        if len(set(self.labels)) != len(self.labels):
            dup = sorted({x for x in self.labels if self.labels.count(x) > 1})
            raise ModelError(f"the head names an output twice: {dup}")
        if self.kind == "anomaly" and len(self.labels) != 1:
            raise ModelError(f"an anomaly head has one output (its score), not {len(self.labels)}")
        if self.schema_version == 1 and self.kind != "classification":
            raise ModelError(f"output.schema_version 1 is for classification models; this one is {self.kind}")

    @property
    def width(self) -> int:
        """Output columns the graph must return per item."""
        return len(self.labels)

    def fields(self, y: np.ndarray) -> list[dict[str, Any]]:
        """The head's fields of each prediction document, for outputs ``y`` [B, width]."""
        y = np.asarray(y, dtype=np.float32).reshape(len(y), -1)
        if self.kind == "regression":
            names = self.labels
            return [
                {"head": "regression", "values": dict(zip(names, row, strict=True))} for row in y.tolist()
            ]
        if self.kind == "anomaly":
            t = self.threshold
            return [
                {"head": "anomaly", "score": s, "threshold": t, "anomaly": s > t} for s in y[:, 0].tolist()
            ]
        return self._classification(y)

    def _classification(self, y: np.ndarray) -> list[dict[str, Any]]:
        labels = np.asarray(self.labels, dtype=object)
        best = labels[y.argmax(axis=1)].tolist() if len(y) else []
        if self.schema_version == 1:
            return [{"scores": row, "label": lab} for row, lab in zip(y.tolist(), best, strict=True)]
        probs = softmax(y)
        docs = [
            {"head": "classification", "label": lab, "scores": row}
            for row, lab in zip(probs.tolist(), best, strict=True)
        ]
        if self.top_k:
            k = min(self.top_k, y.shape[1])
            # Ordered by the logits, as the label is: probabilities may tie in float32.
            order = np.argsort(-y, axis=1, kind="stable")[:, :k]
            top_p = np.take_along_axis(probs, order, axis=1).tolist()
            top_l = labels[order].tolist()
            for doc, ls, ps in zip(docs, top_l, top_p, strict=True):
                doc["top_k"] = [{"label": a, "score": b} for a, b in zip(ls, ps, strict=True)]
        if self.logits:
            for doc, row in zip(docs, y.tolist(), strict=True):
                doc["logits"] = row
        return docs


def softmax(y: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (exact enough for 1e-6 checks), returned as float32."""
    z = np.asarray(y, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return (z / z.sum(axis=1, keepdims=True)).astype(np.float32)


def head_kind(card_head: dict[str, Any]) -> HeadKind:
    """The kind a card's ``head`` mapping names (classification when it names none)."""
    kind = card_head.get("kind", "classification")
    if kind not in HEAD_KINDS:
        raise ModelError(f"head kind must be one of {list(HEAD_KINDS)}, not {kind!r}")
    return kind  # type: ignore[no-any-return]


def make_head(
    labels: list[str],
    card_head: dict[str, Any],
    *,
    top_k: int = 0,
    logits: bool = False,
    schema_version: int = 2,
) -> Head:
    """The head of a card (its ``labels`` and ``head`` fields) with the service's output settings."""
    kind = head_kind(card_head)
    threshold = card_head.get("threshold")
    if kind == "anomaly" and (
        not isinstance(threshold, int | float) or isinstance(threshold, bool) or not np.isfinite(threshold)
    ):
        raise ModelError(f"an anomaly head needs a finite number as head.threshold, not {threshold!r}")
    return Head(
        kind,
        tuple(str(x) for x in labels),
        float(threshold) if kind == "anomaly" else 0.0,  # type: ignore[arg-type]
        top_k if kind == "classification" else 0,
        logits and kind == "classification",
        schema_version,
    )
