"""The disk tier: entities paged out of memory, in LMDB on local disk.

When more entities are live than ``entities.max_entities`` slots hold, the least recently seen
are paged out here instead of being deleted, and paged back in (batched per poll) when their
next samples arrive, so an entity never loses its state to the slot cap. A record is exactly
the entity's changelog value (``state/codec.py``: window tail, state tensors, last seq, segment
fields) behind a 16-byte header (last seen, paged out; seconds on the store's clock).

Why LMDB: a memory-mapped B+tree in one file, read without copying through the OS page cache,
with a hard size limit (the map size is ``entities.disk_max_bytes``: a full tier refuses a write
instead of filling the volume) and one write transaction per poll. Measured on the CI machine
against SQLite and RocksDB for 1.3 kB values in batches of 1,000 (docs/deploy.md): 67k puts/s and
184k gets/s, against 30k/15k (SQLite, WAL) and 22k/55k (RocksDB).

The tier is a cache of the changelog, never the durable copy: it is emptied when it is opened
(a restart rebuilds it from the changelog through the restore), and a partition's entries go
with the partition (revoked, lost, rewound). One LMDB database per input partition makes that a
drop, not a scan.

Threading: only the source thread calls it (the entity store's owner).
"""

from __future__ import annotations

import shutil
import struct
import tempfile
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lmdb

from stream_infer.errors import StateError

_HEADER = struct.Struct("<dd")  # last_seen_s, paged_out_s
_MAX_PARTITIONS = 4096  # named databases: one per input partition


class DiskFull(StateError):
    """The disk tier holds ``entities.disk_max_bytes``: nothing more can be paged out."""


class DiskTier:
    """Paged-out entities: entity -> (partition, last seen, paged out, changelog value)."""

    def __init__(self, path: Path | None, max_bytes: int) -> None:
        self._owned = path is None  # a temporary directory, removed on close
        self.path = Path(tempfile.mkdtemp(prefix="stream-infer-state-")) if path is None else path
        self.path.mkdir(parents=True, exist_ok=True)
        for stale in ("data.mdb", "lock.mdb"):  # a cache: what a previous process left is dropped
            (self.path / stale).unlink(missing_ok=True)
        self.max_bytes = max_bytes
        self._env = lmdb.open(
            str(self.path),
            map_size=max_bytes,
            max_dbs=_MAX_PARTITIONS,
            sync=False,  # a cache rebuilt from the changelog after a crash: no fsync
            metasync=False,
            readahead=False,  # random access: read-ahead would only fill the page cache
            lock=True,
        )
        if self._owned:  # removed with the process's last reference to it, closed or not
            weakref.finalize(self, shutil.rmtree, self.path, True)
        self._dbs: dict[int, Any] = {}
        self._count = 0
        self._scan: tuple[int, bytes] | None = None  # where the incremental expiry goes on

    def __len__(self) -> int:
        return self._count

    def partitions(self) -> list[int]:
        """Partitions with a database (possibly empty)."""
        return sorted(self._dbs)

    def _db(self, partition: int) -> Any:
        db = self._dbs.get(partition)
        if db is None:
            db = self._dbs[partition] = self._env.open_db(b"p%d" % partition)
        return db

    @property
    def bytes_used(self) -> int:
        """Bytes of the file in use (pages of every partition's tree)."""
        with self._env.begin() as txn:
            pages = 0
            for db in self._dbs.values():
                st = txn.stat(db)
                pages += st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
        return int(pages * self._env.stat()["psize"])

    def put(self, items: Iterable[tuple[str, int, float, float, bytes]]) -> int:
        """Write (entity, partition, last_seen_s, paged_out_s, value) records in one
        transaction; all or nothing. Raises ``DiskFull`` when they do not fit."""
        rows = list(items)
        dbs = {part: self._db(part) for part in {r[1] for r in rows}}  # opened outside the write
        new = 0
        try:
            with self._env.begin(write=True) as txn:
                for entity, part, seen, out, value in rows:
                    old = txn.replace(entity.encode(), _HEADER.pack(seen, out) + value, db=dbs[part])
                    new += old is None
        except lmdb.MapFullError as exc:
            raise DiskFull(
                f"the disk tier is full ({self.max_bytes} bytes, entities.disk_max_bytes)"
            ) from exc
        self._count += new
        return new

    def get(self, keys: list[tuple[str, int]]) -> list[tuple[float, float, bytes] | None]:
        """(last_seen_s, paged_out_s, value) of each (entity, partition), or None."""
        out: list[tuple[float, float, bytes] | None] = []
        with self._env.begin(buffers=False) as txn:
            for entity, part in keys:
                raw = txn.get(entity.encode(), db=self._db(part)) if part in self._dbs else None
                if raw is None:
                    out.append(None)
                else:
                    seen, paged = _HEADER.unpack_from(raw)
                    out.append((seen, paged, raw[_HEADER.size :]))
        return out

    def delete(self, keys: Iterable[tuple[str, int]]) -> int:
        gone = 0
        with self._env.begin(write=True) as txn:
            for entity, part in keys:
                if part in self._dbs:
                    gone += bool(txn.delete(entity.encode(), db=self._db(part)))
        self._count -= gone
        return gone

    def drop_partitions(self, partitions: Iterable[int]) -> int:
        """Forget every entry of ``partitions``; returns how many went."""
        gone = 0
        with self._env.begin(write=True) as txn:
            for part in partitions:
                db = self._dbs.get(part)
                if db is not None:
                    gone += txn.stat(db)["entries"]
                    txn.drop(db, delete=False)  # emptied; the handle stays valid
        self._count -= gone
        return gone

    def expire(self, before_s: float, max_entries: int) -> list[tuple[str, int]]:
        """Delete entries last seen before ``before_s``, looking at no more than ``max_entries``
        per call: a pass over a large tier is spread over several calls (checkpoints), so
        idle expiry on disk may run up to a pass late. Returns the (entity, partition) gone."""
        if not self._count or not self._dbs:
            return []
        parts = sorted(self._dbs)
        start_part, start_key = self._scan if self._scan is not None else (parts[0], b"")
        order = [p for p in parts if p >= start_part] + [p for p in parts if p < start_part]
        gone: list[tuple[str, int]] = []
        seen = 0
        self._scan = None
        with self._env.begin(write=True) as txn:
            for i, part in enumerate(order):
                cur = txn.cursor(db=self._dbs[part])
                ok = cur.set_range(start_key) if i == 0 and start_key else cur.first()
                while ok:
                    if seen >= max_entries:
                        self._scan = (part, bytes(cur.key()))
                        break
                    seen += 1
                    (last_seen,) = struct.unpack_from("<d", cur.value())
                    if last_seen < before_s:
                        gone.append((bytes(cur.key()).decode("utf-8", "replace"), part))
                        # moves to the next entry; past the last one the cursor is unset
                        ok = cur.delete() and bool(cur.key())
                    else:
                        ok = cur.next()
                if self._scan is not None:
                    break
        self._count -= len(gone)
        return gone

    def entries(self, partitions: Iterable[int] | None = None) -> Iterable[tuple[str, int, bytes]]:
        """Every (entity, partition, value), for full snapshots and exports."""
        with self._env.begin(buffers=False) as txn:
            for part in sorted(self._dbs if partitions is None else set(partitions) & set(self._dbs)):
                for key, raw in txn.cursor(db=self._dbs[part]):
                    yield key.decode("utf-8", "replace"), part, raw[_HEADER.size :]

    def close(self) -> None:
        self._env.close()
        if self._owned:
            shutil.rmtree(self.path, ignore_errors=True)
