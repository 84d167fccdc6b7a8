"""What an input format is (``Format``), and the field rules every format shares.

A format turns the value (and headers) of one Kafka message into samples: ``parse`` gives one
message's (seqs, event times, values, reset flags) or raises ``DecodeError`` with a stable
reason; ``stack`` turns the values of a poll's accepted messages into one ``[N, *sample_shape]``
float32 array in one numpy conversion; ``parse_poll`` (optional) parses a whole poll of common
messages at once, column-wise, and gives up (``None``) on anything off the common path, which
``parse`` then decodes message by message with exact reasons. ``encode`` (optional) is the
inverse, for the stand-in producer (``stream_infer.replay``). Orchestration (keys, sizes,
``reset`` headers, traces, dead letters) stays in ``stream_infer.pipeline.decode``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from stream_infer.errors import DecodeError

if TYPE_CHECKING:
    from stream_infer.formats.schema_registry import SchemaRegistry

# What one message's parse gives: seqs, event times, values, and reset flags (None: none set)
Parsed = tuple[list[int], list[int], Any, list[bool] | None]
# What an encoder gives for one message: (value, headers or None)
Encoded = tuple[bytes, list[tuple[str, bytes]] | None]

TS_MIN_MS = 0  # 1970-01-01T00:00:00Z, inclusive
TS_MAX_MS = 7_258_118_400_000  # 2200-01-01T00:00:00Z, exclusive
SEQ_MAX = 2**62  # exclusive: seq lies in [0, SEQ_MAX)

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)
_TS_MAX_CHARS = 64  # longer ts text is rejected before any parsing (ISO-8601 needs ~35)
_INT_MAX_DIGITS = 20  # longer digit strings are out of range for ts and seq; bounds int()
_DETAIL_MAX_CHARS = 200


class Record(Protocol):
    """The fields of a consumed Kafka record that decoding reads (``kafka.types.ConsumedRecord``
    has them)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


class DecodeContext(Protocol):
    """What a format may read of the decoder it serves (``pipeline.decode.Decoder`` is one)."""

    @property
    def sample_shape(self) -> tuple[int, ...]: ...  # [F] or [C, H, W]

    @property
    def max_samples_per_message(self) -> int: ...

    @property
    def registry(self) -> SchemaRegistry | None: ...  # formats with ``needs_registry``


@dataclass(frozen=True, slots=True)
class Bulk:
    """A whole poll parsed at once (``Format.parse_poll``): one entry per sample."""

    seq: np.ndarray  # [N] int64, each in [0, SEQ_MAX)
    event_ms: np.ndarray  # [N] int64, each in [TS_MIN_MS, TS_MAX_MS)
    values: np.ndarray  # [N, *sample_shape] float32, all finite
    counts: list[int] | None = None  # samples per message; None: one each


def stack_concat(values: list[Any], shape: tuple[int, ...]) -> np.ndarray:
    """The default ``stack``: each message's values are already an array ``[n, *shape]``."""
    return np.concatenate(values).astype(np.float32, copy=False)


@dataclass(frozen=True)
class Format:
    """One input format, registered by ``name`` in ``stream_infer.formats.FORMATS``."""

    name: str
    parse: Callable[[DecodeContext, Record], Parsed]
    stack: Callable[[list[Any], tuple[int, ...]], np.ndarray] = stack_concat
    parse_poll: Callable[[DecodeContext, list[bytes]], Bulk | None] | None = None
    # (seq of the first sample, samples [n, ...], event time ms) -> one message, for replay
    encode: Callable[[int, np.ndarray, int], Encoded] | None = None
    samples_per_message: int | None = None  # None: any; 1: one sample (a frame) per message
    needs_registry: bool = False  # values carry schema ids resolved through input.schema_registry_url
    doc: str = ""


# --- the field rules every format shares: raise DecodeError --------------------------------


def headers_of(rec: Record) -> dict[str, bytes]:
    return {k: v for k, v in (rec.headers or ())}


def header_int(h: dict[str, bytes], name: str) -> int:
    """A header holding a non-negative integer as ASCII digits (no sign, space or ``_``)."""
    raw = h.get(name)
    if raw is None:
        raise DecodeError("bad_seq", f"missing header {name!r}")
    if not isinstance(raw, bytes) or not raw.isdigit():
        raise DecodeError("bad_seq", f"header {name!r} is not ASCII digits: {raw!r:.40}")
    if len(raw) > _INT_MAX_DIGITS:
        raise DecodeError("bad_seq", f"header {name!r} is out of range: {len(raw)} digits")
    return int(raw)


def check_seq(v: Any) -> int:
    if type(v) is not int or v < 0 or v >= SEQ_MAX:
        raise DecodeError("bad_seq", f"seq must be an integer in [0, 2**62), got {v!r:.40}")
    return v


def check_ts(v: Any, fallback_ms: int) -> int:
    """Event time in ms since the epoch, in [TS_MIN_MS, TS_MAX_MS): a number (ms), ASCII digits
    (ms), ISO-8601 text (naive is UTC), or absent (``fallback_ms``, the record time, unchecked)."""
    if v is None:
        return int(fallback_ms)
    if isinstance(v, bytes):
        v = v.decode("ascii", "replace")
    if isinstance(v, bool):
        raise DecodeError("bad_timestamp", "ts must be ms since the epoch or ISO-8601")
    if isinstance(v, int | float):
        if not TS_MIN_MS <= v < TS_MAX_MS:  # NaN fails too
            raise DecodeError("bad_timestamp", f"ts {v!r:.40} out of range")
        return int(v)
    if not isinstance(v, str):
        raise DecodeError("bad_timestamp", f"ts has type {type(v).__name__}")
    if len(v) > _TS_MAX_CHARS:
        raise DecodeError("bad_timestamp", f"ts text of {len(v)} characters")
    if v.isascii() and v.isdigit():
        if len(v) > _INT_MAX_DIGITS:
            raise DecodeError("bad_timestamp", f"ts {v!r:.40} out of range")
        ms = int(v)
    else:
        try:
            dt = datetime.fromisoformat(v)
            if dt.tzinfo is None:  # naive times are UTC, never the host's zone
                dt = dt.replace(tzinfo=timezone.utc)
            ms = (dt - _EPOCH) // _MS  # exact integer ms, no float rounding
        except (ValueError, OverflowError, OSError):
            raise DecodeError("bad_timestamp", f"cannot parse ts {v!r:.40}") from None
    if not TS_MIN_MS <= ms < TS_MAX_MS:
        raise DecodeError("bad_timestamp", f"ts {v!r:.40} out of range")
    return ms


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:_DETAIL_MAX_CHARS]


def header_samples(rec: Record) -> tuple[int, int]:
    """(seq, event time) from the ``seq`` and ``ts`` headers of a binary format's message."""
    h = headers_of(rec)
    return check_seq(header_int(h, "seq")), check_ts(h.get("ts"), rec.timestamp)


def seq_ts_headers(seq: int, ts_ms: int) -> list[tuple[str, bytes]]:
    """The ``seq`` and ``ts`` headers of a binary format's message (``encode``)."""
    return [("seq", str(seq).encode()), ("ts", str(ts_ms).encode())]


__all__ = [
    "SEQ_MAX",
    "TS_MAX_MS",
    "TS_MIN_MS",
    "Bulk",
    "DecodeContext",
    "DecodeError",
    "Encoded",
    "Format",
    "Parsed",
    "Record",
]
