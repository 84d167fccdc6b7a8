"""``json``: value ``{"seq": int, "ts": ms | ISO-8601, "values": [F numbers]}`` or a list of them;
a sample's ``"reset": true`` starts a new segment there.

A poll of common messages is parsed in one comprehension and checked column-wise
(``parse_poll``); anything off that path is parsed message by message (``parse``)."""

from __future__ import annotations

from itertools import chain
from typing import Any

import numpy as np
import orjson

from stream_infer.errors import DecodeError
from stream_infer.formats.base import (
    SEQ_MAX,
    TS_MAX_MS,
    TS_MIN_MS,
    Bulk,
    DecodeContext,
    Encoded,
    Format,
    Parsed,
    Record,
    check_seq,
    check_ts,
)

_NUMBER_TYPES = frozenset({int, float})


def parse(ctx: DecodeContext, rec: Record) -> Parsed:
    try:
        doc = orjson.loads(rec.value)  # type: ignore[arg-type]
    except orjson.JSONDecodeError as exc:
        raise DecodeError("undecodable", f"not JSON: {exc}") from None
    return samples_of(ctx, doc, rec)


def samples_of(ctx: DecodeContext, doc: Any, rec: Record) -> Parsed:
    """(seqs, event times, values, resets) of a decoded document: one sample object or a list
    (``json`` and the schema-registry format share these rules)."""
    items = doc if isinstance(doc, list) else [doc]
    if not items:
        raise DecodeError("wrong_shape", "empty sample list")
    if len(items) > ctx.max_samples_per_message:
        raise DecodeError("too_many_samples", f"{len(items)} samples > {ctx.max_samples_per_message}")
    f = ctx.sample_shape[0]
    seqs, times, vals, resets = [], [], [], []
    for it in items:
        if not isinstance(it, dict):
            raise DecodeError("wrong_shape", "each sample must be an object with seq and values")
        v = it.get("values")
        if not isinstance(v, list) or len(v) != f:
            raise DecodeError("wrong_shape", f"values must be a list of {f} numbers")
        if not all(type(x) in (int, float) for x in v):
            raise DecodeError("wrong_dtype", "values must be numbers")
        seqs.append(check_seq(it.get("seq")))
        times.append(check_ts(it.get("ts"), rec.timestamp))
        vals.append(v)
        reset = it.get("reset", False)
        if type(reset) is not bool and reset is not None:
            raise DecodeError("bad_reset", f"reset must be true or false, got {reset!r:.40}")
        resets.append(bool(reset))
    return seqs, times, vals, resets if any(resets) else None


def stack(values: list[Any], shape: tuple[int, ...]) -> np.ndarray:
    """Each message's values are a list of rows of numbers: one conversion for the poll."""
    flat = [row for msg in values for row in msg]
    with np.errstate(over="ignore"):  # overflow becomes inf: rejected as non_finite
        return np.asarray(flat, dtype=np.float32).reshape(-1, *shape)


def parse_poll(ctx: DecodeContext, values: list[bytes]) -> Bulk | None:
    """A whole poll of JSON values at once: list-comprehension parsing and column-wise checks,
    no per-message function calls or exception frames. ``None`` as soon as anything is off the
    common path (an invalid document, a ``reset`` field, an ISO or missing ``ts``, a non-finite
    value, ...)."""
    shape = ctx.sample_shape
    f = shape[0]
    try:
        # One loads per message, never over joined values: a value holding two documents
        # and another holding half of one would re-pair documents with the wrong records.
        loads = orjson.loads
        docs = [loads(v) for v in values]
    except (TypeError, orjson.JSONDecodeError):
        return None
    doc_types = set(map(type, docs))
    counts: list[int] | None = None
    if doc_types == {dict}:
        items = docs
    elif doc_types <= {dict, list}:
        counts = [len(d) if type(d) is list else 1 for d in docs]
        if min(counts) == 0 or max(counts) > ctx.max_samples_per_message:
            return None
        items = [it for d in docs for it in (d if type(d) is list else (d,))]
        if set(map(type, items)) != {dict}:
            return None
    else:
        return None
    if any("reset" in it for it in items):
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
    with np.errstate(over="ignore"):  # overflow becomes inf: rejected as non_finite below
        if value_types == {float}:  # Python floats are doubles: through float64 is exact, and faster
            flat = np.fromiter(chain.from_iterable(vals), dtype=np.float64, count=len(vals) * f)
            arr = flat.astype(np.float32).reshape(-1, *shape)
        else:  # ints convert straight to float32 (no double rounding; huge ones become inf)
            arr = np.asarray(vals, dtype=np.float32).reshape(-1, *shape)
    if not np.isfinite(arr.reshape(len(arr), -1)).all(axis=1).all():
        return None
    return Bulk(seq, event_ms, arr, counts)


def encode(seq: int, chunk: np.ndarray, ts_ms: int) -> Encoded:
    rows = chunk.tolist()
    if len(rows) == 1:
        return orjson.dumps({"seq": seq, "ts": ts_ms, "values": rows[0]}), None
    return orjson.dumps([{"seq": seq + i, "ts": ts_ms, "values": r} for i, r in enumerate(rows)]), None


FORMAT = Format(
    "json",
    parse=parse,
    stack=stack,
    parse_poll=parse_poll,
    encode=encode,
    doc='{"seq", "ts", "values"} documents, one or a list per message',
)
