"""Each model's entity state, side by side: one ``EntityStore`` per model on the stream.

Several models on one stream (``models:``, docs/models.md) each carry their own state per
entity. The changelog holds them all, told apart by key: a model's records are keyed by
``NUL name NUL entity``, and the model named ``default`` (what the single ``model:`` is called)
keeps the plain entity key, so a deployment that moves from ``model:`` to ``models:`` with its
primary named ``default`` keeps its state. The namespace follows the model's name, not its role:
a shadow promoted to primary under the same name restores the state it built as a shadow.

``ModelStates`` offers the checkpoint and rebalance paths the part of the store's API they use,
over every model at once, so they stay unaware of how many models there are.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from stream_infer.state.store import ChangelogRecord, EntityStore, Restored

PLAIN = "default"  # the model whose changelog keys are the bare entity ids
_SEP = b"\x00"


def state_key(model: str, entity: bytes) -> bytes:
    """The changelog key of ``entity``'s state under ``model``."""
    return entity if model == PLAIN else _SEP + model.encode() + _SEP + entity


def split_key(key: bytes) -> tuple[str, bytes]:
    """(model name, entity) of a changelog key (``state_key``'s inverse)."""
    if key[:1] == _SEP:
        end = key.find(_SEP, 1)
        if end > 1:
            return key[1:end].decode("utf-8", "replace"), key[end + 1 :]
    return PLAIN, key


def by_model(
    latest: Mapping[bytes, tuple[int, bytes | None]],
) -> dict[str, dict[bytes, tuple[int, bytes | None]]]:
    """The changelog's latest records, split per model, keyed by entity."""
    out: dict[str, dict[bytes, tuple[int, bytes | None]]] = {}
    for key, rec in latest.items():
        model, entity = split_key(key)
        out.setdefault(model, {})[entity] = rec
    return out


@dataclass(frozen=True, slots=True)
class ModelStates:
    """Every model's ``EntityStore``, by model name; the first is the primary's."""

    stores: dict[str, EntityStore]

    @property
    def primary(self) -> EntityStore:
        return next(iter(self.stores.values()))

    def __iter__(self) -> Iterator[tuple[str, EntityStore]]:
        return iter(self.stores.items())

    def __len__(self) -> int:
        """Entities held (the primary runs every entity, so its count is the stream's)."""
        return len(self.primary)

    @property
    def on_disk(self) -> int:
        return self.primary.on_disk

    @property
    def disk_bytes(self) -> int:
        return sum(s.disk_bytes for s in self.stores.values())

    # --- the checkpoint and rebalance paths (drained) ---

    def expire_idle(self, now_s: float, ttl_s: float) -> int:
        return sum(s.expire_idle(now_s, ttl_s) for s in self.stores.values())

    def snapshot_dirty(self, everything: bool = False) -> list[ChangelogRecord]:
        out: list[ChangelogRecord] = []
        for name, store in self.stores.items():
            recs = store.snapshot_dirty(everything)
            if name == PLAIN:
                out.extend(recs)
            else:
                out.extend((state_key(name, k), v, p) for k, v, p in recs)
        return out

    def drop_partitions(self, partitions: set[int]) -> int:
        return sum(s.drop_partitions(partitions) for s in self.stores.values())

    def rewind(self, partitions: set[int]) -> None:
        for s in self.stores.values():
            s.rewind(partitions)

    def restore(self, latest: Mapping[bytes, tuple[int, bytes | None]], now_s: float) -> Restored:
        """Each model restores its own records; another model's (one no longer served) are left
        in the changelog untouched."""
        plain_only = list(self.stores) == [PLAIN] and not any(k[:1] == _SEP for k in latest)
        split = None if plain_only else by_model(latest)
        parts = [
            s.restore(latest if split is None else split.get(name, {}), now_s)
            for name, s in self.stores.items()
        ]
        return Restored(
            restored=sum(r.restored for r in parts),
            not_restorable=sum(r.not_restorable for r in parts),
            spilled=sum(r.spilled for r in parts),
            upgraded=sum(r.upgraded for r in parts),
        )

    def close(self) -> None:
        for s in self.stores.values():
            s.close()
