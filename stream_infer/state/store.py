"""Per-entity state, with one owner: an entity's whole life is this module's public API.

An ``EntityStore`` holds everything the service keeps per entity: the entity -> slot table, the
sliding windows (with the sequence rules), the carried state slab, the dirty marks (touched since
the last checkpoint) and the tombstones (evicted since the last checkpoint), all private. Its
life cycle, in the order an entity meets it:

* admission: ``parts`` (a poll with more entities than slots is admitted in parts),
  ``shortfall`` and ``make_room`` (LRU eviction under the slot cap, never an entity of the poll
  while others can go), then ``push`` (samples into windows; completed windows out);
* eviction: ``make_room`` (LRU) and ``expire_idle`` (idle TTL), both leaving a tombstone that
  deletes the changelog record at the next checkpoint;
* checkpoint: ``snapshot_dirty`` (changelog records of what changed);
* rebalance: ``drop_partitions`` (revoked or lost: no tombstones, the next owner restores) and
  ``restore`` (from the changelog's latest records);
* exactly-once rewind: ``rewind`` (forget the partitions and what the next checkpoint would
  write; the caller restores them);
* observation: ``describe`` (one entity's fields, never the tensors), ``__contains__``,
  ``tombstoned``.

The service, ``evaluate`` and the benchmarks use this API only.

Threading: the source thread owns the store. The inference thread reads windows it was handed
and writes the slab rows of the slots in them, so every call that frees or reuses a slot
(``make_room``, ``expire_idle``, ``drop_partitions``, ``restore``, ``rewind``) and
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
class EntityView:
    """One entity as the store holds it (never its tensors)."""

    entity: str
    partition: int
    last_seq: int  # -1: no sample since its segment started
    samples_in_segment: int  # samples since the segment (and its zero state) started
    last_event_ms: int
    fresh: bool  # its next window starts from zero state
    idle_s: float  # seconds since it was last seen (by the caller's clock)


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
        self._slots = SlotTable(capacity)
        self._windows = WindowStore(
            capacity, model.window, model.hop, model.sample_shape, max_seq_gap, max_seq_rewind
        )
        self._slab = slab
        self._dirty = np.zeros(capacity, dtype=bool)  # touched since the last checkpoint
        self._tombstones: dict[str, int] = {}  # entity -> partition, evicted since the last checkpoint

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, entity: object) -> bool:
        return isinstance(entity, str) and self._slots.lookup(entity) is not None

    @property
    def free(self) -> int:
        return self._slots.free

    def tombstoned(self) -> frozenset[str]:
        """Entities evicted since the last checkpoint: the next one deletes their records."""
        return frozenset(self._tombstones)

    def describe(self, entity: str, now_s: float) -> EntityView | None:
        """What the store holds of ``entity`` (None when it holds nothing)."""
        s = self._slots.lookup(entity)
        if s is None:
            return None
        w = self._windows
        return EntityView(
            entity,
            int(self._slots.partition[s]),
            int(w.last_seq[s]),
            int(w.count[s]),
            int(w.last_event_ms[s]),
            bool(w.fresh[s]),
            max(0.0, now_s - float(self._slots.last_seen_s[s])),
        )

    # --- admission ---

    def shortfall(self, entities: list[str]) -> int:
        """How many slots are missing for ``entities`` to all hold one (0 if they fit)."""
        return max(0, len(self._slots.missing(entities)) - self._slots.free)

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

    def make_room(self, part: list[str]) -> int:
        """Evict least recently seen entities until ``part``'s entities all fit (drained).

        A tenth of the capacity more is evicted, to amortise the caller's drain; never an
        entity of ``part`` (a whole poll, or one part of a poll with more entities than slots).
        Returns how many were evicted (0 when ``part`` already fits)."""
        need = self.shortfall(part)
        if not need:
            return 0
        return self.evict_lru(need + max(1, self.capacity // 10), part)

    def push(self, batch: SampleBatch, now_s: float) -> tuple[WindowBatch, PushStats]:
        """Admit the batch's entities (the caller made room: ``shortfall`` is 0) and append their
        samples to the windows; returns the windows that completed a hop."""
        slots, new = self._slots.assign(batch.entities, batch.partition, now_s)
        if len(new):
            self._windows.reset(new)  # fresh: the first window starts from zero state
        offset = batch.offset
        if offset is not None and (batch.partition != self._slots.partition[slots]).any():
            offset = None  # an entity read from another partition (re-partitioned input): by seq alone
        wb, st = self._windows.push(
            slots, batch.seq, batch.event_ms, batch.values, batch.entities, batch.trace, batch.reset, offset
        )

        self._dirty[slots] = True
        return wb, st

    # --- eviction (drained) ---

    def evict_lru(self, n: int, protect: Iterable[str] = ()) -> int:
        """Evict up to ``n`` least recently seen entities, never one in ``protect``. Returns
        how many were evicted."""
        keep = [s for s in (self._slots.lookup(e) for e in protect) if s is not None]
        return self._evict(self._slots.least_recent(n, np.asarray(keep, dtype=np.int64)))

    def expire_idle(self, now_s: float, ttl_s: float) -> int:
        """Evict the entities not seen for ``ttl_s`` seconds; returns how many."""
        return self._evict(self._slots.idle(now_s, ttl_s))

    def _evict(self, slots: np.ndarray) -> int:
        """Free ``slots``; a tombstone deletes each entity's changelog record at the next
        checkpoint."""
        if not len(slots):
            return 0
        parts = self._slots.partition[slots].tolist()
        for e, p in zip(self._slots.release(slots), parts, strict=True):
            self._tombstones[e] = p
        self._clear(slots)
        return len(slots)

    def _clear(self, slots: np.ndarray) -> None:
        self._windows.reset(slots)
        self._slab.zero(slots)
        self._dirty[slots] = False

    def drop_partitions(self, partitions: set[int]) -> int:
        """Forget the entities of ``partitions`` (revoked or lost) without tombstones: their
        changelog records stay for the next owner."""
        slots = self._slots.of_partitions(partitions)
        self._slots.release(slots)
        self._clear(slots)
        for e in [e for e, p in self._tombstones.items() if p in partitions]:
            del self._tombstones[e]
        return len(slots)

    def rewind(self, partitions: set[int]) -> None:
        """The exactly-once rewind: forget ``partitions`` and everything the next checkpoint
        would write (the aborted transaction's); the caller restores them from the changelog."""
        self.drop_partitions(partitions)
        self._tombstones.clear()
        self._dirty[:] = False

    # --- changelog (drained) ---

    def snapshot_dirty(self, everything: bool = False) -> list[ChangelogRecord]:
        """Changelog records for everything changed since the last call (``everything``: for
        every entity held): tombstones for evicted entities, then one state record per touched
        entity. Clears the marks."""
        out: list[ChangelogRecord] = [(e.encode(), None, p) for e, p in self._tombstones.items()]
        self._tombstones.clear()
        slots = self._slots.used() if everything else np.flatnonzero(self._dirty)
        if not len(slots):
            return out
        self._dirty[slots] = False
        w = self._windows
        values = changelog.encode_many(
            self.model.model_id,
            w.last_seq[slots],
            w.last_event_ms[slots],
            w.count[slots],
            w.fresh[slots],
            w.tail[slots],
            *self._slab.read(slots),
            specs=self.model.states,
            anchor=w.anchor[slots],
            offset=w.last_offset[slots],
        )
        ents = self._slots.entity
        parts = self._slots.partition[slots].tolist()
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
            if self._slots.lookup(entity) is None and self._slots.free == 0:
                evicted += self.evict_lru(max(1, self.capacity // 10))
            s = self._slots.put(entity, part, now_s)
            self._tombstones.pop(entity, None)
            w = self._windows
            w.tail[s] = st.tail
            w.count[s] = st.count
            w.last_seq[s] = st.last_seq
            w.last_event_ms[s] = st.event_ms
            w.fresh[s] = st.fresh
            w.anchor[s] = st.anchor
            w.last_offset[s] = st.offset
            self._slab.write(
                np.asarray([s]),
                *(np.expand_dims(a, spec.batch_axis) for a, spec in zip(st.states, m.states, strict=True)),
            )
            restored += 1
            upgraded += st.model_id != m.model_id
        return Restored(restored, skipped, evicted, upgraded)
