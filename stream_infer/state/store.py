"""Per-entity state, with one owner.

An ``EntityStore`` holds everything the service keeps per entity: the entity -> slot table, the
sliding windows, the carried state slab, the ``dirty`` marks (touched since the last checkpoint)
and the tombstones (evicted since the last checkpoint). Nothing else writes these arrays; the
commit path asks for ``snapshot_dirty()`` and rebalances call ``drop_partitions`` / ``restore``.

Threading: the source thread owns the store. The inference thread reads windows it was handed
and writes the slab rows of the slots in them, so every call that frees or reuses a slot
(``admit`` with eviction, ``evict_*``, ``drop_partitions``, ``restore``, ``reset_pending``) and
``snapshot_dirty`` must run with the inference thread drained: the caller drains first.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from stream_infer.errors import StateError
from stream_infer.model.contract import StateSpec, lstm_states
from stream_infer.records import SampleBatch, WindowBatch
from stream_infer.state import codec as changelog
from stream_infer.state.slab import StateSlab
from stream_infer.state.slots import SlotTable
from stream_infer.state.windows import PushStats, WindowStore

logger = logging.getLogger(__name__)

ChangelogRecord = tuple[bytes, bytes | None, int]  # (key, value or None = tombstone, partition)


@dataclass(frozen=True, slots=True)
class ModelShape:
    """What the store needs to know of the model."""

    model_id: str
    window: int
    hop: int
    sample_shape: tuple[int, ...]
    state_shape: tuple[int, ...]  # (L, Hd) of an LSTM pair; () when ``states`` is given
    keep_state_on_upgrade: bool = False  # restore another model's state of the same contract
    states: tuple[StateSpec, ...] = ()  # the contract's state pairs (default: the LSTM pair)

    def __post_init__(self) -> None:
        if not self.states:
            object.__setattr__(self, "states", lstm_states(*self.state_shape))


@dataclass(frozen=True, slots=True)
class Restored:
    restored: int
    not_restorable: int  # records of another model version or unreadable: the entity restarts
    evicted: int  # entities evicted to make room while restoring
    upgraded: int = 0  # of ``restored``: written by another model (keep_state_on_upgrade)


class EntityStore:
    """Slots, windows, state slab, dirty marks and tombstones of up to ``capacity`` entities."""

    def __init__(
        self,
        capacity: int,
        model: ModelShape,
        slab: StateSlab,
        max_seq_gap: int,
        max_seq_rewind: int | None = None,
    ) -> None:
        self.model = model
        self.capacity = capacity
        self.slots = SlotTable(capacity)
        self.windows = WindowStore(
            capacity, model.window, model.hop, model.sample_shape, max_seq_gap, max_seq_rewind
        )
        self.slab = slab
        self.dirty = np.zeros(capacity, dtype=bool)  # touched since the last checkpoint
        self.tombstones: dict[str, int] = {}  # entity -> partition, evicted since the last checkpoint

    def __len__(self) -> int:
        return len(self.slots)

    @property
    def free(self) -> int:
        return self.slots.free

    # --- admission ---

    def shortfall(self, entities: list[str]) -> int:
        """How many slots are missing for ``entities`` to all hold one (0 if they fit)."""
        return max(0, len(self.slots.missing(entities)) - self.slots.free)

    def parts(self, entities: list[str]) -> list[tuple[int, int]]:
        """Split a poll's samples (in arrival order) into contiguous parts of at most
        ``capacity`` distinct entities each; one part when the poll fits."""
        if len(entities) <= self.capacity or len(set(entities)) <= self.capacity:
            return [(0, len(entities))]  # the common case, at C speed
        out: list[tuple[int, int]] = []
        seen: set[str] = set()
        lo = 0
        for i, e in enumerate(entities):
            if e not in seen:
                if len(seen) == self.capacity:
                    out.append((lo, i))
                    seen.clear()
                    lo = i
                seen.add(e)
        out.append((lo, len(entities)))
        return out

    def push(self, batch: SampleBatch, now_s: float) -> tuple[WindowBatch, PushStats]:
        """Admit the batch's entities (the caller made room: ``shortfall`` is 0) and append their
        samples to the windows; returns the windows that completed a hop."""
        slots, new = self.slots.assign(batch.entities, batch.partition, now_s)
        if len(new):
            self.windows.reset(new)  # fresh: the first window starts from zero state
        offset = batch.offset
        if offset is not None and (batch.partition != self.slots.partition[slots]).any():
            offset = None  # an entity read from another partition (re-partitioned input): by seq alone
        wb, st = self.windows.push(
            slots, batch.seq, batch.event_ms, batch.values, batch.entities, batch.trace, batch.reset, offset
        )

        self.dirty[slots] = True
        return wb, st

    # --- eviction (drained) ---

    def evict_lru(self, n: int, protect: Iterable[str] = ()) -> int:
        """Evict up to ``n`` least recently seen entities, never one in ``protect`` (the poll
        being admitted). Returns how many were evicted."""
        used = self.slots.used()
        keep = [s for s in (self.slots.lookup(e) for e in protect) if s is not None]
        if keep:
            used = used[~np.isin(used, np.asarray(keep, dtype=np.int64))]
        if n <= 0 or not len(used):
            return 0
        if n < len(used):
            used = used[np.argpartition(self.slots.last_seen_s[used], n)[:n]]
        return self._evict(used)

    def evict_idle(self, now_s: float, ttl_s: float) -> int:
        return self._evict(self.slots.idle(now_s, ttl_s))

    def _evict(self, slots: np.ndarray) -> int:
        """Free ``slots``; a tombstone deletes each entity's changelog record at the next
        checkpoint."""
        if not len(slots):
            return 0
        parts = self.slots.partition[slots].tolist()
        for e, p in zip(self.slots.release(slots), parts, strict=True):
            self.tombstones[e] = p
        self._clear(slots)
        return len(slots)

    def _clear(self, slots: np.ndarray) -> None:
        self.windows.reset(slots)
        self.slab.zero(slots)
        self.dirty[slots] = False

    def drop_partitions(self, partitions: set[int]) -> int:
        """Forget the entities of ``partitions`` (revoked or lost) without tombstones: their
        changelog records stay for the next owner."""
        slots = self.slots.of_partitions(partitions)
        self.slots.release(slots)
        self._clear(slots)
        for e in [e for e, p in self.tombstones.items() if p in partitions]:
            del self.tombstones[e]
        return len(slots)

    def reset_pending(self) -> None:
        """Forget what the next checkpoint would write (the exactly-once rewind: the aborted
        transaction's state is reloaded from the changelog)."""
        self.tombstones.clear()
        self.dirty[:] = False

    # --- changelog (drained) ---

    def snapshot_dirty(self) -> list[ChangelogRecord]:
        """Changelog records for everything changed since the last call: tombstones for evicted
        entities, then one state record per touched entity. Clears the marks."""
        out: list[ChangelogRecord] = [(e.encode(), None, p) for e, p in self.tombstones.items()]
        self.tombstones.clear()
        slots = np.flatnonzero(self.dirty)
        if not len(slots):
            return out
        self.dirty[slots] = False
        w = self.windows
        values = changelog.encode_many(
            self.model.model_id,
            w.last_seq[slots],
            w.last_event_ms[slots],
            w.count[slots],
            w.fresh[slots],
            w.tail[slots],
            *self.slab.read(slots),
            specs=self.model.states,
            anchor=w.anchor[slots],
            offset=w.last_offset[slots],
        )
        ents = self.slots.entity
        parts = self.slots.partition[slots].tolist()
        out.extend(
            (ents[s].encode(), v, p)  # type: ignore[union-attr]
            for s, v, p in zip(slots.tolist(), values, parts, strict=True)
        )
        return out

    def restore(self, latest: Mapping[bytes, tuple[int, bytes | None]], now_s: float) -> Restored:
        """Load changelog records (key -> (partition, value); ``None`` is a tombstone).

        Records of another model version (unless ``keep_state_on_upgrade`` and the contract is
        the same), or unreadable ones, are skipped: those entities restart from zero. When the
        store is full, the least recently seen tenth is evicted."""
        m = self.model
        restored = skipped = evicted = upgraded = 0
        for key, (part, value) in latest.items():
            if value is None:
                continue
            entity = key.decode("utf-8", "replace")
            try:
                st = changelog.decode(
                    value, m.model_id, m.window, m.sample_shape, m.states, m.keep_state_on_upgrade
                )
            except StateError as exc:
                skipped += 1
                logger.info("not restoring %s: %s", entity, exc)
                continue
            if self.slots.lookup(entity) is None and self.slots.free == 0:
                evicted += self.evict_lru(max(1, self.capacity // 10))
            s = self.slots.put(entity, part, now_s)
            self.tombstones.pop(entity, None)
            w = self.windows
            w.tail[s] = st.tail
            w.count[s] = st.count
            w.last_seq[s] = st.last_seq
            w.last_event_ms[s] = st.event_ms
            w.fresh[s] = st.fresh
            w.anchor[s] = st.anchor
            w.last_offset[s] = st.offset
            self.slab.write(
                np.asarray([s]),
                *(np.expand_dims(a, spec.batch_axis) for a, spec in zip(st.states, m.states, strict=True)),
            )
            restored += 1
            upgraded += st.model_id != m.model_id
        return Restored(restored, skipped, evicted, upgraded)
