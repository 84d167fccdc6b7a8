"""``classification``: one logit per label; published as probabilities (softmax), the most
probable label, optionally the top k and, on request, the raw logits."""

from __future__ import annotations

from typing import Any

import numpy as np

from stream_infer.model.heads.base import Head, HeadType


def softmax(y: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (exact enough for 1e-6 checks), returned as float32."""
    z = np.asarray(y, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return (z / z.sum(axis=1, keepdims=True)).astype(np.float32)


def fields(head: Head, y: np.ndarray) -> list[dict[str, Any]]:
    labels = np.asarray(head.labels, dtype=object)
    best = labels[y.argmax(axis=1)].tolist() if len(y) else []
    if head.schema_version == 1:
        return [{"scores": row, "label": lab} for row, lab in zip(y.tolist(), best, strict=True)]
    probs = softmax(y)
    docs = [
        {"head": "classification", "label": lab, "scores": row}
        for row, lab in zip(probs.tolist(), best, strict=True)
    ]
    if head.top_k:
        k = min(head.top_k, y.shape[1])
        # Ordered by the logits, as the label is: probabilities may tie in float32.
        order = np.argsort(-y, axis=1, kind="stable")[:, :k]
        top_p = np.take_along_axis(probs, order, axis=1).tolist()
        top_l = labels[order].tolist()
        for doc, ls, ps in zip(docs, top_l, top_p, strict=True):
            doc["top_k"] = [{"label": a, "score": b} for a, b in zip(ls, ps, strict=True)]
    if head.logits:
        for doc, row in zip(docs, y.tolist(), strict=True):
            doc["logits"] = row
    return docs


HEAD = HeadType("classification", fields, top_k=True, schema_v1=True)
