"""The registration contract: a format is one ``Format`` in ``formats.FORMATS`` and a head one
``HeadType`` in ``model.heads.HEADS``; config, decoding, replay and ``make_head`` find them there."""

from __future__ import annotations

import numpy as np
import pytest

from stream_infer.config import load_settings
from stream_infer.errors import ConfigError, DecodeError, ModelError
from stream_infer.formats import FORMATS, Format
from stream_infer.formats.base import check_seq, check_ts
from stream_infer.kafka.types import ConsumedRecord
from stream_infer.model.heads import HEADS, HeadType, make_head
from stream_infer.pipeline.decode import Decoder
from stream_infer.replay import payload


def _parse_csv(ctx, rec):  # "seq,ts,v1,...,vF": one sample per message
    parts = (rec.value or b"").decode("ascii", "replace").split(",")
    if len(parts) != 2 + ctx.sample_shape[0]:
        raise DecodeError("wrong_shape", f"{len(parts)} fields")
    try:
        seq, vals = int(parts[0]), [float(x) for x in parts[2:]]
    except ValueError:
        raise DecodeError("wrong_dtype", "not numbers") from None
    return [check_seq(seq)], [check_ts(int(parts[1]), rec.timestamp)], np.asarray([vals]), None


def _encode_csv(seq, chunk, ts_ms):
    return f"{seq},{ts_ms},{','.join(map(str, chunk[0].tolist()))}".encode(), None


CSV = Format("csv", parse=_parse_csv, encode=_encode_csv, samples_per_message=1)


@pytest.fixture
def csv_registered(monkeypatch: pytest.MonkeyPatch) -> Format:
    monkeypatch.setitem(FORMATS, "csv", CSV)
    return CSV


def _rec(value: bytes, offset: int = 0) -> ConsumedRecord:
    return ConsumedRecord("in", 0, offset, 1_000, b"e1", value)


def test_an_unregistered_format_is_refused_in_one_line_naming_the_registered_ones() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(input={"format": "csv"})
    assert (
        str(err.value)
        == "invalid settings: input.format: Input should be 'json', 'f32', 'image' or 'registry'"
    )
    with pytest.raises(ValueError, match="unknown input format 'csv'"):
        Decoder("csv", (3,))


def test_a_registered_format_is_accepted_by_config_decode_and_replay(csv_registered: Format) -> None:
    assert load_settings(input={"format": "csv"}).input.format == "csv"
    with pytest.raises(ConfigError, match=r"Input should be 'json', 'f32', 'image', 'registry' or 'csv'"):
        load_settings(input={"format": "xml"})
    value, headers = payload("csv", 7, np.array([[1.5, 2.0, -3.0]], np.float32), 5_000)
    assert headers is None
    res = Decoder("csv", (3,)).decode([_rec(value), _rec(b"1,2,3", offset=1), _rec(b"8,9,inf,0,0", offset=2)])
    assert res.samples.seq.tolist() == [7] and res.samples.event_ms.tolist() == [5_000]
    np.testing.assert_array_equal(res.samples.values, [[1.5, 2.0, -3.0]])
    assert res.samples.values.dtype == np.float32
    # the orchestration's rules apply to it: per-message reasons, non-finite values
    assert [(m.offset, m.reason) for m in res.invalid] == [(1, "wrong_shape"), (2, "non_finite")]


def test_a_registered_head_kind_is_made_by_make_head(monkeypatch: pytest.MonkeyPatch) -> None:
    def fields(head, y):
        return [{"head": "sum", "total": float(r.sum())} for r in y]

    monkeypatch.setitem(HEADS, "sum", HeadType("sum", fields))
    head = make_head(["a", "b"], {"kind": "sum"}, top_k=3)
    assert head.top_k == 0  # top_k applies to classification-like kinds only
    assert head.fields(np.array([[1.0, 2.0]], np.float32)) == [{"head": "sum", "total": 3.0}]
    with pytest.raises(ModelError, match="head kind must be one of"):
        make_head(["a"], {"kind": "nope"})
