"""Kafka messages -> samples: the orchestration around the input formats. Documented in
docs/formats.md.

The formats themselves (``json``, ``f32``, ``image``, ``registry``, ...) are modules of
``stream_infer.formats``, registered in ``formats.FORMATS``; each parses one message's value
(and headers) and stacks a poll's values in one numpy conversion. This module does what every
format shares: keys, sizes, the ``reset`` header, trace headers, dead letters, and the bulk
decode of a poll.

Every format: a header ``reset`` of ``1``/``true`` (or ``0``/``false``) says the device restarted:
its message's first sample starts a new segment (window and state from zero); in ``json`` (and
``registry``) documents a sample's ``"reset": true`` says the same of that sample.

The key is the entity id (UTF-8). ``ts`` lies in [``TS_MIN_MS``, ``TS_MAX_MS``) (1970-01-01 ..
2200-01-01 UTC) and ``seq`` in [0, ``SEQ_MAX``). A message that breaks any rule becomes an
``InvalidMessage`` with a stable reason and never reaches a window. Decoding never raises on any
input: an unexpected exception while decoding one message dead-letters that message alone as
``internal_error`` (the exception in the detail) and the others go on. Good messages of the same
poll are decoded in bulk: one numpy conversion per poll, not per message; a format with a
``parse_poll`` (``json``) parses a poll of common messages in one go and checks it column-wise
(``Decoder._decode_fast``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream_infer.errors import DecodeError, PipelineError
from stream_infer.formats import FORMATS, Format, get_format
from stream_infer.formats.base import (
    SEQ_MAX,
    TS_MAX_MS,
    TS_MIN_MS,
    Parsed,
    Record,
    describe,
    headers_of,
)
from stream_infer.formats.image import MAX_IMAGE_PIXELS
from stream_infer.formats.schema_registry import SchemaRegistry
from stream_infer.metrics import INVALID_REASONS
from stream_infer.records import InvalidMessage, SampleBatch

logger = logging.getLogger(__name__)

FormatName = str  # a key of ``stream_infer.formats.FORMATS``

REASONS = INVALID_REASONS  # the stable reason labels a DecodeError carries

__all__ = [
    "FORMATS",
    "MAX_IMAGE_PIXELS",
    "REASONS",
    "SEQ_MAX",
    "TS_MAX_MS",
    "TS_MIN_MS",
    "DecodeResult",
    "Decoder",
    "Format",
    "FormatName",
    "Parsed",
    "Record",
    "internal_error",
    "message_traces",
]


@dataclass(frozen=True, slots=True)
class DecodeResult:
    samples: SampleBatch
    invalid: list[InvalidMessage]
    messages: int


@dataclass(frozen=True)
class Decoder:
    """Decodes a poll's records for one model's sample shape, in one registered format."""

    format: FormatName
    sample_shape: tuple[int, ...]  # [F] or [C, H, W]
    max_message_bytes: int = 4_194_304
    max_samples_per_message: int = 10_000
    registry: SchemaRegistry | None = None  # formats that need_registry: where schema ids are resolved
    fmt: Format = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fmt", get_format(self.format))

    def decode(self, records: Sequence[Record]) -> DecodeResult:
        """Never raises on any input: every record ends up either in ``samples`` or, once, in
        ``invalid`` with a reason from ``REASONS``, whatever else the poll holds."""
        if self.fmt.parse_poll is not None and records:
            try:
                fast = self._decode_fast(records)
            except Exception:  # off the common path in a way not foreseen: decode per message
                fast = None
            if fast is not None:
                return fast
        return self._decode_each(records)

    def _decode_fast(self, records: Sequence[Record]) -> DecodeResult | None:
        """A whole poll at once through the format's ``parse_poll``: keys, sizes and headers
        checked column-wise, no per-message function calls or exception frames. Returns ``None``
        as soon as anything is off the common path (a bad or missing key, a ``reset`` header, or
        whatever the format's ``parse_poll`` refuses); the per-message path then decodes the poll
        and gives each bad message its exact reason."""
        parse_poll = self.fmt.parse_poll
        assert parse_poll is not None
        try:
            keys = [r.key for r in records]
            if not all(keys):
                return None
            ents = [k.decode("utf-8") for k in keys]  # type: ignore[union-attr]
            values = [r.value for r in records]
            if max(map(len, values)) > self.max_message_bytes:  # type: ignore[arg-type]
                return None
        except (UnicodeDecodeError, TypeError):
            return None
        if _has_reset_header(records):
            return None  # rare: the per-message path reads and checks reset flags
        bulk = parse_poll(self, values)  # type: ignore[arg-type]
        if bulk is None:
            return None
        parts = np.fromiter((r.partition for r in records), dtype=np.int32, count=len(records))
        offs = np.fromiter((r.offset for r in records), dtype=np.int64, count=len(records))
        counts = bulk.counts
        if counts is not None:
            rep = np.asarray(counts)
            parts = np.repeat(parts, rep)
            offs = np.repeat(offs, rep)
            ents = [e for e, n in zip(ents, counts, strict=True) for _ in range(n)]
        trace = message_traces(records)
        if trace is not None and counts is not None:
            trace = [t for t, n in zip(trace, counts, strict=True) for _ in range(n)]
        batch = SampleBatch(
            entities=ents,
            seq=bulk.seq,
            event_ms=bulk.event_ms,
            values=bulk.values,
            partition=parts,
            trace=trace,
            offset=offs,
        )
        return DecodeResult(batch, [], len(records))

    def _decode_each(self, records: Sequence[Record]) -> DecodeResult:
        entities: list[str] = []
        seqs: list[int] = []
        times: list[int] = []
        parts: list[int] = []
        values: list[Any] = []  # per format: lists of numbers, raw bytes, or arrays
        counts: list[int] = []  # samples per accepted message
        resets: list[bool] = []  # per sample: a new segment starts here
        accepted: list[Record] = []
        invalid: list[InvalidMessage] = []
        parse = self.fmt.parse
        for rec in records:
            try:
                entity = _entity(rec)
                if rec.value is None:
                    raise DecodeError("undecodable", "empty value (tombstone)")
                if len(rec.value) > self.max_message_bytes:
                    raise DecodeError("oversized", f"{len(rec.value)} bytes > {self.max_message_bytes}")
                s, t, v, r = parse(self, rec)
                n = len(s)
                if len(t) != n:
                    raise ValueError(f"{n} seqs but {len(t)} event times")
                r = r or [False] * n
                if _header_reset(rec):
                    r = [True, *r[1:]]
            except DecodeError as err:
                invalid.append(as_invalid(rec, err))
                continue
            except PipelineError:  # the registry cannot be asked: not about this record
                raise
            except Exception as exc:  # a bug or an input nobody foresaw: this message only
                invalid.append(as_invalid(rec, _internal(rec, exc)))
                continue
            entities.extend([entity] * n)
            seqs.extend(s)
            times.extend(t)
            parts.extend([rec.partition] * n)
            values.append(v)
            counts.append(n)
            resets.extend(r)
            accepted.append(rec)
        failed: dict[int, DecodeError] = {}
        try:
            arr, bad = self._stack(values, counts)
            if arr.shape != (len(entities), *self.sample_shape):
                raise ValueError(f"values of shape {arr.shape} for {len(entities)} samples")
        except Exception:  # one message spoils the poll-wide conversion: find it, keep the rest
            arr, bad, failed = self._stack_each(accepted, values, counts)
        if bad.any():  # non-finite values or failed conversion: reject whole messages, keep the rest
            keep_msg = ~bad
            for i in np.flatnonzero(bad):
                why = failed.get(int(i)) or DecodeError("non_finite", "NaN or inf in values")
                invalid.append(as_invalid(accepted[i], why))
            keep = np.repeat(keep_msg, counts)
            arr = arr[keep]
            idx = np.flatnonzero(keep)
            entities = [entities[i] for i in idx]
            accepted = [accepted[i] for i in np.flatnonzero(keep_msg)]
            counts = [counts[i] for i in np.flatnonzero(keep_msg)]
            seqs = [seqs[i] for i in idx]
            times = [times[i] for i in idx]
            resets = [resets[i] for i in idx]
            parts = [parts[i] for i in idx]
        trace = message_traces(accepted)
        if trace is not None:
            trace = [t for t, n in zip(trace, counts, strict=True) for _ in range(n)]
        batch = SampleBatch(
            entities=entities,
            seq=np.asarray(seqs, dtype=np.int64),
            event_ms=np.asarray(times, dtype=np.int64),
            values=arr,
            partition=np.asarray(parts, dtype=np.int32),
            trace=trace,
            reset=np.asarray(resets, dtype=bool) if any(resets) else None,
            offset=np.repeat(np.asarray([r.offset for r in accepted], dtype=np.int64), counts),
        )
        return DecodeResult(batch, invalid, len(records))

    def _stack(self, values: list[Any], counts: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """All accepted messages' values as one [N, *sample_shape] float32 array, and a
        per-message flag for non-finite values."""
        shape = self.sample_shape
        if not values:
            return np.empty((0, *shape), np.float32), np.zeros(0, bool)
        arr = self.fmt.stack(values, shape)
        finite = np.isfinite(arr.reshape(len(arr), -1)).all(axis=1)
        if finite.all():
            return arr, np.zeros(len(counts), bool)
        starts = np.cumsum([0, *counts[:-1]])
        bad_msg = ~np.logical_and.reduceat(finite, starts)
        return arr, bad_msg

    def _stack_each(
        self, accepted: list[Record], values: list[Any], counts: list[int]
    ) -> tuple[np.ndarray, np.ndarray, dict[int, DecodeError]]:
        """``_stack`` message by message, after the poll-wide conversion raised: the rows of a
        message that fails alone are zeros, flagged bad, with its ``internal_error``."""
        parts: list[np.ndarray] = []
        bad = np.zeros(len(counts), bool)
        failed: dict[int, DecodeError] = {}
        for i, (v, n) in enumerate(zip(values, counts, strict=True)):
            try:
                a, b = self._stack([v], [n])
                if a.shape != (n, *self.sample_shape):
                    raise ValueError(f"values of shape {a.shape} for {n} samples")
                bad[i] = b[0]
            except Exception as exc:
                failed[i] = _internal(accepted[i], exc)
                a = np.zeros((n, *self.sample_shape), np.float32)
                bad[i] = True
            parts.append(a)
        return np.concatenate(parts), bad, failed


def _entity(rec: Record) -> str:
    if not rec.key:
        raise DecodeError("missing_key", "the message has no key (the entity id)")
    try:
        return rec.key.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("bad_key", "the key is not UTF-8") from None


_TRACEPARENT = re.compile(rb"(?!ff)[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")


def message_traces(records: Sequence[Record]) -> list[bytes | None] | None:
    """The W3C ``traceparent`` header of each message (None where absent or malformed: a bad
    trace header is not a reason to drop a sample); None when no message has one."""
    if not any(r.headers for r in records):
        return None
    out = [_traceparent(r.headers) for r in records]
    return out if any(out) else None


def _traceparent(headers: Any) -> bytes | None:
    for k, v in headers or ():
        if k == "traceparent" and isinstance(v, bytes) and _TRACEPARENT.fullmatch(v.lower()):
            return v.lower()
    return None


_RESET_TRUE = frozenset({b"1", b"true"})
_RESET_FALSE = frozenset({b"0", b"false"})


def _has_reset_header(records: Sequence[Record]) -> bool:
    return any(k == "reset" for r in records if r.headers for k, _ in r.headers)


def _header_reset(rec: Record) -> bool:
    """The ``reset`` header: a new segment starts at the message's first sample."""
    raw = headers_of(rec).get("reset") if rec.headers else None
    if raw is None:
        return False
    flag = raw.strip().lower() if isinstance(raw, bytes) else raw
    if flag in _RESET_TRUE:
        return True
    if flag in _RESET_FALSE:
        return False
    raise DecodeError("bad_reset", f"header 'reset' must be 1, true, 0 or false, got {raw!r:.40}")


def _internal(rec: Record, exc: Exception) -> DecodeError:
    """An unexpected exception while decoding ``rec``, as the reason its dead letter carries."""
    logger.debug("internal error decoding %s[%s]@%s", rec.topic, rec.partition, rec.offset, exc_info=exc)
    return DecodeError("internal_error", describe(exc))


def internal_error(rec: Record, exc: Exception) -> InvalidMessage:
    """The dead letter of a record that broke a stage (decoding or later) in an unforeseen way:
    reason ``internal_error``, the exception's type and message as the detail."""
    return as_invalid(rec, _internal(rec, exc))


def as_invalid(rec: Record, err: DecodeError) -> InvalidMessage:
    """The dead letter of ``rec``, refused for ``err``."""
    return InvalidMessage(
        topic=rec.topic,
        partition=rec.partition,
        offset=rec.offset,
        key=rec.key,
        value=rec.value,
        headers=list(rec.headers or ()),
        reason=err.reason,
        detail=err.detail,
    )
