"""The whole-poll JSON path must give exactly what the per-message path gives, for any poll."""

from types import SimpleNamespace

import numpy as np
import orjson
import pytest

from stream_infer.pipeline.decode import Decoder


def rec(value, key=b"e1", partition=0, offset=0, timestamp=1_000):
    return SimpleNamespace(
        topic="t", partition=partition, offset=offset, timestamp=timestamp, key=key, value=value, headers=[]
    )


def same(a, b):
    sa, sb = a.samples, b.samples
    assert sa.entities == sb.entities
    for name in ("seq", "event_ms", "values", "partition"):
        x, y = getattr(sa, name), getattr(sb, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        np.testing.assert_array_equal(x, y, err_msg=name)
    assert [(m.offset, m.reason) for m in a.invalid] == [(m.offset, m.reason) for m in b.invalid]
    assert a.messages == b.messages


def poll(n_messages, per_message, seed=0, ints=False, float_ts=False):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_messages):
        docs = []
        for j in range(per_message):
            v = rng.integers(-50, 50, 3).tolist() if ints else rng.normal(size=3).tolist()
            ts = 1_700_000_000_000.7 + i if float_ts else 1_700_000_000_000 + i
            docs.append({"seq": i * per_message + j, "ts": ts, "values": v})
        value = orjson.dumps(docs[0] if per_message == 1 else docs)
        out.append(rec(value, key=f"e{i % 7}".encode(), partition=i % 3, offset=i))
    return out


@pytest.mark.parametrize("per_message", [1, 4])
@pytest.mark.parametrize("ints", [False, True])
@pytest.mark.parametrize("float_ts", [False, True])
def test_fast_path_equals_per_message_path_on_valid_polls(per_message, ints, float_ts):
    d = Decoder("json", (3,))
    records = poll(50, per_message, ints=ints, float_ts=float_ts)
    fast = d._decode_fast(records)
    assert fast is not None  # valid polls take the fast path
    same(fast, d._decode_each(records))


BAD = [
    b"not json",
    orjson.dumps({"seq": 1, "values": [1.0, 2.0]}),  # wrong shape
    orjson.dumps({"seq": 1, "values": [1.0, "x", 3.0]}),  # wrong dtype
    orjson.dumps({"seq": 1, "values": [1.0, True, 3.0]}),  # a bool is not a number here
    orjson.dumps({"seq": 1, "values": [1.0, 1e39, 3.0]}),  # non-finite in float32
    orjson.dumps({"seq": 1, "ts": "yesterday", "values": [1.0, 2.0, 3.0]}),  # bad timestamp
    orjson.dumps({"seq": -1, "values": [1.0, 2.0, 3.0]}),  # bad seq
    b'{"seq": 1180591620717411303424, "values": [1.0, 2.0, 3.0]}',  # seq beyond int64
    orjson.dumps({"seq": 2**62, "values": [1.0, 2.0, 3.0]}),  # seq out of range
    orjson.dumps([]),  # empty list
    b"",  # empty value
    None,  # tombstone
    orjson.dumps({"seq": 1, "ts": "1970-01-01T00:00:01", "values": [1, 2, 3]}),  # valid, ISO ts
    orjson.dumps({"seq": 1, "values": [1, 2, 3]}),  # valid, no ts (record time)
]


@pytest.mark.parametrize("bad", range(len(BAD)))
def test_any_odd_message_gives_the_per_message_result(bad):
    d = Decoder("json", (3,))
    records = poll(20, 1)
    records.insert(7, rec(BAD[bad], key=b"odd", offset=99))
    same(d.decode(records), d._decode_each(records))


def test_bad_keys_give_the_per_message_result():
    d = Decoder("json", (3,))
    for key in (None, b"", b"\xff\xfe"):
        records = poll(10, 1)
        records.insert(3, rec(orjson.dumps({"seq": 1, "values": [1, 2, 3]}), key=key, offset=50))
        same(d.decode(records), d._decode_each(records))


def test_documents_are_never_re_paired_across_messages():
    # Individually invalid values that would form valid JSON if joined must stay invalid.
    d = Decoder("json", (3,))
    a = b'{"seq": 1, "values": [1, 2, 3]}'
    records = [
        rec(a + b"," + a.replace(b'"seq": 1', b'"seq": 2'), offset=0),
        rec(b"[" + a.replace(b'"seq": 1', b'"seq": 3'), offset=1),
        rec(a.replace(b'"seq": 1', b'"seq": 4') + b"]", offset=2),
    ]
    res = d.decode(records)
    assert len(res.samples) == 0
    assert [m.reason for m in res.invalid] == ["undecodable"] * 3


def test_oversized_and_too_many_samples_use_the_per_message_rules():
    d = Decoder("json", (3,), max_message_bytes=400, max_samples_per_message=2)
    records = poll(5, 1) + poll(2, 3, seed=1) + [rec(b" " * 500 + b"{}", offset=77)]
    same(d.decode(records), d._decode_each(records))
    assert {m.reason for m in d.decode(records).invalid} == {"too_many_samples", "oversized"}
