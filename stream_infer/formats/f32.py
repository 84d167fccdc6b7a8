"""``f32``: value little-endian float32 ``[n, F]``; headers ``seq`` (of the first sample; the
others follow it) and ``ts`` (event time, ms, shared by the n samples)."""

from __future__ import annotations

from typing import Any

import numpy as np

from stream_infer.errors import DecodeError
from stream_infer.formats.base import (
    DecodeContext,
    Encoded,
    Format,
    Parsed,
    Record,
    check_seq,
    check_ts,
    header_int,
    headers_of,
    seq_ts_headers,
)


def parse(ctx: DecodeContext, rec: Record) -> Parsed:
    value = rec.value or b""
    row = 4 * int(np.prod(ctx.sample_shape))
    if len(value) == 0 or len(value) % row:
        raise DecodeError("wrong_shape", f"{len(value)} bytes is not a multiple of {row} (F float32)")
    n = len(value) // row
    if n > ctx.max_samples_per_message:
        raise DecodeError("too_many_samples", f"{n} samples > {ctx.max_samples_per_message}")
    h = headers_of(rec)
    first = check_seq(header_int(h, "seq"))
    check_seq(first + n - 1)  # the last sample's seq must be in range too
    ts = check_ts(h.get("ts"), rec.timestamp)
    return list(range(first, first + n)), [ts] * n, value, None


def stack(values: list[Any], shape: tuple[int, ...]) -> np.ndarray:
    """The raw bytes of every message, joined and viewed as float32: no copy per message."""
    return np.frombuffer(b"".join(values), dtype="<f4").reshape(-1, *shape)


def encode(seq: int, chunk: np.ndarray, ts_ms: int) -> Encoded:
    return np.ascontiguousarray(chunk, "<f4").tobytes(), seq_ts_headers(seq, ts_ms)


FORMAT = Format("f32", parse=parse, stack=stack, encode=encode, doc="raw little-endian float32 [n, F]")
