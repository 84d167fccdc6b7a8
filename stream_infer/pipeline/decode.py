"""Kafka messages -> samples, per input format. Documented in docs/formats.md.

``json``   value: ``{"seq": int, "ts": ms | ISO-8601, "values": [F numbers]}`` or a list of them.
``f32``    value: little-endian float32 ``[n, F]``; headers ``seq`` (of the first sample; the
           others follow it) and ``ts`` (event time, ms, shared by the n samples).
``image``  value: one JPEG or PNG frame; headers ``seq`` and ``ts``; converted to the model's
           channels and size, as float32 pixel values 0..255 (the model normalises).

Every format: a header ``reset`` of ``1``/``true`` (or ``0``/``false``) says the device restarted:
its message's first sample starts a new segment (window and state from zero); in ``json`` (and
``registry``) documents a sample's ``"reset": true`` says the same of that sample.

The key is the entity id (UTF-8). ``ts`` lies in [``TS_MIN_MS``, ``TS_MAX_MS``) (1970-01-01 ..
2200-01-01 UTC) and ``seq`` in [0, ``SEQ_MAX``). A message that breaks any rule becomes an
``InvalidMessage`` with a stable reason and never reaches a window. Decoding never raises on any
input: an unexpected exception while decoding one message dead-letters that message alone as
``internal_error`` (the exception in the detail) and the others go on. Good messages of the same
poll are decoded in bulk: one numpy conversion per poll, not per message; a poll of valid JSON
messages is parsed in one comprehension and checked column-wise (``Decoder._decode_json_fast``).
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from itertools import chain
from typing import Any, Literal

import numpy as np
import orjson

from stream_infer.errors import DecodeError, PipelineError
from stream_infer.formats import schema_registry as registry
from stream_infer.formats.schema_registry import SchemaRegistry
from stream_infer.kafka.types import ConsumedRecord
from stream_infer.metrics import INVALID_REASONS
from stream_infer.records import InvalidMessage, SampleBatch

logger = logging.getLogger(__name__)

Format = Literal["json", "f32", "image", "registry"]

REASONS = INVALID_REASONS  # the stable reason labels a DecodeError carries
# What one message's parse gives: seqs, event times, values, and reset flags (None: none set)
Parsed = tuple[list[int], list[int], Any, list[bool] | None]

TS_MIN_MS = 0  # 1970-01-01T00:00:00Z, inclusive
TS_MAX_MS = 7_258_118_400_000  # 2200-01-01T00:00:00Z, exclusive
SEQ_MAX = 2**62  # exclusive: seq lies in [0, SEQ_MAX)
# A frame is decoded whole before it is resized: a small file of huge dimensions would take
# hundreds of MB. 4096 x 4096 is far beyond any frame model's input.
MAX_IMAGE_PIXELS = 4096 * 4096

_NUMBER_TYPES = frozenset({int, float})
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)
_TS_MAX_CHARS = 64  # longer ts text is rejected before any parsing (ISO-8601 needs ~35)
_INT_MAX_DIGITS = 20  # longer digit strings are out of range for ts and seq; bounds int()
_DETAIL_MAX_CHARS = 200


@dataclass(frozen=True, slots=True)
class DecodeResult:
    samples: SampleBatch
    invalid: list[InvalidMessage]
    messages: int


@dataclass(frozen=True)
class Decoder:
    """Decodes a poll's records for one model's sample shape."""

    format: Format
    sample_shape: tuple[int, ...]  # [F] or [C, H, W]
    max_message_bytes: int = 4_194_304
    max_samples_per_message: int = 10_000
    registry: SchemaRegistry | None = None  # format "registry": where schema ids are resolved

    def decode(self, records: Sequence[ConsumedRecord]) -> DecodeResult:
        """Never raises on any input: every record ends up either in ``samples`` or, once, in
        ``invalid`` with a reason from ``REASONS``, whatever else the poll holds."""
        if self.format == "json" and records:
            try:
                fast = self._decode_json_fast(records)
            except Exception:  # off the common path in a way not foreseen: decode per message
                fast = None
            if fast is not None:
                return fast
        return self._decode_each(records)

    def _decode_json_fast(self, records: Sequence[ConsumedRecord]) -> DecodeResult | None:
        """A whole poll of JSON messages at once: list-comprehension parsing and column-wise
        checks, no per-message function calls or exception frames. Returns ``None`` as soon as anything is off the common path (a bad
        or missing key, an invalid document, an ISO or missing ``ts``, ...); the per-message path
        then decodes the poll and gives each bad message its exact reason."""
        f = self.sample_shape[0]
        try:
            keys = [r.key for r in records]
            if not all(keys):
                return None
            ents = [k.decode("utf-8") for k in keys]  # type: ignore[union-attr]
            values = [r.value for r in records]
            if max(map(len, values)) > self.max_message_bytes:  # type: ignore[arg-type]
                return None
            # One loads per message, never over joined values: a value holding two documents
            # and another holding half of one would re-pair documents with the wrong records.
            loads = orjson.loads
            docs = [loads(v) for v in values]  # type: ignore[arg-type]
        except (UnicodeDecodeError, TypeError, orjson.JSONDecodeError):
            return None
        doc_types = set(map(type, docs))
        counts: list[int] | None = None
        if doc_types == {dict}:
            items = docs
        elif doc_types <= {dict, list}:
            counts = [len(d) if type(d) is list else 1 for d in docs]
            if min(counts) == 0 or max(counts) > self.max_samples_per_message:
                return None
            items = [it for d in docs for it in (d if type(d) is list else (d,))]
            if set(map(type, items)) != {dict}:
                return None
        else:
            return None
        if any("reset" in it for it in items) or _has_reset_header(records):
            return None  # rare: the per-message path reads and checks reset flags
        seqs = [it.get("seq") for it in items]
        times = [it.get("ts") for it in items]
        vals = [it.get("values") for it in items]
        if set(map(type, vals)) != {list} or set(map(len, vals)) != {f}:
            return None
        value_types = set(map(type, chain.from_iterable(vals)))
        if not value_types <= _NUMBER_TYPES:
            return None
        if set(map(type, seqs)) != {int} or not set(map(type, times)) <= _NUMBER_TYPES:
            return None
        try:
            seq = np.asarray(seqs, dtype=np.int64)
            ts = np.asarray(times, dtype=np.float64)
        except OverflowError:
            return None
        if seq.min() < 0 or seq.max() >= SEQ_MAX or not (ts.min() >= TS_MIN_MS and ts.max() < TS_MAX_MS):
            return None  # NaN fails the ts test too
        event_ms = (
            np.asarray(times, dtype=np.int64) if float not in set(map(type, times)) else ts.astype(np.int64)
        )
        parts = np.fromiter((r.partition for r in records), dtype=np.int32, count=len(records))
        offs = np.fromiter((r.offset for r in records), dtype=np.int64, count=len(records))
        with np.errstate(over="ignore"):  # overflow becomes inf: rejected as non_finite below
            if value_types == {float}:  # Python floats are doubles: through float64 is exact, and faster
                flat = np.fromiter(chain.from_iterable(vals), dtype=np.float64, count=len(vals) * f)
                arr = flat.astype(np.float32).reshape(-1, *self.sample_shape)
            else:  # ints convert straight to float32 (no double rounding; huge ones become inf)
                arr = np.asarray(vals, dtype=np.float32).reshape(-1, *self.sample_shape)
        if counts is not None:
            rep = np.asarray(counts)
            parts = np.repeat(parts, rep)
            offs = np.repeat(offs, rep)
            ents = [e for e, n in zip(ents, counts, strict=True) for _ in range(n)]
        finite = np.isfinite(arr.reshape(len(arr), -1)).all(axis=1)
        if not finite.all():
            return None
        trace = message_traces(records)
        if trace is not None and counts is not None:
            trace = [t for t, n in zip(trace, counts, strict=True) for _ in range(n)]
        batch = SampleBatch(
            entities=ents, seq=seq, event_ms=event_ms, values=arr, partition=parts, trace=trace, offset=offs
        )
        return DecodeResult(batch, [], len(records))

    def _decode_each(self, records: Sequence[ConsumedRecord]) -> DecodeResult:
        entities: list[str] = []
        seqs: list[int] = []
        times: list[int] = []
        parts: list[int] = []
        values: list[Any] = []  # per format: lists of numbers, raw bytes, or arrays
        counts: list[int] = []  # samples per accepted message
        resets: list[bool] = []  # per sample: a new segment starts here
        accepted: list[ConsumedRecord] = []
        invalid: list[InvalidMessage] = []
        parse = {
            "json": self._parse_json,
            "f32": self._parse_f32,
            "image": self._parse_image,
            "registry": self._parse_registry,
        }[self.format]
        for rec in records:
            try:
                entity = _entity(rec)
                if rec.value is None:
                    raise DecodeError("undecodable", "empty value (tombstone)")
                if len(rec.value) > self.max_message_bytes:
                    raise DecodeError("oversized", f"{len(rec.value)} bytes > {self.max_message_bytes}")
                s, t, v, r = parse(rec)
                n = len(s)
                if len(t) != n:
                    raise ValueError(f"{n} seqs but {len(t)} event times")
                r = r or [False] * n
                if _header_reset(rec):
                    r = [True, *r[1:]]
            except DecodeError as err:
                invalid.append(_invalid(rec, err))
                continue
            except PipelineError:  # the registry cannot be asked: not about this record
                raise
            except Exception as exc:  # a bug or an input nobody foresaw: this message only
                invalid.append(_invalid(rec, _internal(rec, exc)))
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
                invalid.append(_invalid(accepted[i], why))
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

    # --- per format: (seqs, event times, values, reset flags or None) of one message; raise
    # DecodeError ---

    def _parse_json(self, rec: ConsumedRecord) -> Parsed:
        try:
            doc = orjson.loads(rec.value)  # type: ignore[arg-type]
        except orjson.JSONDecodeError as exc:
            raise DecodeError("undecodable", f"not JSON: {exc}") from None
        return self._samples_of(doc, rec)

    def _parse_registry(self, rec: ConsumedRecord) -> Parsed:
        """A schema-registry wire-format value (Avro or JSON): the same document rules as json."""
        assert self.registry is not None, "format registry needs a SchemaRegistry"
        schema_id, payload = registry.split_wire(rec.value or b"")
        doc = registry.decode_value(self.registry.get(schema_id), payload)
        return self._samples_of(doc, rec)

    def _samples_of(self, doc: Any, rec: ConsumedRecord) -> Parsed:
        """(seqs, event times, values, resets) of a decoded document: one sample object or a
        list."""
        items = doc if isinstance(doc, list) else [doc]
        if not items:
            raise DecodeError("wrong_shape", "empty sample list")
        if len(items) > self.max_samples_per_message:
            raise DecodeError("too_many_samples", f"{len(items)} samples > {self.max_samples_per_message}")
        f = self.sample_shape[0]
        seqs, times, vals, resets = [], [], [], []
        for it in items:
            if not isinstance(it, dict):
                raise DecodeError("wrong_shape", "each sample must be an object with seq and values")
            v = it.get("values")
            if not isinstance(v, list) or len(v) != f:
                raise DecodeError("wrong_shape", f"values must be a list of {f} numbers")
            if not all(type(x) in (int, float) for x in v):
                raise DecodeError("wrong_dtype", "values must be numbers")
            seqs.append(_seq(it.get("seq")))
            times.append(_ts(it.get("ts"), rec.timestamp))
            vals.append(v)
            reset = it.get("reset", False)
            if type(reset) is not bool and reset is not None:
                raise DecodeError("bad_reset", f"reset must be true or false, got {reset!r:.40}")
            resets.append(bool(reset))
        return seqs, times, vals, resets if any(resets) else None

    def _parse_f32(self, rec: ConsumedRecord) -> Parsed:
        value = rec.value or b""
        row = 4 * int(np.prod(self.sample_shape))
        if len(value) == 0 or len(value) % row:
            raise DecodeError("wrong_shape", f"{len(value)} bytes is not a multiple of {row} (F float32)")
        n = len(value) // row
        if n > self.max_samples_per_message:
            raise DecodeError("too_many_samples", f"{n} samples > {self.max_samples_per_message}")
        h = _headers(rec)
        first = _seq(_header_int(h, "seq"))
        _seq(first + n - 1)  # the last sample's seq must be in range too
        ts = _ts(h.get("ts"), rec.timestamp)
        return list(range(first, first + n)), [ts] * n, value, None

    def _parse_image(self, rec: ConsumedRecord) -> Parsed:
        from PIL import Image, UnidentifiedImageError

        c, hgt, wid = self.sample_shape
        h = _headers(rec)
        seq = _seq(_header_int(h, "seq"))
        ts = _ts(h.get("ts"), rec.timestamp)
        try:
            with Image.open(io.BytesIO(rec.value or b"")) as src:
                if src.format not in ("JPEG", "PNG"):
                    raise DecodeError("bad_image", f"format {src.format} is not JPEG or PNG")
                if src.width * src.height > MAX_IMAGE_PIXELS:  # checked before any pixel is decoded
                    raise DecodeError(
                        "bad_image",
                        f"{src.width}x{src.height} pixels > {MAX_IMAGE_PIXELS} (decompression bomb?)",
                    )
                img = src.convert("L" if c == 1 else "RGB")
                if img.size != (wid, hgt):
                    img = img.resize((wid, hgt), Image.Resampling.BILINEAR)
                a = np.asarray(img, dtype=np.float32)
        except DecodeError:
            raise
        except UnidentifiedImageError:  # its message names a buffer's address: not stable
            raise DecodeError("bad_image", "not an image Pillow can identify") from None
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise DecodeError("bad_image", str(exc)) from None
        except Exception as exc:  # Pillow's decoders raise more (SyntaxError, EOFError, ...) on bad bytes
            raise DecodeError("bad_image", _describe(exc)) from None
        a = a[None] if c == 1 else a.transpose(2, 0, 1)
        return [seq], [ts], a[None], None

    def _stack(self, values: list[Any], counts: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """All accepted messages' values as one [N, *sample_shape] float32 array, and a
        per-message flag for non-finite values."""
        shape = self.sample_shape
        if not values:
            return np.empty((0, *shape), np.float32), np.zeros(0, bool)
        if self.format == "json":
            flat = [row for msg in values for row in msg]
            with np.errstate(over="ignore"):  # overflow becomes inf: rejected as non_finite below
                arr = np.asarray(flat, dtype=np.float32).reshape(-1, *shape)
        elif self.format == "f32":
            arr = np.frombuffer(b"".join(values), dtype="<f4").reshape(-1, *shape)
        else:
            arr = np.concatenate(values).astype(np.float32, copy=False)
        finite = np.isfinite(arr.reshape(len(arr), -1)).all(axis=1)
        if finite.all():
            return arr, np.zeros(len(counts), bool)
        starts = np.cumsum([0, *counts[:-1]])
        bad_msg = ~np.logical_and.reduceat(finite, starts)
        return arr, bad_msg

    def _stack_each(
        self, accepted: list[ConsumedRecord], values: list[Any], counts: list[int]
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


def _entity(rec: ConsumedRecord) -> str:
    if not rec.key:
        raise DecodeError("missing_key", "the message has no key (the entity id)")
    try:
        return rec.key.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("bad_key", "the key is not UTF-8") from None


_TRACEPARENT = re.compile(rb"(?!ff)[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")


def message_traces(records: Sequence[ConsumedRecord]) -> list[bytes | None] | None:
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


def _has_reset_header(records: Sequence[ConsumedRecord]) -> bool:
    return any(k == "reset" for r in records if r.headers for k, _ in r.headers)


def _header_reset(rec: ConsumedRecord) -> bool:
    """The ``reset`` header: a new segment starts at the message's first sample."""
    raw = _headers(rec).get("reset") if rec.headers else None
    if raw is None:
        return False
    flag = raw.strip().lower() if isinstance(raw, bytes) else raw
    if flag in _RESET_TRUE:
        return True
    if flag in _RESET_FALSE:
        return False
    raise DecodeError("bad_reset", f"header 'reset' must be 1, true, 0 or false, got {raw!r:.40}")


def _headers(rec: ConsumedRecord) -> dict[str, bytes]:
    return {k: v for k, v in (rec.headers or ())}


def _header_int(h: dict[str, bytes], name: str) -> int:
    """A header holding a non-negative integer as ASCII digits (no sign, space or ``_``)."""
    raw = h.get(name)
    if raw is None:
        raise DecodeError("bad_seq", f"missing header {name!r}")
    if not isinstance(raw, bytes) or not raw.isdigit():
        raise DecodeError("bad_seq", f"header {name!r} is not ASCII digits: {raw!r:.40}")
    if len(raw) > _INT_MAX_DIGITS:
        raise DecodeError("bad_seq", f"header {name!r} is out of range: {len(raw)} digits")
    return int(raw)


def _seq(v: Any) -> int:
    if type(v) is not int or v < 0 or v >= SEQ_MAX:
        raise DecodeError("bad_seq", f"seq must be an integer in [0, 2**62), got {v!r:.40}")
    return v


def _ts(v: Any, fallback_ms: int) -> int:
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


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:_DETAIL_MAX_CHARS]


def _internal(rec: ConsumedRecord, exc: Exception) -> DecodeError:
    """An unexpected exception while decoding ``rec``, as the reason its dead letter carries."""
    logger.debug("internal error decoding %s[%s]@%s", rec.topic, rec.partition, rec.offset, exc_info=exc)
    return DecodeError("internal_error", _describe(exc))


def internal_error(rec: ConsumedRecord, exc: Exception) -> InvalidMessage:
    """The dead letter of a record that broke a stage (decoding or later) in an unforeseen way:
    reason ``internal_error``, the exception's type and message as the detail."""
    return _invalid(rec, _internal(rec, exc))


def _invalid(rec: ConsumedRecord, err: DecodeError) -> InvalidMessage:
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
