"""``anomaly``: one score per hop; published with the card's threshold and whether it is above."""

from __future__ import annotations

from typing import Any

import numpy as np

from stream_infer.errors import ModelError
from stream_infer.model.heads.base import Head, HeadType


def fields(head: Head, y: np.ndarray) -> list[dict[str, Any]]:
    t = head.threshold
    return [{"head": "anomaly", "score": s, "threshold": t, "anomaly": s > t} for s in y[:, 0].tolist()]


def check(head: Head) -> None:
    if len(head.labels) != 1:
        raise ModelError(f"an anomaly head has one output (its score), not {len(head.labels)}")


def from_card(card_head: dict[str, Any]) -> dict[str, Any]:
    threshold = card_head.get("threshold")
    if not isinstance(threshold, int | float) or isinstance(threshold, bool) or not np.isfinite(threshold):
        raise ModelError(f"an anomaly head needs a finite number as head.threshold, not {threshold!r}")
    return {"threshold": float(threshold)}


HEAD = HeadType("anomaly", fields, check=check, from_card=from_card)
