"""Entity -> slot mapping with idle-TTL and LRU eviction.

Every per-entity array (windows, LSTM state) is indexed by slot, so the number of entities is
bounded by ``capacity`` and memory stays flat however many entities pass through. A dict maps
entity ids to slots; everything else is numpy.
"""

from __future__ import annotations

import numpy as np


class SlotTable:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.index: dict[str, int] = {}
        self.entity: list[str | None] = [None] * capacity
        self.partition = np.full(capacity, -1, dtype=np.int32)
        self.last_seen_s = np.zeros(capacity, dtype=np.float64)
        self._free = list(range(capacity - 1, -1, -1))  # pop() hands out low slots first

    def __len__(self) -> int:
        return len(self.index)

    @property
    def free(self) -> int:
        return len(self._free)

    def missing(self, entities: list[str]) -> list[str]:
        """Distinct entities of ``entities`` that hold no slot yet, in first-seen order."""
        idx = self.index
        return list(dict.fromkeys(e for e in entities if e not in idx))

    def assign(
        self, entities: list[str], partitions: np.ndarray, now_s: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Slots for ``entities`` [N] (allocating new ones), and which slots are new.

        The caller makes room first (``EntityStore.make_room``); running out raises IndexError.
        """
        idx = self.index
        new: list[int] = []
        missing = self.missing(entities)
        if missing:
            part_of = dict(zip(entities, partitions.tolist(), strict=True))
            for e in missing:
                s = self._free.pop()
                idx[e] = s
                self.entity[s] = e
                self.partition[s] = part_of[e]
                new.append(s)
        slots = np.fromiter((idx[e] for e in entities), dtype=np.int64, count=len(entities))
        self.last_seen_s[slots] = now_s
        return slots, np.asarray(new, dtype=np.int64)

    def release(self, slots: np.ndarray) -> list[str]:
        """Free ``slots``; returns their entity ids."""
        gone = []
        for s in slots.tolist():
            e = self.entity[s]
            if e is None:
                continue
            del self.index[e]
            self.entity[s] = None
            self.partition[s] = -1
            self._free.append(s)
            gone.append(e)
        return gone

    def used(self) -> np.ndarray:
        return np.flatnonzero(self.partition >= 0)

    def idle(self, now_s: float, ttl_s: float) -> np.ndarray:
        """Slots not seen for ``ttl_s`` seconds."""
        used = self.used()
        return used[self.last_seen_s[used] < now_s - ttl_s]

    def least_recent(self, n: int, exclude: np.ndarray | None = None) -> np.ndarray:
        """The ``n`` least recently seen slots, none of ``exclude``."""
        used = self.used()
        if exclude is not None and len(exclude):
            used = used[~np.isin(used, exclude)]
        if n <= 0:
            return used[:0]
        if n >= len(used):
            return used
        return used[np.argpartition(self.last_seen_s[used], n)[:n]]

    def of_partitions(self, partitions: set[int]) -> np.ndarray:
        used = self.used()
        return used[np.isin(self.partition[used], list(partitions))]

    def lookup(self, entity: str) -> int | None:
        return self.index.get(entity)

    def put(self, entity: str, partition: int, now_s: float) -> int:
        """Slot for one entity (restores); allocates if needed."""
        s = self.index.get(entity)
        if s is None:
            s = self._free.pop()
            self.index[entity] = s
            self.entity[s] = entity
        self.partition[s] = partition
        self.last_seen_s[s] = now_s
        return s
