"""The state changelog: one compacted record per entity, partitioned like the input.

Value format, version 1 (little-endian), documented in docs/state-changelog.md::

    magic     4s    b"SIST"
    version   u8    1
    fresh     u8    1 if the next window starts from zero state
    id_len    u16   length of the model id
    last_seq  i64   last accepted seq
    event_ms  i64   event time of that sample
    count     i64   samples in the current segment (drives the hop phase)
    window    u32   W
    ndim      u8    rank of one sample
    dims      u32 * ndim
    layers    u16   L
    hidden    u32   Hd
    model_id  bytes UTF-8 "name@version"
    tail      f32   [W, *sample_shape]  the last W samples
    h, c      f32   [L, Hd] each

A tombstone (null value) deletes an entity (evicted or expired). State written by another
model id is not restored: the entity restarts from zero (counted as a reset).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from stream_infer.errors import StateError

MAGIC = b"SIST"
FORMAT_VERSION = 1
_HEAD = struct.Struct("<4sBBHqqqI")


@dataclass(frozen=True, slots=True)
class EntityState:
    last_seq: int
    event_ms: int
    count: int
    fresh: bool
    tail: np.ndarray  # [W, *sample_shape] float32
    h: np.ndarray  # [L, Hd] float32
    c: np.ndarray  # [L, Hd] float32
    model_id: str = ""  # the model that wrote it (set by ``decode``)


def encode(model_id: str, state: EntityState) -> bytes:
    mid = model_id.encode()
    shape = state.tail.shape
    head = _HEAD.pack(
        MAGIC,
        FORMAT_VERSION,
        int(state.fresh),
        len(mid),
        state.last_seq,
        state.event_ms,
        state.count,
        shape[0],
    )
    dims = struct.pack(f"<B{len(shape) - 1}I", len(shape) - 1, *shape[1:])
    lh = struct.pack("<HI", *state.h.shape)
    return b"".join((head, dims, lh, mid, _f32(state.tail), _f32(state.h), _f32(state.c)))


def encode_many(
    model_id: str,
    last_seq: np.ndarray,
    event_ms: np.ndarray,
    count: np.ndarray,
    fresh: np.ndarray,
    tail: np.ndarray,
    h: np.ndarray,
    c: np.ndarray,
) -> list[bytes]:
    """Values for B entities: tail [B, W, *shape], h/c [L, B, Hd] (as the slab lays them out)."""
    hb = np.ascontiguousarray(h.transpose(1, 0, 2))
    cb = np.ascontiguousarray(c.transpose(1, 0, 2))
    return [
        encode(
            model_id,
            EntityState(
                int(last_seq[i]), int(event_ms[i]), int(count[i]), bool(fresh[i]), tail[i], hb[i], cb[i]
            ),
        )
        for i in range(len(last_seq))
    ]


def decode(
    value: bytes,
    model_id: str,
    window: int,
    sample_shape: tuple[int, ...],
    state_shape: tuple[int, int],
    any_model: bool = False,
) -> EntityState:
    """Parse one value; raise ``StateError`` if it is corrupt, of another shape, or (unless
    ``any_model``: a model upgrade with the same state contract) from another model."""
    try:
        magic, ver, fresh, id_len, last_seq, event_ms, count, w = _HEAD.unpack_from(value, 0)
        off = _HEAD.size
        if magic != MAGIC:
            raise StateError("not a stream-infer state record")
        if ver != FORMAT_VERSION:
            raise StateError(f"state format version {ver} is not supported")
        (ndim,) = struct.unpack_from("<B", value, off)
        dims = struct.unpack_from(f"<{ndim}I", value, off + 1)
        off += 1 + 4 * ndim
        layers, hidden = struct.unpack_from("<HI", value, off)
        off += 6
        mid = bytes(value[off : off + id_len]).decode()
        off += id_len
    except (struct.error, UnicodeDecodeError) as exc:
        raise StateError(f"corrupt state record: {exc}") from None
    if mid != model_id and not any_model:
        raise StateError(
            f"state written by model {mid}, serving {model_id} (model.keep_state_on_upgrade keeps "
            "state of the same contract)"
        )
    if w != window or tuple(dims) != tuple(sample_shape) or (layers, hidden) != tuple(state_shape):
        raise StateError("state shapes do not match the model")
    n_tail = w * int(np.prod(dims))
    n_state = layers * hidden
    arr = np.frombuffer(value, dtype="<f4", offset=off)
    if arr.size != n_tail + 2 * n_state:
        raise StateError("state record has the wrong length")
    return EntityState(
        last_seq,
        event_ms,
        count,
        bool(fresh),
        arr[:n_tail].reshape(w, *dims),
        arr[n_tail : n_tail + n_state].reshape(layers, hidden),
        arr[n_tail + n_state :].reshape(layers, hidden),
        mid,
    )


def _f32(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a, dtype="<f4").tobytes()
