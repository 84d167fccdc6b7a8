"""The disk tier: entities paged out of memory, in RocksDB on local disk.

When more entities are live than ``entities.max_entities`` slots hold, the least recently seen
are paged out here instead of being deleted, and paged back in (batched per poll) when their
next samples arrive, so an entity never loses its state to the slot cap. A record is exactly
the entity's changelog value (``state/codec.py``: window tail, state tensors, last seq, segment
fields) behind a 16-byte header (last seen, paged out; seconds on the store's clock), keyed by
the input partition (4 bytes, big-endian) and the entity id.

Why RocksDB (through ``rocksdict``), as Kafka Streams and Flink keep state larger than memory:
reads go through a bounded block cache, so the process's memory stays bounded however large the
tier grows (an mmap store such as LMDB maps every page it touches into the process); records are
packed into sorted files (about 1.1 kB per BasicMotions entity, against 2-3 kB in LMDB's half-full
B-tree pages); a partition is one key range, dropped with one range tombstone. Measured here for
1.1 kB values in batches of 10,000 (2 CPUs): 109k puts/s, 79k gets and deletes/s, RSS flat at
140 MB across 1M entries; LMDB 67k puts/s and 184k gets/s with RSS growing with the file; SQLite
(WAL) 30k and 15k.

The tier is a cache of the changelog, never the durable copy: it is emptied when it is opened
(a restart rebuilds it from the changelog through the restore), writes skip RocksDB's write-ahead
log, and a partition's entries go with the partition (revoked, lost, rewound). The budget
(``entities.disk_max_bytes``) bounds the live entries (keys and values): a write that would pass
it is refused whole (``DiskFull``), and a page-in frees its entry's bytes at once. The files can
exceed the live bytes by what compaction has not yet reclaimed (RocksDB's space amplification,
10-50% under this churn): the volume needs that headroom (docs/deploy.md).

Threading: only the source thread calls it (the entity store's owner). An entity is in one tier
at a time: ``put`` is given entities the tier does not hold.
"""

from __future__ import annotations

import contextlib
import shutil
import struct
import tempfile
import weakref
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from rocksdict import (
    BlockBasedOptions,
    Cache,
    DBCompressionType,
    Options,
    Rdict,
    WriteBatch,
    WriteOptions,
)

from stream_infer.errors import StateError

TIER_DIR = "entity-tier"  # the folder the tier owns under ``entities.disk_path``
_HEADER = struct.Struct("<dd")  # last_seen_s, paged_out_s
_PART = struct.Struct(">I")  # the key's partition prefix: one partition is one key range
_CACHE_BYTES = 32 << 20  # block cache: what reads keep in memory
_MEMTABLE_BYTES = 32 << 20  # one write buffer (two at most)


class DiskFull(StateError):
    """The disk tier holds ``entities.disk_max_bytes``: nothing more can be paged out."""


def _key(entity: str, partition: int) -> bytes:
    return _PART.pack(partition) + entity.encode()


class DiskTier:
    """Paged-out entities: (partition, entity) -> (last seen, paged out, changelog value)."""

    def __init__(self, path: Path | None, max_bytes: int) -> None:
        self._owned = path is None  # a temporary directory, removed on close
        base = Path(tempfile.mkdtemp(prefix="stream-infer-state-")) if path is None else path
        # The store lives in a folder of its own under the configured directory: emptying it at
        # start (a cache: what a previous process left goes) never touches anything else there.
        self.path = base / TIER_DIR
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.mkdir(parents=True)
        self._base = base
        self.max_bytes = max_bytes
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.set_write_buffer_size(_MEMTABLE_BYTES)
        opts.set_max_write_buffer_number(2)
        table = BlockBasedOptions()
        table.set_block_cache(Cache(_CACHE_BYTES))
        # Index and filter blocks in that cache too: otherwise they stay in memory beside it and
        # grow with the tier (about 1% of its bytes).
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        opts.set_block_based_table_factory(table)
        opts.set_compression_type(DBCompressionType.lz4())
        self._db = Rdict(str(self.path), opts)
        no_log = WriteOptions()
        no_log.disable_wal = True  # type: ignore[assignment,method-assign]  # rebuilt from the changelog after a crash: no write-ahead log
        self._db.set_write_options(no_log)
        if self._owned:  # removed with the last reference to it, closed or not
            weakref.finalize(self, _remove, self._db, base)
        self._count: Counter[int] = Counter()  # entries per partition
        self._bytes: Counter[int] = Counter()  # live bytes (keys and values) per partition
        self._scan: bytes | None = None  # where the incremental expiry goes on
        self._closed = False

    def __len__(self) -> int:
        return sum(self._count.values())

    def partitions(self) -> list[int]:
        """Partitions with entries."""
        return sorted(p for p, n in self._count.items() if n)

    @property
    def live_bytes(self) -> int:
        """Bytes of the live entries: what the budget bounds."""
        return sum(self._bytes.values())

    @property
    def free_bytes(self) -> int:
        return max(0, self.max_bytes - self.live_bytes)

    @staticmethod
    def entry_bytes(entity: str, value: bytes) -> int:
        """What one entry counts against the budget."""
        return _PART.size + len(entity.encode()) + _HEADER.size + len(value)

    @property
    def bytes_used(self) -> int:
        """Bytes on disk: the sorted files and the memtables (before they are flushed)."""
        db = self._db
        return int(
            (db.property_int_value("rocksdb.total-sst-files-size") or 0)
            + (db.property_int_value("rocksdb.cur-size-all-mem-tables") or 0)
        )

    def put(self, items: Iterable[tuple[str, int, float, float, bytes]]) -> int:
        """Write (entity, partition, last_seen_s, paged_out_s, value) records of entities the
        tier does not hold, in one batch: all or nothing. Raises ``DiskFull`` when they would
        pass the budget."""
        return self.swap(items, ())

    def swap(
        self, puts: Iterable[tuple[str, int, float, float, bytes]], deletes: Iterable[tuple[str, int, bytes]]
    ) -> int:
        """Write ``puts`` (as ``put``) and delete ``deletes`` (as ``delete``) in one batch, all
        or nothing: the deleted entries' bytes count as free for the written ones, so entities
        can trade places when the tier is full. Raises ``DiskFull`` when the result would pass
        the budget. Returns how many were written."""
        batch = WriteBatch(raw_mode=True)
        count: Counter[int] = Counter()
        size: Counter[int] = Counter()
        for entity, part, value in deletes:
            batch.delete(_key(entity, part))
            count[part] -= 1
            size[part] -= self.entry_bytes(entity, value)
        written = 0
        for entity, part, seen, out, value in puts:
            key = _key(entity, part)
            batch.put(key, _HEADER.pack(seen, out) + value)
            count[part] += 1
            size[part] += len(key) + _HEADER.size + len(value)
            written += 1
        if not count:
            return 0
        if self.live_bytes + sum(size.values()) > self.max_bytes and written:
            raise DiskFull(f"the disk tier is full ({self.max_bytes} bytes, entities.disk_max_bytes)")
        self._db.write(batch)
        self._count.update(count)
        self._bytes.update(size)
        return written

    def get(self, keys: list[tuple[str, int]]) -> list[tuple[float, float, bytes] | None]:
        """(last_seen_s, paged_out_s, value) of each (entity, partition), or None."""
        if not keys:
            return []
        raws: list[bytes | None] = self._db[[_key(e, p) for e, p in keys]]  # type: ignore[assignment]
        out: list[tuple[float, float, bytes] | None] = []
        for raw in raws:
            if raw is None:
                out.append(None)
            else:
                seen, paged = _HEADER.unpack_from(raw)
                out.append((seen, paged, raw[_HEADER.size :]))
        return out

    def delete(self, entries: Iterable[tuple[str, int, bytes]]) -> int:
        """Delete entries the tier holds, given as (entity, partition, value) (those paged
        back in: their values were just read); their bytes are free at once."""
        rows = list(entries)
        self.swap((), rows)
        return len(rows)

    def drop_partitions(self, partitions: Iterable[int]) -> int:
        """Forget every entry of ``partitions`` (one range tombstone each); returns how many."""
        gone = 0
        for part in partitions:
            n = self._count.pop(part, 0)
            self._bytes.pop(part, None)
            if n:
                self._db.delete_range(_PART.pack(part), _PART.pack(part + 1))
                gone += n
        return gone

    def expire(self, before_s: float, max_entries: int) -> list[tuple[str, int]]:
        """Delete entries last seen before ``before_s``, looking at no more than ``max_entries``
        per call: a pass over a large tier is spread over several calls (checkpoints), so
        idle expiry on disk may run up to a pass late. Returns the (entity, partition) gone."""
        if not len(self):
            return []
        it = self._db.iter()
        if self._scan is None:
            it.seek_to_first()
        else:
            it.seek(self._scan)
            if not it.valid():  # past the end: the pass wraps around
                it.seek_to_first()
        gone: list[tuple[str, int]] = []
        freed: Counter[int] = Counter()
        batch = WriteBatch(raw_mode=True)
        seen = 0
        self._scan = None
        while it.valid():
            if seen >= max_entries:
                self._scan = it.key()
                break
            seen += 1
            key, raw = it.key(), it.value()
            (last_seen,) = struct.unpack_from("<d", raw)
            if last_seen < before_s:
                batch.delete(key)
                part = _PART.unpack_from(key)[0]
                gone.append((key[_PART.size :].decode("utf-8", "replace"), part))
                freed[part] += len(key) + len(raw)
            it.next()
        del it
        if gone:
            self._db.write(batch)
            self._count.subtract(Counter(p for _, p in gone))
            self._bytes.subtract(freed)
        return gone

    def entries(self, partitions: Iterable[int] | None = None) -> Iterator[tuple[str, int, bytes]]:
        """Every (entity, partition, value), for full snapshots and exports."""
        wanted = None if partitions is None else set(partitions)
        it = self._db.iter()
        it.seek_to_first()
        while it.valid():
            key = it.key()
            (part,) = _PART.unpack_from(key)
            if wanted is None or part in wanted:
                yield key[_PART.size :].decode("utf-8", "replace"), part, it.value()[_HEADER.size :]
            it.next()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._db.close()
        if self._owned:
            shutil.rmtree(self._base, ignore_errors=True)


def _remove(db: Rdict, path: Path) -> None:
    with contextlib.suppress(Exception):  # already closed
        db.close()
    shutil.rmtree(path, ignore_errors=True)
