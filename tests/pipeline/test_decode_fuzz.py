"""Property tests: decoding never raises, accounts for every record exactly once, gives good
records exactly what was sent, and gives each record the same outcome whatever else its poll holds.

Profiles (``HYPOTHESIS_PROFILE``): ``ci`` (default; derandomized, a few thousand examples in all)
and ``nightly`` (ten times as many, random). ``make test-fuzz`` runs the nightly one.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from stream_infer.formats import FORMATS
from stream_infer.metrics import INVALID_REASONS
from stream_infer.pipeline.decode import SEQ_MAX, TS_MAX_MS, TS_MIN_MS, Decoder, DecodeResult

_COMMON: dict[str, Any] = {
    "deadline": None,  # CI runners are noisy, and time is no property under test here
    "database": None,  # nothing written into the tree; a failure prints its example (and blob)
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
settings.register_profile("ci", max_examples=400, derandomize=True, **_COMMON)
settings.register_profile("nightly", max_examples=4000, print_blob=True, **_COMMON)
FUZZ = settings(settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci")))

F = 3
JSON = Decoder("json", (F,), max_message_bytes=2048, max_samples_per_message=4)
F32 = Decoder("f32", (F,), max_message_bytes=2048, max_samples_per_message=4)
IMAGE = Decoder("image", (3, 6, 5), max_message_bytes=8192)  # C, H, W: PIL size (5, 6)
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Want:
    """What a good record must decode to."""

    entity: str
    seq: list[int]
    event_ms: list[int]
    values: np.ndarray  # [n, *sample_shape] float32
    fast: bool = False  # a poll of such JSON records takes the whole-poll path


@dataclass(frozen=True)
class Sent:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)
    timestamp: int = 1_000
    want: Want | None = None  # None: any outcome, as long as it is accounted for


# --- shared pieces ----------------------------------------------------------------------------
# Every strategy is built once, here: building strategies inside a draw costs more than the draw.

BOOLS = st.booleans()
RECORD_MS = st.integers(TS_MIN_MS, TS_MAX_MS - 1)
GOOD_KEYS = st.text(min_size=1, max_size=8).map(str.encode)
ANY_KEYS = st.one_of(st.none(), st.just(b""), st.binary(max_size=8), GOOD_KEYS)
MOSTLY_GOOD_KEYS = st.one_of(GOOD_KEYS, GOOD_KEYS, ANY_KEYS)
FLOATS32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
NUMBERS32 = st.one_of(FLOATS32, st.integers(-(2**24), 2**24))  # exact in float32
ROW = st.lists(NUMBERS32, min_size=F, max_size=F)
SEQS = st.integers(0, SEQ_MAX - 1)
ZFILL = st.integers(1, 20)


@st.composite
def iso_ts(draw: st.DrawFn) -> tuple[str, int]:
    """ISO-8601 text of an instant in range, in some offset or naive (UTC), and its ms."""
    us = draw(_ISO_US)
    spec = draw(_ISO_SPECS)
    us -= us % {"seconds": 1_000_000, "milliseconds": 1000}.get(spec, 1)
    utc = EPOCH + timedelta(microseconds=us)
    offset_min = draw(_ISO_OFFSETS)
    if offset_min is None:
        text = utc.replace(tzinfo=None).isoformat(timespec=spec)
    else:
        text = utc.astimezone(timezone(timedelta(minutes=offset_min))).isoformat(timespec=spec)
        if offset_min == 0 and draw(BOOLS):
            text = text.replace("+00:00", "Z")
    return text, us // 1000


_ISO_US = st.integers(TS_MIN_MS * 1000, TS_MAX_MS * 1000 - 1)
_ISO_SPECS = st.sampled_from(("auto", "seconds", "milliseconds", "microseconds"))
_ISO_OFFSETS = st.one_of(st.none(), st.integers(-(23 * 60 + 59), 23 * 60 + 59))
ISO_TS = iso_ts()


@st.composite
def good_ts(draw: st.DrawFn, text_only: bool = False) -> tuple[Any, int | None]:
    """(ts as sent, or None for absent; ms it must decode to, None for the record time)."""
    ms = draw(RECORD_MS)
    form = draw(_TEXT_TS_FORMS if text_only else _TS_FORMS)
    if form == "int":
        return ms, ms
    if form == "float":
        f = draw(_FLOAT_TS)
        return f, int(f)
    if form == "digits":
        return str(ms).zfill(draw(ZFILL)), ms
    if form == "iso":
        return draw(ISO_TS)
    return None, None


_TS_FORMS = st.sampled_from(("int", "float", "digits", "iso", "absent"))
_TEXT_TS_FORMS = st.sampled_from(("digits", "iso", "absent"))
_FLOAT_TS = st.floats(min_value=TS_MIN_MS, max_value=TS_MAX_MS - 1)
GOOD_TS = good_ts()
GOOD_TEXT_TS = good_ts(text_only=True)

NEAR_SEQ: list[Any] = [-1, SEQ_MAX, SEQ_MAX + 1, 2**63, 2**64 - 1, 2**70, -(2**70), 1.0, 1.5, 1e300]
NEAR_SEQ += ["5", "", True, False, None, [1], {"seq": 1}]
NEAR_TS: list[Any] = [-1, -0.5, TS_MAX_MS, TS_MAX_MS + 0.5, 2**63, 2**64 - 1, 10**30, 1e300, -1e300]
NEAR_TS += [True, False, [], [1], {}, {"ts": 1}, "", " ", "99999999999999999999", "1" * 21, "1" * 5000]
NEAR_TS += ["\u0663", "1e3", "nan", "inf", "NaN", "-1", "+5", " 5", "1_000", "0x10", "1.5", "yesterday"]
NEAR_TS += ["9999-12-31T23:59:59", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"]
NEAR_TS += ["2200-01-01T00:00:00Z", "2200-01-01T00:00:00+00:00", "1969-12-31T23:59:59.999+00:00"]
NEAR_TS += ["2024-13-01", "2024-02-30T00:00:00", "2024-01-01T25:00", "T", "2024-01-01T00:00:00+24:00"]
# the near misses most likely to break a parser, sampled more often than the rest
OUT_OF_RANGE_TS: list[Any] = ["99999999999999999999", "1" * 5000, 2**64 - 1, 10**30, TS_MAX_MS, -1]
OUT_OF_RANGE_TS += ["9999-12-31T23:59:59", "0001-01-01T00:00:00+01:00", "2200-01-01T00:00:00Z"]
NEAR_VALUES: list[Any] = [[], [1.0] * (F - 1), [1.0] * (F + 1), [[1.0] * F], [[1.0]] * F, None, 1.0, "1,2,3"]
NEAR_VALUES += [[1.0, "2", 3.0], [1.0, True, 3.0], [1.0, None, 3.0], [1.0, [2.0], 3.0], [1.0, {}, 3.0]]
NEAR_VALUES += [[1e39, 0, 0], [-1e39, 0, 0], [1e308, 0, 0], [float("nan"), 0, 0], [float("inf"), 0, 0]]
NEAR_VALUES += [[2**64 - 1, 0, 0], [2**70, 0, 0], [-(2**63) - 1, 0, 0], [10**400, 0, 0], [5e-324, 0, 0]]

FIELDS = st.sampled_from(("seq", "ts", "values"))
JSON_VALUES = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12), st.sampled_from(NEAR_TS)
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(FIELDS | st.text(max_size=4), inner, max_size=4),
    ),
    max_leaves=8,
)


def dumps(doc: Any) -> bytes:
    """JSON text of anything Python's json module writes: big ints, NaN and Infinity included."""
    return json.dumps(doc).encode()


_MUTATIONS = st.sampled_from(("truncate", "flip", "double", "append", "prepend"))
_SEPARATORS = st.sampled_from((b"", b",", b" ", b"\n"))
_JUNK = st.binary(min_size=1, max_size=8)
_BYTE = st.integers(1, 255)
_INDEX = st.integers(0, 2**16)  # taken modulo the length


def mutate(draw: st.DrawFn, good: bytes) -> bytes:
    """A good value truncated, bit-flipped, doubled or padded."""
    kind = draw(_MUTATIONS)
    if kind in ("truncate", "flip") and good:
        i = draw(_INDEX) % len(good)
        return good[:i] if kind == "truncate" else good[:i] + bytes([good[i] ^ draw(_BYTE)]) + good[i + 1 :]
    if kind == "double":
        return good + draw(_SEPARATORS) + good
    if kind == "append":
        return good + draw(_JUNK)
    return draw(_JUNK) + good


# --- json ---------------------------------------------------------------------------------------

SAMPLES_PER_JSON = st.integers(1, JSON.max_samples_per_message)


def json_items(draw: st.DrawFn, n: int) -> tuple[list[dict[str, Any]], list[int], list[Any], np.ndarray]:
    """n good samples: the objects sent, their seqs, their ts as sent, their values in float32."""
    docs, seqs, ts_sent, rows = [], [], [], []
    for _ in range(n):
        row, seq, (ts, _) = draw(ROW), draw(SEQS), draw(GOOD_TS)
        doc: dict[str, Any] = {"seq": seq, "values": row}
        if ts is not None:
            doc["ts"] = ts
        docs.append(doc)
        seqs.append(seq)
        ts_sent.append(ts)
        rows.append(row)
    return docs, seqs, ts_sent, np.asarray(rows, np.float32).reshape(n, F)


def _json_ms(ts: Any, record_ms: int) -> int:
    if ts is None:
        return record_ms
    if isinstance(ts, str):
        if ts.isdigit():
            return int(ts)
        dt = datetime.fromisoformat(ts)
        dt = dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)
        return (dt - EPOCH) // timedelta(milliseconds=1)
    return int(ts)


@st.composite
def good_json(draw: st.DrawFn) -> Sent:
    key, rec_ms = draw(GOOD_KEYS), draw(RECORD_MS)
    n = draw(SAMPLES_PER_JSON)
    docs, seqs, ts_sent, values = json_items(draw, n)
    as_list = n > 1 or draw(BOOLS)
    want = Want(
        entity=key.decode(),
        seq=seqs,
        event_ms=[_json_ms(t, rec_ms) for t in ts_sent],
        values=values,
        fast=all(type(t) in (int, float) for t in ts_sent),
    )
    return Sent(key, dumps(docs if as_list else docs[0]), timestamp=rec_ms, want=want)


_JSON_KINDS = st.sampled_from(("seq", "ts", "values", "drop", "extra", "item", "count", "doc", "bytes"))
_NEAR_FIELD = {
    "seq": st.one_of(st.sampled_from(NEAR_SEQ), JSON_VALUES),
    "ts": st.one_of(st.sampled_from(OUT_OF_RANGE_TS), st.sampled_from(NEAR_TS), JSON_VALUES),
    "values": st.one_of(st.sampled_from(NEAR_VALUES), JSON_VALUES),
}
_EXTRA_NAMES = st.text(max_size=6)
_COUNT_KINDS = st.sampled_from(("empty", "too_many", "nested"))
_ODD_JSON = st.sampled_from((b"", b"null", b"NaN", b'{"seq": NaN}', b"[", b"\xff"))
_BYTE_KINDS = st.sampled_from(("mutate", "oversize", "odd"))


@st.composite
def near_json(draw: st.DrawFn) -> Sent:
    """A good document with one thing wrong (or perhaps right after all: outcome unchecked)."""
    key = draw(MOSTLY_GOOD_KEYS)
    n = draw(SAMPLES_PER_JSON)
    docs: Any = json_items(draw, n)[0]
    kind = draw(_JSON_KINDS)
    i = draw(_INDEX) % n
    if kind in ("seq", "ts", "values"):
        docs[i][kind] = draw(_NEAR_FIELD[kind])
    elif kind == "drop":
        docs[i].pop(draw(FIELDS), None)
    elif kind == "extra":
        docs[i][draw(_EXTRA_NAMES)] = draw(JSON_VALUES)
    elif kind == "item":
        docs[i] = draw(JSON_VALUES)
    elif kind == "count":
        docs = {"empty": [], "too_many": docs * 5, "nested": [docs]}[draw(_COUNT_KINDS)]
    doc: Any = docs if n > 1 or kind == "count" or draw(BOOLS) else docs[0]
    if kind == "doc":
        doc = draw(JSON_VALUES)
    value = dumps(doc)
    if kind == "bytes":
        how = draw(_BYTE_KINDS)
        if how == "mutate":
            value = mutate(draw, value)
        elif how == "oversize":
            value = b" " * JSON.max_message_bytes + value
        else:
            value = draw(_ODD_JSON)
    return Sent(key, value, timestamp=draw(RECORD_MS))


_ANY_HEADERS = st.lists(
    st.tuples(st.sampled_from(("seq", "ts")) | st.text(max_size=4), st.none() | st.binary(max_size=24)),
    max_size=4,
)
_ANY_VALUES = st.one_of(st.none(), st.binary(max_size=64))


@st.composite
def any_record(draw: st.DrawFn) -> Sent:
    """Arbitrary bytes everywhere, headers included."""
    headers = draw(_ANY_HEADERS)
    if draw(BOOLS):  # a usable seq (the last header of a name wins), so the bytes get decoded
        headers.append(("seq", b"7"))
    return Sent(draw(ANY_KEYS), draw(_ANY_VALUES), headers, draw(RECORD_MS))


# --- f32 ----------------------------------------------------------------------------------------

ROWS32 = {n: arrays(np.float32, (n, F), elements=FLOATS32) for n in range(1, F32.max_samples_per_message + 1)}
SAMPLES_PER_F32 = st.sampled_from(sorted(ROWS32))
NEAR_SEQ_HEADERS: list[bytes | None] = [None, b"", b"-1", b"+1", b" 1", b"1 ", b"1_0", b"0x10", b"1.0"]
NEAR_SEQ_HEADERS += ["\u0663".encode(), b"\xff", b"99999999999999999999", b"1" * 5000, b"0" * 21 + b"1"]
NEAR_SEQ_HEADERS += [str(v).encode() for v in (SEQ_MAX, SEQ_MAX - 1, 2**63, 2**64)]


def _header_text(v: Any) -> bytes | None:
    return None if v is None else v if isinstance(v, bytes) else str(v).encode("utf-8", "surrogatepass")


_NEAR_HEADER = {
    "seq": st.one_of(st.sampled_from(NEAR_SEQ_HEADERS), st.binary(max_size=24)),
    "ts": st.one_of(
        st.sampled_from([_header_text(v) for v in OUT_OF_RANGE_TS]),
        st.sampled_from([_header_text(v) for v in NEAR_TS] + [None, b"\xff\xfe", b"nan"]),
        st.binary(max_size=24),
    ),
}
_HEADER_NAMES = st.sampled_from(("seq", "ts"))
_EXTRA_HEADERS = st.lists(
    st.tuples(st.sampled_from(("", "x", "trace-id", "SEQ", "Ts", "seq ")), st.binary(max_size=8)), max_size=2
)


def good_headers(
    draw: st.DrawFn, n: int, rec_ms: int
) -> tuple[list[tuple[str, bytes | None]], list[int], int]:
    """seq and ts headers for n samples, anywhere among other headers; the seqs and the ms."""
    first = draw(SEQS) % (SEQ_MAX - n + 1)
    ts, ms = draw(GOOD_TEXT_TS)
    headers: list[tuple[str, bytes | None]] = draw(_EXTRA_HEADERS)
    headers.insert(draw(_INDEX) % (len(headers) + 1), ("seq", str(first).zfill(draw(ZFILL)).encode()))
    if ts is not None:
        headers.insert(draw(_INDEX) % (len(headers) + 1), ("ts", ts.encode()))
    return headers, list(range(first, first + n)), rec_ms if ms is None else ms


def bad_headers(draw: st.DrawFn, headers: list[tuple[str, bytes | None]]) -> list[tuple[str, bytes | None]]:
    """One of seq and ts missing or replaced by a near miss."""
    name = draw(_HEADER_NAMES)
    rest = [(k, v) for k, v in headers if k != name]
    if draw(BOOLS):  # else: the header is missing
        rest.append((name, draw(_NEAR_HEADER[name])))
    return rest


@st.composite
def good_f32(draw: st.DrawFn) -> Sent:
    key, rec_ms = draw(GOOD_KEYS), draw(RECORD_MS)
    rows = draw(ROWS32[draw(SAMPLES_PER_F32)])
    headers, seqs, ms = good_headers(draw, len(rows), rec_ms)
    want = Want(key.decode(), seqs, [ms] * len(rows), rows)
    return Sent(key, rows.astype("<f4").tobytes(), headers, rec_ms, want)


_F32_KINDS = st.sampled_from(("headers", "headers", "last_seq", "non_finite", "count", "bytes"))
_NON_FINITE = st.sampled_from((np.nan, np.inf, -np.inf))
_LAST_SEQ_BACK = st.integers(1, 3)
_VALUE_KINDS = st.sampled_from(("none", "empty", "mutate", "binary"))
_BINARY = st.binary(max_size=64)


def odd_value(draw: st.DrawFn, good: bytes) -> bytes | None:
    """A tombstone, an empty value, a good value mutated, or arbitrary bytes."""
    how = draw(_VALUE_KINDS)
    if how == "none":
        return None
    if how == "empty":
        return b""
    return mutate(draw, good) if how == "mutate" else draw(_BINARY)


@st.composite
def near_f32(draw: st.DrawFn) -> Sent:
    key, rec_ms = draw(MOSTLY_GOOD_KEYS), draw(RECORD_MS)
    rows = draw(ROWS32[draw(SAMPLES_PER_F32)])
    headers, _, _ = good_headers(draw, len(rows), rec_ms)
    value: bytes | None = rows.tobytes()
    kind = draw(_F32_KINDS)
    if kind == "headers":
        headers = bad_headers(draw, headers)
    elif kind == "last_seq":  # the first seq fits, the last does not (unless there is one sample)
        last = str(SEQ_MAX - draw(_LAST_SEQ_BACK)).encode()
        headers = [(k, v) for k, v in headers if k != "seq"] + [("seq", last)]
    elif kind == "non_finite":
        bad = rows.copy()
        bad.flat[draw(_INDEX) % bad.size] = draw(_NON_FINITE)
        value = bad.tobytes()
    elif kind == "count":
        value = np.zeros((F32.max_samples_per_message + 1, F), np.float32).tobytes()
    else:
        value = odd_value(draw, rows.tobytes())
    return Sent(key, value, headers, rec_ms)


# --- image --------------------------------------------------------------------------------------

_C, _H, _W = IMAGE.sample_shape
_MODES = st.sampled_from(("RGB", "RGBA", "L"))
_PIXELS = {
    mode: arrays(np.uint8, shape)
    for mode, shape in (("RGB", (_H, _W, 3)), ("RGBA", (_H, _W, 4)), ("L", (_H, _W)))
}
_OTHER_SIZES = {hw: arrays(np.uint8, (*hw, 3)) for hw in ((_H, _W), (1, 1), (9, 4), (_W, _H))}
_SIZES = st.sampled_from(sorted(_OTHER_SIZES))
_IMAGE_FORMATS = st.sampled_from(("PNG", "JPEG", "GIF", "BMP"))
_IMAGE_KINDS = st.sampled_from(("as_is", "headers", "bytes"))  # as_is: resized, lossy or refused


def _encode(a: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format=fmt)
    return buf.getvalue()


@st.composite
def good_image(draw: st.DrawFn) -> Sent:
    """A lossless frame of exactly the model's size: RGB, RGBA (alpha dropped) or grayscale."""
    key, rec_ms = draw(GOOD_KEYS), draw(RECORD_MS)
    mode = draw(_MODES)
    a = draw(_PIXELS[mode])
    rgb = np.repeat(a[..., None], 3, axis=2) if mode == "L" else a[..., :3]
    headers, seqs, ms = good_headers(draw, 1, rec_ms)
    want = Want(key.decode(), seqs, [ms], rgb.transpose(2, 0, 1)[None].astype(np.float32))
    return Sent(key, _encode(a, "PNG"), headers, rec_ms, want)


@st.composite
def near_image(draw: st.DrawFn) -> Sent:
    key, rec_ms = draw(MOSTLY_GOOD_KEYS), draw(RECORD_MS)
    a = draw(_OTHER_SIZES[draw(_SIZES)])
    headers, _, _ = good_headers(draw, 1, rec_ms)
    value: bytes | None = _encode(a, draw(_IMAGE_FORMATS))
    kind = draw(_IMAGE_KINDS)
    if kind == "headers":
        headers = bad_headers(draw, headers)
    elif kind == "bytes":
        value = odd_value(draw, value or b"")
    return Sent(key, value, headers, rec_ms)


# --- the properties -----------------------------------------------------------------------------


def _records(sent: list[Sent]) -> list[SimpleNamespace]:
    """Record i has offset i and partition i, so its samples are found by partition."""
    return [
        SimpleNamespace(
            topic="t",
            partition=i,
            offset=i,
            timestamp=s.timestamp,
            key=s.key,
            value=s.value,
            headers=list(s.headers),
        )
        for i, s in enumerate(sent)
    ]


def _outcomes(decoder: Decoder, res: DecodeResult, ids: list[int]) -> dict[int, tuple[Any, ...]]:
    """Per record: ("ok", entities, seqs, event ms, value bytes) or ("invalid", reason, detail).
    Asserts the result's shape and that every record is accounted for exactly once."""
    s = res.samples
    assert res.messages == len(ids)
    assert s.seq.dtype == np.int64 and s.event_ms.dtype == np.int64 and s.partition.dtype == np.int32
    assert s.values.dtype == np.float32 and s.values.shape == (len(s), *decoder.sample_shape)
    assert len(s.entities) == len(s.seq) == len(s.event_ms) == len(s.partition)
    parts = s.partition.tolist()
    assert parts == sorted(parts), "samples are in arrival order"
    out: dict[int, tuple[Any, ...]] = {}
    for m in res.invalid:
        assert m.reason in INVALID_REASONS, m.reason
        assert m.offset not in out, f"record {m.offset} dead-lettered twice"
        out[m.offset] = ("invalid", m.reason, m.detail)
    for p in dict.fromkeys(parts):
        idx = np.flatnonzero(s.partition == p)
        assert p not in out, f"record {p} both decoded and dead-lettered"
        ents = [s.entities[i] for i in idx]
        out[p] = ("ok", ents, s.seq[idx].tolist(), s.event_ms[idx].tolist(), s.values[idx].tobytes())
    assert sorted(out) == ids, "every record is accounted for"
    return out


def _check(decoder: Decoder, sent: list[Sent]) -> dict[int, tuple[Any, ...]]:
    records = _records(sent)
    got = _outcomes(decoder, decoder.decode(records), list(range(len(records))))
    for i, s in enumerate(sent):
        if s.want is not None:
            w = s.want
            want = ("ok", [w.entity] * len(w.seq), w.seq, w.event_ms, w.values.astype(np.float32).tobytes())
            assert got[i] == want, f"good record {i}: {sent[i]}"
        alone = _outcomes(decoder, decoder.decode([records[i]]), [i])[i]
        assert got[i] == alone, f"record {i} decodes differently alone: {sent[i]}"
    return got


def _mixed(good: st.SearchStrategy[Sent], *others: st.SearchStrategy[Sent]) -> st.SearchStrategy[list[Sent]]:
    """Polls holding some good records and some others, in any order."""
    return st.tuples(st.lists(good, max_size=4), st.lists(st.one_of(*others), max_size=4)).flatmap(
        lambda t: st.permutations(t[0] + t[1])
    )


@FUZZ
@given(_mixed(good_json(), near_json(), near_json(), any_record()))
def test_json_polls_of_anything_decode_without_raising_and_account_for_every_record(sent):
    _check(JSON, sent)


@FUZZ
@given(st.lists(good_json(), min_size=1, max_size=8))
def test_json_polls_of_good_records_decode_to_what_was_sent_on_the_fast_path(sent):
    got = _check(JSON, sent)
    assert all(o[0] == "ok" for o in got.values())
    if all(s.want is not None and s.want.fast for s in sent):
        assert JSON._decode_fast(_records(sent)) is not None


@FUZZ
@given(_mixed(good_f32(), near_f32(), near_f32(), any_record()))
def test_f32_polls_of_anything_decode_without_raising_and_account_for_every_record(sent):
    _check(F32, sent)


@FUZZ
@given(_mixed(good_image(), near_image(), near_image(), any_record()))
def test_image_polls_of_anything_decode_without_raising_and_account_for_every_record(sent):
    _check(IMAGE, sent)


@FUZZ
@given(st.sampled_from([JSON, F32, IMAGE]), st.lists(any_record(), max_size=6))
def test_arbitrary_bytes_never_raise_in_any_format(decoder, sent):
    _check(decoder, sent)


# --- regressions: exact messages ----------------------------------------------------------------


def rec(value, key=b"e1", headers=(), offset=0, timestamp=1_000):
    return SimpleNamespace(
        topic="t",
        partition=0,
        offset=offset,
        timestamp=timestamp,
        key=key,
        value=value,
        headers=list(headers),
    )


def _reasons(decoder: Decoder, odd: SimpleNamespace, good: SimpleNamespace) -> list[str]:
    res = decoder.decode([good, odd, good])
    assert len(res.samples) == 2 * len(decoder.decode([good]).samples)
    return [m.reason for m in res.invalid]


JSON_GOOD = rec(b'{"seq": 1, "ts": 5, "values": [1, 2, 3]}')
F32_GOOD = rec(np.ones((2, F), "<f4").tobytes(), headers=[("seq", b"1"), ("ts", b"5")])


@pytest.mark.parametrize(
    "ts",
    [
        '"99999999999999999999"',
        '"' + "9" * 5000 + '"',
        "99999999999999999999",
        "1e300",
        "7258118400000",
        "-1",
        '"9999-12-31T23:59:59"',
        '"2200-01-01T00:00:00Z"',
        '"1969-12-31T23:59:59.999Z"',
        '"0001-01-01T00:00:00+01:00"',
        "true",
        '"\u0663"',
    ],
)
def test_out_of_range_or_odd_json_ts_is_bad_timestamp(ts):
    odd = rec(b'{"seq": 1, "ts": %s, "values": [1, 2, 3]}' % ts.encode(), offset=9)
    assert _reasons(Decoder("json", (F,)), odd, JSON_GOOD) == ["bad_timestamp"]


@pytest.mark.parametrize(
    ("ts", "ms"),
    [
        ('"1970-01-01T00:00:00Z"', TS_MIN_MS),
        ('"2199-12-31T23:59:59.999+00:00"', TS_MAX_MS - 1),
        ('"2199-12-31T23:59:59.999999"', TS_MAX_MS - 1),
        ('"2200-01-01T00:59:59.999+01:00"', TS_MAX_MS - 1),
        ('"7258118399999"', TS_MAX_MS - 1),
        ("7258118399999", TS_MAX_MS - 1),
        ("7258118399999.9", TS_MAX_MS - 1),
        ("0", TS_MIN_MS),
    ],
)
def test_json_ts_at_the_edges_of_the_range_is_accepted(ts, ms):
    res = Decoder("json", (F,)).decode([rec(b'{"seq": 1, "ts": %s, "values": [1, 2, 3]}' % ts.encode())])
    assert not res.invalid
    assert res.samples.event_ms.tolist() == [ms]


@pytest.mark.parametrize("fmt", ["f32", "image"])
@pytest.mark.parametrize(
    "ts",
    [b"99999999999999999999", b"9" * 5000, b"7258118400000", b"9999-12-31T23:59:59", b"nan", b"inf", b"-1"],
)
def test_out_of_range_or_odd_header_ts_is_bad_timestamp(fmt, ts):
    if fmt == "f32":
        decoder, good = Decoder("f32", (F,)), F32_GOOD
        odd = rec(good.value, headers=[("seq", b"1"), ("ts", ts)], offset=9)
    else:
        decoder = Decoder("image", (3, 6, 5))
        png = _encode(np.zeros((6, 5, 3), np.uint8), "PNG")
        good = rec(png, headers=[("seq", b"1"), ("ts", b"5")])
        odd = rec(png, headers=[("seq", b"1"), ("ts", ts)], offset=9)
    assert _reasons(decoder, odd, good) == ["bad_timestamp"]


@pytest.mark.parametrize(
    "seq", [b"-1", b"+1", b" 1", b"1_0", b"99999999999999999999", b"9" * 5000, str(SEQ_MAX).encode(), b""]
)
def test_negative_huge_or_non_digit_seq_header_is_bad_seq(seq):
    odd = rec(F32_GOOD.value, headers=[("seq", seq), ("ts", b"5")], offset=9)
    assert _reasons(Decoder("f32", (F,)), odd, F32_GOOD) == ["bad_seq"]


def test_f32_last_sample_seq_must_be_in_range_too():
    d = Decoder("f32", (F,))
    last = str(SEQ_MAX - 1).encode()
    one = rec(np.ones((1, F), "<f4").tobytes(), headers=[("seq", last)])
    two = rec(np.ones((2, F), "<f4").tobytes(), headers=[("seq", last)], offset=1)
    res = d.decode([one, two])
    assert res.samples.seq.tolist() == [SEQ_MAX - 1]
    assert [(m.offset, m.reason) for m in res.invalid] == [(1, "bad_seq")]


@pytest.mark.parametrize(
    "seq", ["-1", "4611686018427387904", "18446744073709551615", "1180591620717411303424"]
)
def test_negative_or_huge_json_seq_is_bad_seq(seq):
    odd = rec(b'{"seq": %s, "values": [1, 2, 3]}' % seq.encode(), offset=9)
    assert _reasons(Decoder("json", (F,)), odd, JSON_GOOD) == ["bad_seq"]


def test_an_unexpected_exception_dead_letters_that_message_alone_as_internal_error(monkeypatch):
    parse = FORMATS["json"].parse

    def flaky(self, r):
        if r.offset == 9:
            raise RuntimeError("boom " + "x" * 500)
        return parse(self, r)

    monkeypatch.setitem(FORMATS, "json", dataclasses.replace(FORMATS["json"], parse=flaky))
    d = Decoder("json", (F,))
    iso = rec(b'{"seq": 1, "ts": "1970-01-01T00:00:01", "values": [1, 2, 3]}')  # off the fast path
    res = d.decode([iso, rec(JSON_GOOD.value, offset=9)])
    assert [(m.offset, m.reason) for m in res.invalid] == [(9, "internal_error")]
    assert res.invalid[0].detail.startswith("RuntimeError: boom")
    assert len(res.invalid[0].detail) <= 200
    assert res.samples.seq.tolist() == [1]


def test_a_failing_fast_path_falls_back_to_the_per_message_path(monkeypatch):
    d = Decoder("json", (F,))

    def broken(self, records):
        raise MemoryError("no")

    monkeypatch.setattr(Decoder, "_decode_fast", broken)
    res = d.decode([JSON_GOOD, rec(b"{", offset=1)])
    assert res.samples.seq.tolist() == [1]
    assert [m.reason for m in res.invalid] == ["undecodable"]


def test_a_message_that_breaks_the_poll_wide_conversion_is_dead_lettered_and_the_rest_kept(monkeypatch):
    d = Decoder("f32", (F,))
    stack = Decoder._stack
    poison = np.full((1, F), 7, "<f4").tobytes()

    def fragile(self, values, counts):
        if poison in values:
            raise OverflowError("cannot convert")
        return stack(self, values, counts)

    monkeypatch.setattr(Decoder, "_stack", fragile)
    odd = rec(poison, headers=[("seq", b"3")], offset=1)
    res = d.decode([F32_GOOD, odd, rec(F32_GOOD.value, headers=[("seq", b"5")], offset=2)])
    assert [(m.offset, m.reason, m.detail) for m in res.invalid] == [
        (1, "internal_error", "OverflowError: cannot convert")
    ]
    assert res.samples.seq.tolist() == [1, 2, 5, 6]
    assert res.samples.values.shape == (4, F)
