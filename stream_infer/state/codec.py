"""The state changelog: one compacted record per entity, partitioned like the input.

Value formats (little-endian), documented in docs/state-changelog.md. Version 1, written for
the (h, c) pair of an LSTM (the CNN-LSTM this project trains, and any imported graph whose state
is exactly that pair)::

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

Version 2, for any other state contract: the same up to ``dims``, then::

    n_states  u8    number of state tensors
    per state: rank u8, dims u32 * rank   (per entity, no batch axis)
    model_id  bytes
    tail      f32   [W, *sample_shape]
    states    f32   each state tensor in turn, C order

Version 3, written since the sequence rules keep an ``anchor`` per entity (docs/formats.md):
version 2's layout for every state contract, with one more header field after ``window``::

    anchor    i64   last seq of the segment before the current one, when the current one began
                    with a seq jump; -1 otherwise (lets a lone outlier be told from a restart)
    offset    i64   input offset of the last sample the state has seen; -1 if unknown (input
                    read again after a restart is dropped by offset, not judged by seq)

Readers accept all three (versions 1 and 2 read with no anchor and no offset); writers write version 3. A
tombstone (null value) deletes an entity (evicted or expired). State
written by another model id is not restored (unless the caller allows it: a model upgrade with
the same state contract); the entity restarts from zero (counted as a reset).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from stream_infer.errors import StateError
from stream_infer.model.contract import StateSpec, lstm_states

MAGIC = b"SIST"
FORMAT_VERSION = 3  # the version this code writes; it reads 1, 2 and 3
NO_ANCHOR = -1
_HEAD = struct.Struct("<4sBBHqqqI")
_ANCHOR = struct.Struct("<qq")  # version 3: anchor and offset, right after the header
# The same header as a packed numpy record, for encoding many entities at once.
_HEAD_DTYPE = np.dtype(
    [
        ("magic", "S4"),
        ("version", "u1"),
        ("fresh", "u1"),
        ("mid_len", "<u2"),
        ("last_seq", "<i8"),
        ("event_ms", "<i8"),
        ("count", "<i8"),
        ("window", "<u4"),
        ("anchor", "<i8"),
        ("offset", "<i8"),
    ]
)


@dataclass(frozen=True, slots=True)
class EntityState:
    last_seq: int
    event_ms: int
    count: int
    fresh: bool
    tail: np.ndarray  # [W, *sample_shape] float32
    states: tuple[np.ndarray, ...]  # one per state tensor, per-entity shape (no batch axis)
    model_id: str = ""  # the model that wrote it (set by ``decode``)
    anchor: int = NO_ANCHOR  # see the sequence rules (stream_infer.state.windows)
    offset: int = NO_ANCHOR  # input offset of the last sample seen; -1: unknown

    @property
    def h(self) -> np.ndarray:
        return self.states[0]

    @property
    def c(self) -> np.ndarray:
        return self.states[1]


def _specs(states: tuple[StateSpec, ...] | tuple[int, ...]) -> tuple[StateSpec, ...]:
    """Specs as given, or the LSTM pair of an (L, Hd) shape."""
    specs = tuple(s for s in states if isinstance(s, StateSpec))
    if specs:
        return specs
    layers, hidden = (int(d) for d in states if isinstance(d, int))
    return lstm_states(layers, hidden)


def encode(model_id: str, state: EntityState, specs: tuple[StateSpec, ...] | None = None) -> bytes:
    mid = model_id.encode()
    shape = state.tail.shape
    specs = specs if specs is not None else lstm_states(*state.states[0].shape)
    head = _HEAD.pack(
        MAGIC,
        FORMAT_VERSION,
        int(state.fresh),
        len(mid),
        state.last_seq,
        state.event_ms,
        state.count,
        shape[0],
    ) + _ANCHOR.pack(state.anchor, state.offset)
    return b"".join(
        (head, _layout(shape, specs, FORMAT_VERSION), mid, _f32(state.tail), *(_f32(a) for a in state.states))
    )


def encode_many(
    model_id: str,
    last_seq: np.ndarray,
    event_ms: np.ndarray,
    count: np.ndarray,
    fresh: np.ndarray,
    tail: np.ndarray,
    *states: np.ndarray,
    specs: tuple[StateSpec, ...] | None = None,
    anchor: np.ndarray | None = None,
    offset: np.ndarray | None = None,
) -> list[bytes]:
    """Values for B entities: tail [B, W, *shape], each state in the graph's layout (batch on its
    ``batch_axis``, as the slab reads it; an LSTM's h and c are [L, B, Hd]).

    Byte for byte what ``encode`` writes for each, built for all B at once: every record has the
    same layout, so the headers are one structured array, the tails and states one byte matrix
    each, and the records are slices of one buffer (a checkpoint of 100k entities runs this on the
    source thread)."""
    specs = specs if specs is not None else lstm_states(states[0].shape[0], states[-1].shape[2])
    n = len(last_seq)
    if n == 0:
        return []
    mid = model_id.encode()
    shape = tail.shape[1:]
    version = FORMAT_VERSION
    head = np.zeros(n, dtype=_HEAD_DTYPE)
    head["magic"] = MAGIC
    head["version"] = version
    head["fresh"] = np.asarray(fresh, dtype=bool)
    head["mid_len"] = len(mid)
    head["last_seq"] = last_seq
    head["event_ms"] = event_ms
    head["count"] = count
    head["window"] = shape[0]
    head["anchor"] = NO_ANCHOR if anchor is None else anchor
    head["offset"] = NO_ANCHOR if offset is None else offset
    fixed = np.frombuffer(_layout(shape, specs, version) + mid, dtype=np.uint8)
    parts = [
        head.view(np.uint8).reshape(n, _HEAD.size + _ANCHOR.size),
        np.broadcast_to(fixed, (n, len(fixed))),
        _rows(tail),
        *(_rows(np.moveaxis(a, sp.batch_axis, 0)) for a, sp in zip(states, specs, strict=True)),
    ]
    matrix = np.concatenate(parts, axis=1)
    width = matrix.shape[1]
    buf = matrix.tobytes()
    return [buf[i * width : (i + 1) * width] for i in range(n)]


@dataclass(frozen=True, slots=True)
class StateColumns:
    """B entities' states decoded at once (``decode_many``), as the store's arrays hold them."""

    last_seq: np.ndarray  # [B] int64
    event_ms: np.ndarray  # [B] int64
    count: np.ndarray  # [B] int64
    fresh: np.ndarray  # [B] bool
    anchor: np.ndarray  # [B] int64
    offset: np.ndarray  # [B] int64
    tail: np.ndarray  # [B, W, *sample_shape] float32
    states: tuple[np.ndarray, ...]  # each in the graph's layout, batch on its ``batch_axis``


def decode_many(
    values: list[bytes],
    model_id: str,
    window: int,
    sample_shape: tuple[int, ...],
    states: tuple[StateSpec, ...],
) -> StateColumns | None:
    """The inverse of ``encode_many`` for values this version wrote for ``model_id`` (the disk
    tier's page-ins): one byte matrix, one structured view of the headers, no per-record
    parsing. None when any value is of another layout, version or model: the caller then
    decodes them one by one (``decode``), which says what is wrong."""
    n = len(values)
    if n == 0:
        return None
    fixed = _layout(tuple((window, *sample_shape)), states, FORMAT_VERSION) + model_id.encode()
    head = _HEAD.size + _ANCHOR.size
    n_tail = window * int(np.prod(sample_shape))
    width = head + len(fixed) + 4 * (n_tail + sum(s.size for s in states))
    if any(len(v) != width for v in values):
        return None
    matrix = np.frombuffer(b"".join(values), dtype=np.uint8).reshape(n, width)
    heads = np.ascontiguousarray(matrix[:, :head]).view(_HEAD_DTYPE).reshape(n)
    if (
        (heads["magic"] != MAGIC).any()
        or (heads["version"] != FORMAT_VERSION).any()
        or (heads["window"] != window).any()
        or (matrix[:, head : head + len(fixed)] != np.frombuffer(fixed, np.uint8)).any()
    ):
        return None
    floats = np.ascontiguousarray(matrix[:, head + len(fixed) :]).view("<f4")  # [B, n_tail + states]
    out, at = [], n_tail
    for s in states:
        rows = floats[:, at : at + s.size].reshape(n, *s.shape)
        out.append(np.ascontiguousarray(np.moveaxis(rows, 0, s.batch_axis)))
        at += s.size
    return StateColumns(
        heads["last_seq"].astype(np.int64),
        heads["event_ms"].astype(np.int64),
        heads["count"].astype(np.int64),
        heads["fresh"].astype(bool),
        heads["anchor"].astype(np.int64),
        heads["offset"].astype(np.int64),
        floats[:, :n_tail].reshape(n, window, *sample_shape),
        tuple(out),
    )


def _layout(tail_shape: tuple[int, ...], specs: tuple[StateSpec, ...], version: int) -> bytes:
    """What follows the header: the sample dims past W, then the state layout (v1: the LSTM
    pair's (L, Hd); v2: every state's shape)."""
    dims = struct.pack(f"<B{len(tail_shape) - 1}I", len(tail_shape) - 1, *tail_shape[1:])
    if version == 1:
        return dims + struct.pack("<HI", *specs[0].shape)
    return (
        dims
        + struct.pack("<B", len(specs))
        + b"".join(struct.pack(f"<B{len(s.shape)}I", len(s.shape), *s.shape) for s in specs)
    )


def _rows(a: np.ndarray) -> np.ndarray:
    """[B, ...] as little-endian float32 bytes, one row per entity: [B, nbytes]."""
    return np.ascontiguousarray(a, dtype="<f4").reshape(len(a), -1).view(np.uint8)


def decode(
    value: bytes,
    model_id: str,
    window: int,
    sample_shape: tuple[int, ...],
    states: tuple[StateSpec, ...] | tuple[int, ...],
    any_model: bool = False,
) -> EntityState:
    """Parse one value; raise ``StateError`` if it is corrupt, of another shape, or (unless
    ``any_model``: a model upgrade with the same state contract) from another model. ``states``:
    the served model's state pairs (or the (L, Hd) of an LSTM pair)."""
    specs = _specs(states)
    try:
        magic, ver, fresh, id_len, last_seq, event_ms, count, w = _HEAD.unpack_from(value, 0)
        off = _HEAD.size
        if magic != MAGIC:
            raise StateError("not a stream-infer state record")
        if ver not in (1, 2, 3):
            raise StateError(f"state format version {ver} is not supported")
        anchor = offset = NO_ANCHOR
        if ver == 3:
            anchor, offset = _ANCHOR.unpack_from(value, off)
            off += _ANCHOR.size
        (ndim,) = struct.unpack_from("<B", value, off)
        dims = struct.unpack_from(f"<{ndim}I", value, off + 1)
        off += 1 + 4 * ndim
        if ver == 1:
            layers, hidden = struct.unpack_from("<HI", value, off)
            off += 6
            shapes = [(layers, hidden), (layers, hidden)]
        else:
            (n,) = struct.unpack_from("<B", value, off)
            off += 1
            shapes = []
            for _ in range(n):
                (rank,) = struct.unpack_from("<B", value, off)
                shapes.append(tuple(struct.unpack_from(f"<{rank}I", value, off + 1)))
                off += 1 + 4 * rank
        mid = bytes(value[off : off + id_len]).decode()
        off += id_len
    except (struct.error, UnicodeDecodeError) as exc:
        raise StateError(f"corrupt state record: {exc}") from None
    if mid != model_id and not any_model:
        raise StateError(
            f"state written by model {mid}, serving {model_id} (model.keep_state_on_upgrade keeps "
            "state of the same contract)"
        )
    if (
        w != window
        or tuple(dims) != tuple(sample_shape)
        or [tuple(s) for s in shapes] != [s.shape for s in specs]
    ):
        raise StateError("state shapes do not match the model")
    n_tail = w * int(np.prod(dims))
    sizes = [s.size for s in specs]
    arr = np.frombuffer(value, dtype="<f4", offset=off)
    if arr.size != n_tail + sum(sizes):
        raise StateError("state record has the wrong length")
    out, at = [], n_tail
    for s, n in zip(specs, sizes, strict=True):
        out.append(arr[at : at + n].reshape(s.shape))
        at += n
    return EntityState(
        last_seq,
        event_ms,
        count,
        bool(fresh),
        arr[:n_tail].reshape(w, *dims),
        tuple(out),
        mid,
        anchor,
        offset,
    )


def _f32(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a, dtype="<f4").tobytes()
