"""Agreement of a shadow or canary with the primary, hop by hop.

The primary runs every entity, so for every hop a shadow or canary predicts, the primary
predicts the same (entity, seq) too, on its own inference thread and at its own pace. Whichever
side comes first leaves its outputs here; the other side compares and counts: the same label or
not (classification and anomaly heads) and the mean absolute difference of the published
scores (probabilities, values or anomaly scores). Only hops at the same seq meet: models with
other windows or hops are compared where their hops coincide. Pending outputs are bounded: the
oldest are forgotten past ``max_pending`` (a hop one side dropped is never compared).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence

import numpy as np

from stream_infer.metrics import Metrics
from stream_infer.model.heads import Head

MAX_PENDING = 200_000


def published_scores(head: Head, y: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(scores as published [B, width], label index [B] or None for a regression head)."""
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    if head.kind == "classification":
        z = np.exp(y - y.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True), y.argmax(axis=1)
    if head.kind == "anomaly":
        return y, (y[:, 0] > head.threshold).astype(np.int64)
    return y, None


class Agreement:
    """Pairs the primary's hops with another model's, per (model, entity, seq)."""

    def __init__(self, metrics: Metrics, max_pending: int = MAX_PENDING) -> None:
        self.metrics = metrics
        self.max_pending = max_pending
        self._lock = threading.Lock()
        # (model, entity, seq) -> (side, scores row, label or -1); side 0: primary, 1: the other
        self._pending: dict[tuple[str, str, int], tuple[int, np.ndarray, int]] = {}

    def offer(
        self,
        model: str,
        primary: bool,
        head: Head,
        entities: Sequence[str],
        seqs: Sequence[int],
        y: np.ndarray,
    ) -> None:
        """One batch of ``model``'s hops (``primary``: the primary's hops of the entities
        ``model`` runs), compared with the other side's where it came first."""
        scores, labels = published_scores(head, y)
        side = 0 if primary else 1
        same = differ = 0
        diffs: list[float] = []
        pending = self._pending
        with self._lock:
            for i, (e, s) in enumerate(zip(entities, seqs, strict=True)):
                key = (model, e, s)
                other = pending.pop(key, None)
                if other is None or other[0] == side:
                    pending[key] = (side, scores[i], -1 if labels is None else int(labels[i]))
                    continue
                row = other[1]
                if row.shape == scores[i].shape:
                    diffs.append(float(np.abs(row - scores[i]).mean()))
                if labels is not None:
                    if other[2] == int(labels[i]):
                        same += 1
                    else:
                        differ += 1
            over = len(pending) - self.max_pending
            if over > 0:
                for k in list(itertools.islice(pending, over)):  # the oldest, O(over)
                    del pending[k]
        m = self.metrics
        if same:
            m.model_agreement.labels(model, "same").inc(same)
        if differ:
            m.model_agreement.labels(model, "different").inc(differ)
        if diffs:
            summary = m.model_abs_diff.labels(model)
            for d in diffs:
                summary.observe(d)
