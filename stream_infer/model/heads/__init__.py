"""Prediction heads: what a row of the model's output means, and the fields it is published as.

The card says which head a model has (``head.kind``) and names each output column in
``labels``. One module per kind, registered in ``HEADS`` (``docs/formats.md`` has the
documents):

* ``classification``: one logit per label; published as probabilities (softmax), the most
  probable label, optionally the top k and, on request, the raw logits.
* ``regression``: a named vector, e.g. a forecast of the next N values of some channels;
  published as ``values``: ``{name: value}``.
* ``anomaly``: one score per hop; published with the card's threshold and whether it is above.

Adding a kind is one module that defines a ``HeadType`` and one line in ``HEADS``. Everything
but the final per-prediction dict is computed once per batch with numpy.
"""

from __future__ import annotations

from typing import Any

from stream_infer.errors import ModelError
from stream_infer.model.heads import anomaly, classification, regression
from stream_infer.model.heads.base import SCHEMA_VERSION, Head, HeadKind, HeadType, head_type
from stream_infer.model.heads.classification import softmax

HEADS: dict[str, HeadType] = {
    h.kind: h
    for h in (
        classification.HEAD,
        regression.HEAD,
        anomaly.HEAD,
    )
}
HEAD_KINDS: tuple[str, ...] = tuple(HEADS)  # the built-in kinds


def head_kind(card_head: dict[str, Any]) -> HeadKind:
    """The kind a card's ``head`` mapping names (classification when it names none)."""
    kind = card_head.get("kind", "classification")
    if not isinstance(kind, str) or kind not in HEADS:
        raise ModelError(f"head kind must be one of {list(HEADS)}, not {kind!r}")
    return kind


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
    t = HEADS[kind]
    extra = t.from_card(card_head) if t.from_card is not None else {}
    return Head(
        kind,
        tuple(str(x) for x in labels),
        top_k=top_k if t.top_k else 0,
        logits=logits and t.top_k,
        schema_version=schema_version,
        **extra,
    )


__all__ = [
    "HEADS",
    "HEAD_KINDS",
    "SCHEMA_VERSION",
    "Head",
    "HeadKind",
    "HeadType",
    "head_kind",
    "head_type",
    "make_head",
    "softmax",
]
