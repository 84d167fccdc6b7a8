"""Per-entity state, with one owner: an entity's whole life is this module's public API.

An ``EntityStore`` holds everything the service keeps per entity: the entity -> slot table, the
sliding windows (with the sequence rules), the carried state slab, the dirty marks (touched since
the last checkpoint) and the tombstones (evicted since the last checkpoint), all private. Its
life cycle, in the order an entity meets it:

* admission: ``parts`` (a poll with more entities than slots is admitted in parts), ``admit``
  (entities on the disk tier are paged back in; when slots run short the least recently seen
  entities are paged out to the disk tier, never one of the poll; when both tiers are full new
  entities are refused), then ``push`` (samples into windows; completed windows out);
* steering: ``steer`` (a control message: a reset, or state set to given tensors, admitting
  an entity not yet held);
* expiry: ``expire_idle`` (idle TTL, both tiers) leaves a tombstone that deletes the changelog
  record at the next checkpoint. Nothing is deleted for memory's sake: paging is not eviction;
* checkpoint: ``snapshot_dirty`` (changelog records of what changed, in memory or paged out);
* rebalance: ``drop_partitions`` (revoked or lost, both tiers: no tombstones, the next owner
  restores) and ``restore`` (from the changelog's latest records; what memory cannot hold goes
  to the disk tier);
* exactly-once rewind: ``rewind`` (forget the partitions and what the next checkpoint would
  write; the caller restores them);
* observation: ``describe`` (one entity's fields, never the tensors), ``__contains__``,
  ``tombstoned``.

The service, ``evaluate`` and the benchmarks use this API only.

Threading: the source thread owns the store. The inference thread reads windows it was handed
and writes the slab rows of the slots in them, so every call that frees or reuses a slot
(``expire_idle``, ``drop_partitions``, ``restore``, ``rewind``), ``steer`` and ``snapshot_dirty`` must run
with the inference thread drained: the caller drains first. ``admit`` calls the ``before_free``
it is given (the drain) before it pages anything out; paging in only fills free slots, which no
window in flight uses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from stream_infer.errors import StateError
from stream_infer.model.contract import StateSpec, lstm_states
from stream_infer.records import SampleBatch, WindowBatch
from stream_infer.state import codec as changelog
from stream_infer.state.disk import DiskFull, DiskTier
from stream_infer.state.slab import StateSlab
from stream_infer.state.slots import SlotTable
from stream_infer.state.windows import PushStats, WindowStore

logger = logging.getLogger(__name__)

ChangelogRecord = tuple[bytes, bytes | None, int]  # (key, value or None = tombstone, partition)

# An entity paged back in within this long of its page-out counts as thrash: the in-memory cap
# is below the working set.
THRASH_S = 60.0


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
    tier: str  # "memory" or "disk"
    partition: int
    last_seq: int  # -1: no sample since its segment started
    samples_in_segment: int  # samples since the segment (and its zero state) started
    last_event_ms: int
    fresh: bool  # its next window starts from zero state
    idle_s: float  # seconds since it was last seen (by the caller's clock)


@dataclass(frozen=True, slots=True)
class Admission:
    """What admitting one poll (or part) did beyond assigning free slots."""

    refused: frozenset[str] = frozenset()  # no room in either tier: their samples are refused
    paged_out: int = 0
    paged_in: int = 0
    thrash: int = 0  # of ``paged_in``: paged out less than ``THRASH_S`` ago
    disk_full: bool = False  # a page-out did not fit the disk tier


ADMITTED = Admission()  # every entity admitted, nothing paged or refused


@dataclass(frozen=True, slots=True)
class Steered:
    """What ``steer`` did."""

    applied: bool
    admission: Admission = ADMITTED  # ``refused``: no room for a new entity, nothing changed
    replayed: bool = False  # the entity's state has already seen the control (input read again)


@dataclass(frozen=True, slots=True)
class Restored:
    restored: int
    not_restorable: int  # records of another model version or unreadable: the entity restarts
    spilled: int  # of ``restored``: written to the disk tier, memory being full
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
        disk: DiskTier | None = None,
    ) -> None:
        """``disk``: the tier entities are paged out to; without one, a full store refuses new
        entities (``entities.on_full: refuse_new``)."""
        self.model = model
        self.capacity = capacity
        self._slots = SlotTable(capacity)
        self._windows = WindowStore(
            capacity, model.window, model.hop, model.sample_shape, max_seq_gap, max_seq_rewind
        )
        self._slab = slab
        self._dirty = np.zeros(capacity, dtype=bool)  # touched since the last checkpoint
        self._tombstones: dict[str, int] = {}  # entity -> partition, evicted since the last checkpoint
        self._disk = disk
        # entity -> partition: paged out while touched since the last checkpoint; the next
        # snapshot reads their records back from the disk tier
        self._dirty_on_disk: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, entity: object) -> bool:
        """Whether the store holds ``entity``, in memory or on the disk tier."""
        if not isinstance(entity, str):
            return False
        return self.in_memory(entity) or self._on_disk(entity) is not None

    def in_memory(self, entity: str) -> bool:
        return self._slots.lookup(entity) is not None

    @property
    def on_disk(self) -> int:
        """Entities paged out to the disk tier."""
        return len(self._disk) if self._disk is not None else 0

    @property
    def disk_bytes(self) -> int:
        return self._disk.bytes_used if self._disk is not None else 0

    def _on_disk(self, entity: str) -> tuple[int, tuple[float, float, bytes]] | None:
        """(partition, record) of a paged-out entity, looked up in every partition."""
        if self._disk is None or not len(self._disk):
            return None
        for part in self._disk.partitions():
            (got,) = self._disk.get([(entity, part)])
            if got is not None:
                return part, got
        return None

    def close(self) -> None:
        if self._disk is not None:
            self._disk.close()

    @property
    def free(self) -> int:
        return self._slots.free

    def tombstoned(self) -> frozenset[str]:
        """Entities evicted since the last checkpoint: the next one deletes their records."""
        return frozenset(self._tombstones)

    def describe(self, entity: str, now_s: float) -> EntityView | None:
        """What the store holds of ``entity`` (None when it holds nothing)."""
        s = self._slots.lookup(entity)
        if s is not None:
            w = self._windows
            return EntityView(
                entity,
                "memory",
                int(self._slots.partition[s]),
                int(w.last_seq[s]),
                int(w.count[s]),
                int(w.last_event_ms[s]),
                bool(w.fresh[s]),
                max(0.0, now_s - float(self._slots.last_seen_s[s])),
            )
        found = self._on_disk(entity)
        if found is None:
            return None
        part, (seen, _, value) = found
        m = self.model
        st = changelog.decode(value, m.model_id, m.window, m.sample_shape, m.states, True)
        return EntityView(
            entity, "disk", part, st.last_seq, st.count, st.event_ms, st.fresh, max(0.0, now_s - seen)
        )

    def tensors_of(self, entity: str) -> tuple[np.ndarray, ...] | None:
        """Copies of ``entity``'s state tensors, per entity (no batch axis); None when not held.
        The slab is the inference thread's: call it only while that thread is drained."""
        s = self._slots.lookup(entity)
        if s is not None:
            got = self._slab.read(np.asarray([s]))
            return tuple(
                np.array(np.take(a, 0, axis=sp.batch_axis), dtype=np.float32)
                for a, sp in zip(got, self.model.states, strict=True)
            )
        found = self._on_disk(entity)
        if found is None:
            return None
        m = self.model
        value = found[1][2]
        st = changelog.decode(value, m.model_id, m.window, m.sample_shape, m.states, True)
        return tuple(np.array(a, dtype=np.float32) for a in st.states)

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

    def admit(
        self,
        entities: list[str],
        partitions: np.ndarray,
        now_s: float,
        before_free: Callable[[], None] = lambda: None,
    ) -> Admission:
        """Make ``entities`` [N] (a poll, or one part of it; partitions [N] int32) ready for
        ``push``: page back in those on the disk tier and give slots to those not held.

        When slots run short, the least recently seen entities are paged out to the disk tier
        (a tenth of the capacity more, to amortise the caller's drain), never one of
        ``entities``; ``before_free`` (the drain) runs first. Page-outs and page-ins are one
        swap on the disk tier, so a full tier still trades its entities for those in memory.
        What neither tier has room for is refused, entities already held (on disk) before new
        ones: a refused entity's samples must not be pushed. Nothing is deleted: an entity's
        state is never lost to the cap."""
        missing = self._slots.missing(entities)
        if not missing:
            return ADMITTED
        part_of = dict(zip(entities, partitions.tolist(), strict=True))
        disk = self._disk
        found: dict[str, tuple[float, float, bytes]] = {}
        if disk is not None and len(disk):
            got = disk.get([(e, part_of[e]) for e in missing])
            found = {e: g for e, g in zip(missing, got, strict=True) if g is not None}
        free = self._slots.free
        short = len(missing) - free
        victims = np.empty(0, np.int64)
        values: list[bytes] = []
        if short > 0 and disk is not None:
            before_free()
            keep = [s for s in (self._slots.lookup(e) for e in entities) if s is not None]
            victims = self._slots.least_recent(
                short + max(1, self.capacity // 10), np.asarray(keep, np.int64)
            )
            values = self._encode(victims) if len(victims) else []
            victims, values = self._fitting(victims, values, found, free)
        room = free + len(victims)
        back = list(found)[:room]
        fresh = [e for e in missing if e not in found][: room - len(back)]
        admitted = set(back) | set(fresh)
        refused = frozenset(e for e in missing if e not in admitted)
        if disk is not None and (len(victims) or back):
            ents = [self._slots.entity[s] for s in victims.tolist()]
            parts = self._slots.partition[victims].tolist()
            seen = self._slots.last_seen_s[victims].tolist()
            disk.swap(
                zip(ents, parts, seen, [now_s] * len(ents), values, strict=True),  # type: ignore[arg-type]
                [(e, part_of[e], found[e][2]) for e in back],
            )
            for e, p, dirty in zip(ents, parts, self._dirty[victims].tolist(), strict=True):
                if dirty:
                    self._dirty_on_disk[e] = p  # type: ignore[index]
            self._slots.release(victims)
            self._clear(victims)
        paged_in, thrash = self._page_in(back, found, part_of, now_s)
        disk_full = len(victims) < short
        if not (refused or len(victims) or paged_in):
            return ADMITTED
        return Admission(refused, len(victims), paged_in, thrash, disk_full and disk is not None)

    def _fitting(
        self,
        victims: np.ndarray,
        values: list[bytes],
        found: dict[str, tuple[float, float, bytes]],
        free: int,
    ) -> tuple[np.ndarray, list[bytes]]:
        """The longest prefix of ``victims`` (least recent first) whose page-out fits the disk
        tier, counting as freed the entries of the ``found`` entities that the slots they free
        let back in."""
        disk = self._disk
        if disk is None or not len(victims):
            return victims[:0], []
        order = np.argsort(self._slots.last_seen_s[victims], kind="stable")
        victims = victims[order]
        values = [values[i] for i in order.tolist()]
        ents = [self._slots.entity[s] for s in victims.tolist()]
        out = np.cumsum([0] + [disk.entry_bytes(e, v) for e, v in zip(ents, values, strict=True)])  # type: ignore[arg-type]
        back = np.cumsum([0] + [disk.entry_bytes(e, g[2]) for e, g in found.items()])
        k = np.arange(len(victims) + 1)
        freed = back[np.minimum(len(found), free + k)]
        fits = np.flatnonzero(out - freed <= disk.free_bytes)
        n = int(fits.max()) if len(fits) else 0
        return victims[:n], values[:n]

    def _page_in(
        self,
        entities: list[str],
        found: dict[str, tuple[float, float, bytes]],
        part_of: dict[str, int],
        now_s: float,
    ) -> tuple[int, int]:
        """Load paged-out entities (their entries already deleted from the disk tier) into free
        slots, decoded in bulk."""
        if not entities:
            return 0, 0
        assert self._disk is not None
        m = self.model
        slots = np.asarray([self._slots.put(e, part_of[e], now_s) for e in entities], np.int64)
        cols = changelog.decode_many(
            [found[e][2] for e in entities], m.model_id, m.window, m.sample_shape, m.states
        )
        if cols is not None:
            w = self._windows
            w.tail[slots] = cols.tail
            w.count[slots] = cols.count
            w.last_seq[slots] = cols.last_seq
            w.last_event_ms[slots] = cols.event_ms
            w.fresh[slots] = cols.fresh
            w.anchor[slots] = cols.anchor
            w.last_offset[slots] = cols.offset
            self._slab.write(slots, *cols.states)
        else:  # written by another model (a restore with keep_state_on_upgrade): one by one
            for e, s in zip(entities, slots.tolist(), strict=True):
                try:
                    st = changelog.decode(found[e][2], m.model_id, m.window, m.sample_shape, m.states, True)
                except StateError as exc:  # it was readable when it was written: not expected
                    logger.warning("entity %s could not be paged in (%s): it starts afresh", e, exc)
                    self._windows.reset(np.asarray([s]))
                    self._slab.zero(np.asarray([s]))
                else:
                    self._load(s, st)
        dirty = [i for i, e in enumerate(entities) if self._dirty_on_disk.pop(e, None) is not None]
        self._dirty[slots[dirty]] = True
        paged_out_s = np.fromiter((found[e][1] for e in entities), np.float64, len(entities))
        return len(entities), int((now_s - paged_out_s < THRASH_S).sum())

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

    # --- steering (drained) ---

    def steer(
        self,
        entity: str,
        partition: int,
        tensors: Sequence[np.ndarray] | None,
        now_s: float,
        offset: int | None = None,
        before_free: Callable[[], None] = lambda: None,
    ) -> Steered:
        """Apply a control message (docs/formats.md, control messages) to ``entity``: its
        current segment ends and the next starts with an empty window, from zero state
        (``tensors`` None: a reset) or from ``tensors`` (a set-state: one float array per state
        of the model's contract, in its order, each of the state's per-entity shape, without
        the batch axis). A set-state admits an entity not yet held (``admit``: it may page
        others out, calling ``before_free`` first, or be refused for want of room); a reset of
        an entity not held changes nothing, since it would start from zero state anyway.

        ``offset``: the control message's input offset in ``partition``. A control the entity's
        state has already seen (at or below the last offset it took in: input read again after
        a restart or a rebalance) is not applied twice. The entity is marked dirty, so the next
        checkpoint writes its new state to the changelog. Writes the slab: call it with the
        inference thread drained."""
        specs = self.model.states
        if tensors is not None:
            if len(tensors) != len(specs):
                raise ValueError(f"{len(tensors)} state tensors for a model with {len(specs)}")
            for a, spec in zip(tensors, specs, strict=True):
                if np.shape(a) != spec.shape:
                    raise ValueError(
                        f"state {spec.input!r}: shape {list(np.shape(a))}, not {list(spec.shape)}"
                    )
        elif entity not in self:
            return Steered(True)
        adm = self.admit([entity], np.asarray([partition], np.int32), now_s, before_free)
        if adm.refused:
            return Steered(False, adm)
        w = self._windows
        s = self._slots.lookup(entity)
        if (
            offset is not None
            and s is not None
            and int(self._slots.partition[s]) == partition
            and int(w.last_offset[s]) >= offset
        ):
            return Steered(False, adm, replayed=True)
        s = self._slots.put(entity, partition, now_s)
        at = np.asarray([s])
        w.reset(at)
        if tensors is None:
            self._slab.zero(at)
        else:
            w.fresh[s] = False  # the next window steps from the given state, not from zero
            self._slab.write(
                at,
                *(
                    np.expand_dims(np.asarray(a, np.float32), spec.batch_axis)
                    for a, spec in zip(tensors, specs, strict=True)
                ),
            )
        if offset is not None:
            w.last_offset[s] = offset
        self._tombstones.pop(entity, None)
        self._dirty[s] = True
        return Steered(True, adm)

    # --- eviction (drained) ---

    def evict_lru(self, n: int, protect: Iterable[str] = ()) -> int:
        """Evict up to ``n`` least recently seen entities, never one in ``protect``. Returns
        how many were evicted."""
        keep = [s for s in (self._slots.lookup(e) for e in protect) if s is not None]
        return self._evict(self._slots.least_recent(n, np.asarray(keep, dtype=np.int64)))

    def expire_idle(self, now_s: float, ttl_s: float, max_disk_scan: int = 100_000) -> int:
        """Delete the entities not seen for ``ttl_s`` seconds, in memory and on the disk tier
        (there at most ``max_disk_scan`` entries looked at per call); returns how many."""
        n = self._evict(self._slots.idle(now_s, ttl_s))
        if self._disk is not None and len(self._disk):
            for e, p in self._disk.expire(now_s - ttl_s, max_disk_scan):
                self._tombstones[e] = p
                self._dirty_on_disk.pop(e, None)
                n += 1
        return n

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
        for e in [e for e, p in self._dirty_on_disk.items() if p in partitions]:
            del self._dirty_on_disk[e]
        on_disk = self._disk.drop_partitions(partitions) if self._disk is not None else 0
        return len(slots) + on_disk

    def rewind(self, partitions: set[int]) -> None:
        """The exactly-once rewind: forget ``partitions`` and everything the next checkpoint
        would write (the aborted transaction's); the caller restores them from the changelog."""
        self.drop_partitions(partitions)
        self._tombstones.clear()
        self._dirty[:] = False
        self._dirty_on_disk.clear()

    # --- changelog (drained) ---

    def snapshot_dirty(self, everything: bool = False) -> list[ChangelogRecord]:
        """Changelog records for everything changed since the last call (``everything``: for
        every entity held, in either tier): tombstones for deleted entities, then one state
        record per touched entity, paged out or not. Clears the marks."""
        out: list[ChangelogRecord] = [(e.encode(), None, p) for e, p in self._tombstones.items()]
        self._tombstones.clear()
        if self._disk is not None and everything:
            out.extend((e.encode(), v, p) for e, p, v in self._disk.entries())
        elif self._dirty_on_disk:
            keys = list(self._dirty_on_disk.items())
            for (e, p), got in zip(keys, self._disk.get(keys), strict=True):  # type: ignore[union-attr]
                if got is not None:
                    out.append((e.encode(), got[2], p))
        self._dirty_on_disk.clear()
        slots = self._slots.used() if everything else np.flatnonzero(self._dirty)
        if not len(slots):
            return out
        self._dirty[slots] = False
        values = self._encode(slots)
        ents = self._slots.entity
        parts = self._slots.partition[slots].tolist()
        out.extend(
            (ents[s].encode(), v, p)  # type: ignore[union-attr]
            for s, v, p in zip(slots.tolist(), values, parts, strict=True)
        )
        return out

    def _encode(self, slots: np.ndarray) -> list[bytes]:
        """The changelog values of ``slots`` (also what the disk tier stores)."""
        w = self._windows
        return changelog.encode_many(
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

    def _load(self, s: int, st: changelog.EntityState) -> None:
        """One decoded changelog value into slot ``s``."""
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
            *(
                np.expand_dims(a, spec.batch_axis)
                for a, spec in zip(st.states, self.model.states, strict=True)
            ),
        )

    def restore(self, latest: Mapping[bytes, tuple[int, bytes | None]], now_s: float) -> Restored:
        """Load changelog records (key -> (partition, value); ``None`` is a tombstone).

        Records of another model version (unless ``keep_state_on_upgrade`` and the contract is
        the same), or unreadable ones, are skipped: those entities restart from zero. What
        memory cannot hold goes to the disk tier as it is; without a disk tier (or when it is
        full) the rest stays in the changelog only, and those entities are admitted as new
        ones when they come back. Nothing is deleted."""
        m = self.model
        restored = skipped = spilled = upgraded = 0
        spill: list[tuple[str, int, float, float, bytes]] = []
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
            self._tombstones.pop(entity, None)
            upgraded += st.model_id != m.model_id
            if self._slots.lookup(entity) is None and self._slots.free == 0:
                spill.append((entity, part, now_s, float("-inf"), value))
                continue
            self._load(self._slots.put(entity, part, now_s), st)
            restored += 1
        if spill and self._disk is not None:
            try:
                self._disk.put(spill)
                spilled = len(spill)
            except DiskFull:
                logger.warning(
                    "%d restored entities fit neither memory nor the disk tier: they stay in the "
                    "changelog and are admitted as new ones if they come back (raise "
                    "entities.disk_max_bytes)",
                    len(spill),
                )
        elif spill:
            logger.warning(
                "%d restored entities do not fit in memory (entities.max_entities) and there is no "
                "disk tier: they stay in the changelog and are admitted as new ones if they come back",
                len(spill),
            )
        return Restored(restored + spilled, skipped, spilled, upgraded)
