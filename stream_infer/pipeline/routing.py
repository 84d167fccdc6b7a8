"""Which model serves an entity: a stable hash of its id, so an entity never changes model.

Canaries take fractions of the entities (``models:``, docs/models.md); the rest are the
primary's. The hash is BLAKE2b of the entity id with a routing salt, not the partitioner's
murmur2, so that which entities a canary gets does not follow the input partitions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

_SALT = b"stream-infer-route"
_CACHE_MAX = 1_000_000
PRIMARY = -1


def bucket(entity: str) -> float:
    """The entity's place in [0, 1): where it falls among the canaries' fractions."""
    d = hashlib.blake2b(entity.encode(), digest_size=8, key=_SALT).digest()
    return int.from_bytes(d, "big") / 2.0**64


class Router:
    """Entities -> the index of the canary serving them, or ``PRIMARY``."""

    def __init__(self, fractions: Sequence[float]) -> None:
        """``fractions``: each canary's share, in order; they take consecutive ranges of [0, 1)
        from 0, so raising one canary's fraction only adds entities to it."""
        self._edges = np.cumsum(np.asarray(fractions, dtype=np.float64))
        self._cache: dict[str, int] = {}

    @property
    def canaries(self) -> int:
        return len(self._edges)

    def route(self, entities: Sequence[str]) -> np.ndarray:
        """[B] int: the canary index serving each entity, ``PRIMARY`` (-1) for the primary's.
        Called per sample on the ingest path: each entity is hashed once (then cached), and a
        poll's lookups run in one ``np.fromiter`` over the cache."""
        if not self.canaries:
            return np.full(len(entities), PRIMARY, dtype=np.int64)
        cache = self._cache
        if len(cache) > _CACHE_MAX:
            cache.clear()
        new = set(entities).difference(cache)
        if new:
            edges, n = self._edges, self.canaries
            for e in new:
                k = int(np.searchsorted(edges, bucket(e), side="right"))
                cache[e] = k if k < n else PRIMARY
        return np.fromiter(map(cache.__getitem__, entities), dtype=np.int64, count=len(entities))
