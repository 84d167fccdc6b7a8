"""``regression``: a named vector, e.g. a forecast of the next N values of some channels;
published as ``values``: ``{name: value}``."""

from __future__ import annotations

from typing import Any

import numpy as np

from stream_infer.model.heads.base import Head, HeadType


def fields(head: Head, y: np.ndarray) -> list[dict[str, Any]]:
    names = head.labels
    return [{"head": "regression", "values": dict(zip(names, row, strict=True))} for row in y.tolist()]


HEAD = HeadType("regression", fields)
