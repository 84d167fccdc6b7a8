import io
from types import SimpleNamespace

import numpy as np
import orjson
import pytest
from PIL import Image

from stream_infer.pipeline.decode import Decoder


def rec(value, key=b"e1", headers=(), offset=0, timestamp=1_000):
    return SimpleNamespace(
        topic="t",
        partition=3,
        offset=offset,
        timestamp=timestamp,
        key=key,
        value=value,
        headers=list(headers),
    )


def j(doc):
    return orjson.dumps(doc)


def test_json_single_and_list_messages_decode_in_order():
    d = Decoder("json", (3,))
    res = d.decode(
        [
            rec(j({"seq": 0, "ts": 5, "values": [1, 2, 3]})),
            rec(
                j(
                    [
                        {"seq": 1, "ts": "1970-01-01T00:00:01", "values": [4, 5, 6]},
                        {"seq": 2, "values": [7, 8, 9]},
                    ]
                ),
                key=b"e2",
                timestamp=77,
            ),
        ]
    )
    assert not res.invalid
    s = res.samples
    assert s.entities == ["e1", "e2", "e2"]
    assert s.seq.tolist() == [0, 1, 2]
    assert s.event_ms.tolist() == [5, 1000, 77]  # ISO text is UTC; absent ts -> record time
    np.testing.assert_array_equal(s.values, [[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    assert s.partition.tolist() == [3, 3, 3]


@pytest.mark.parametrize(
    ("value", "key", "reason"),
    [
        (b"{nope", b"e", "undecodable"),
        (None, b"e", "undecodable"),
        (j({"seq": 1, "values": [1, 2]}), b"e", "wrong_shape"),
        (j({"seq": 1, "values": [1, "2", 3]}), b"e", "wrong_dtype"),
        (j({"seq": 1, "values": [1, 1e39, 3]}), b"e", "non_finite"),
        (j({"seq": -1, "values": [1, 2, 3]}), b"e", "bad_seq"),
        (j({"values": [1, 2, 3]}), b"e", "bad_seq"),
        (j({"seq": 1, "ts": "soon", "values": [1, 2, 3]}), b"e", "bad_timestamp"),
        (j({"seq": 1, "ts": -5, "values": [1, 2, 3]}), b"e", "bad_timestamp"),
        (j({"seq": 1, "values": [1, 2, 3]}), None, "missing_key"),
        (j({"seq": 1, "values": [1, 2, 3]}), b"\xff\xfe", "bad_key"),
        (b"x" * 5000, b"e", "oversized"),
        (j([]), b"e", "wrong_shape"),
    ],
)
def test_each_kind_of_bad_json_is_rejected_alone_with_its_reason(value, key, reason):
    d = Decoder("json", (3,), max_message_bytes=4096)
    good = rec(j({"seq": 7, "values": [1, 2, 3]}), key=b"good")
    res = d.decode([good, rec(value, key=key, offset=9), good])
    assert [m.reason for m in res.invalid] == [reason]
    assert res.invalid[0].offset == 9 and res.invalid[0].partition == 3
    assert res.samples.entities == ["good", "good"]


def test_f32_messages_carry_n_samples_with_consecutive_seq():
    d = Decoder("f32", (2,))
    arr = np.arange(6, dtype="<f4").reshape(3, 2)
    res = d.decode(
        [
            rec(arr.tobytes(), headers=[("seq", b"10"), ("ts", b"123")]),
            rec(b"\x00" * 7, headers=[("seq", b"1")]),
            rec(np.array([[np.nan, 1]], "<f4").tobytes(), headers=[("seq", b"1")]),
        ]
    )
    assert sorted(m.reason for m in res.invalid) == ["non_finite", "wrong_shape"]
    assert res.samples.seq.tolist() == [10, 11, 12]
    assert res.samples.event_ms.tolist() == [123] * 3
    np.testing.assert_array_equal(res.samples.values, arr)


def test_images_are_converted_resized_and_bad_ones_rejected():
    d = Decoder("image", (1, 8, 8))
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(buf, format="PNG")
    res = d.decode(
        [rec(buf.getvalue(), headers=[("seq", b"4")]), rec(b"\x89PNG garbage", headers=[("seq", b"5")])]
    )
    assert [m.reason for m in res.invalid] == ["bad_image"]
    assert res.samples.values.shape == (1, 1, 8, 8)
    assert np.allclose(res.samples.values, 200.0)


def test_an_image_of_huge_dimensions_is_rejected_before_its_pixels_are_decoded() -> None:
    from stream_infer.pipeline.decode import MAX_IMAGE_PIXELS

    buf = io.BytesIO()
    Image.new("L", (5000, 5000)).save(buf, format="PNG")  # ~24 KB on the wire, 25 MP decoded
    r = rec(buf.getvalue(), headers=[("seq", b"1"), ("ts", b"1700000000000")])
    res = Decoder("image", (1, 8, 8)).decode([r])
    assert [m.reason for m in res.invalid] == ["bad_image"]
    assert str(MAX_IMAGE_PIXELS) in res.invalid[0].detail


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (4, 4), 7).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("fmt", "shape", "value", "headers"),
    [
        (
            "json",
            (3,),
            j([{"seq": 5, "values": [1, 2, 3]}, {"seq": 6, "values": [1, 2, 3]}]),
            [("reset", b"1")],
        ),
        ("f32", (3,), np.zeros((2, 3), "<f4").tobytes(), [("seq", b"5"), ("reset", b"true")]),
        ("image", (1, 4, 4), _png(), [("seq", b"5"), ("reset", b"TRUE")]),
    ],
)
def test_the_reset_header_starts_a_segment_at_the_first_sample_in_every_format(fmt, shape, value, headers):
    d = Decoder(fmt, shape)
    res = d.decode(
        [rec(value, headers=headers, offset=9), rec(value, headers=[h for h in headers if h[0] != "reset"])]
    )
    assert not res.invalid
    n = len(res.samples) // 2
    assert res.samples.reset.tolist() == [True] + [False] * (2 * n - 1)
    assert res.samples.offset.tolist() == [9] * n + [0] * n


def test_a_json_sample_can_say_reset_and_a_bad_reset_is_dead_lettered():
    d = Decoder("json", (3,))
    res = d.decode(
        [
            rec(j([{"seq": 5, "values": [1, 2, 3]}, {"seq": 0, "reset": True, "values": [1, 2, 3]}])),
            rec(j({"seq": 1, "reset": "yes", "values": [1, 2, 3]}), key=b"e2"),
            rec(j({"seq": 1, "values": [1, 2, 3]}), key=b"e3", headers=[("reset", b"maybe")]),
            rec(j({"seq": 1, "reset": False, "values": [1, 2, 3]}), key=b"e4"),
        ]
    )
    assert res.samples.reset.tolist() == [False, True, False]
    assert [m.reason for m in res.invalid] == ["bad_reset", "bad_reset"]
    assert res.samples.entities == ["e1", "e1", "e4"]
