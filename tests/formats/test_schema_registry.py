"""Schema-registry input: Confluent wire-format values, Avro, JSON Schema or Protobuf, decoded with the
writer's schema fetched once per id; every bad value is one bad record with a stable reason, and
an unreachable registry stops the poll instead of dead-lettering good records."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_infer.errors import RegistryUnavailable
from stream_infer.formats.schema_registry import SchemaRegistry
from stream_infer.pipeline.decode import Decoder
from tests.processes import free_port
from tests.registry import (
    AVRO_ID,
    AVRO_LIST_ID,
    JSON_ID,
    PROTO_BAD_ID,
    PROTO_ID,
    PROTO_REF_ID,
    SAMPLES_AVRO,
    avro,
    avro_sample,
    proto_sample,
    serve_registry,
    wire,
)

TS = 1_700_000_000_000


def rec(value: bytes, key: bytes = b"e1", offset: int = 0):
    return SimpleNamespace(
        topic="t", partition=0, offset=offset, timestamp=5, key=key, value=value, headers=[]
    )


@pytest.fixture(scope="module")
def registry():
    with serve_registry() as (url, asked):
        yield SchemaRegistry(url, retry_s=2), asked


def decoder(reg: SchemaRegistry) -> Decoder:
    return Decoder("registry", (3,), registry=reg)


def test_avro_and_json_schema_values_decode_with_their_writers_schema(registry) -> None:
    reg, asked = registry
    values = [
        avro_sample(0, TS, [1.0, 2.0, 3.0]),
        wire(
            AVRO_LIST_ID,
            avro(
                [
                    {"seq": 1, "ts": TS + 1, "values": [4.0, 5.0, 6.0]},
                    {"seq": 2, "ts": TS + 2, "values": [7.0, 8.0, 9.0]},
                ],
                SAMPLES_AVRO,
            ),
        ),
        wire(JSON_ID, orjson.dumps({"seq": 3, "ts": TS + 3, "values": [1, 2, 3]})),
        avro_sample(4, TS + 4, [0.5, 0.25, 0.125]),
        proto_sample(5, TS + 5, [1.5, -2.5, 3.25]),
    ]
    res = decoder(reg).decode([rec(v, offset=i) for i, v in enumerate(values)])
    assert not res.invalid, res.invalid
    s = res.samples
    assert s.seq.tolist() == [0, 1, 2, 3, 4, 5]
    assert s.event_ms.tolist() == [TS + i for i in range(6)]  # timestamp-millis read as ms
    np.testing.assert_array_equal(s.values[4], [0.5, 0.25, 0.125])
    np.testing.assert_array_equal(s.values[5], [1.5, -2.5, 3.25])
    assert sorted(asked) == [AVRO_ID, AVRO_LIST_ID, JSON_ID, PROTO_ID]  # once per id


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"\x01" + bytes(8), "undecodable"),  # not magic 0
        (b"\x00\x00", "undecodable"),  # shorter than the header
        (wire(999, b"x"), "unknown_schema"),
        (wire(PROTO_REF_ID, b"\x00\x08\x01"), "unsupported_schema"),  # imports another subject
        (wire(PROTO_BAD_ID, b"\x00"), "unsupported_schema"),  # does not compile
        (wire(PROTO_ID, b"\x02\x0a"), "undecodable"),  # message index 5: no such type
        (proto_sample(0, TS, [1.0, 2.0, 3.0])[:-2], "undecodable"),  # truncated packed floats
        (proto_sample(0, TS, [1.0, 2.0]), "wrong_shape"),
        (avro_sample(0, TS, [1.0, 2.0, 3.0])[:-3], "undecodable"),  # truncated Avro
        (avro_sample(0, TS, [1.0, 2.0, 3.0]) + b"\x00", "undecodable"),  # bytes after the record
        (avro_sample(0, TS, [1.0, 2.0]), "wrong_shape"),  # valid Avro, two values for a 3-wide model
        (wire(JSON_ID, b"{not json"), "undecodable"),
        (avro_sample(0, 10**17, [1.0, 2.0, 3.0]), "bad_timestamp"),
    ],
)
def test_each_bad_value_is_one_bad_record_with_its_reason(registry, value: bytes, reason: str) -> None:
    reg, _ = registry
    good = avro_sample(1, TS, [1.0, 2.0, 3.0])
    res = decoder(reg).decode([rec(value, b"bad", 0), rec(good, b"e1", 1)])
    assert [m.reason for m in res.invalid] == [reason], res.invalid
    assert res.samples.entities == ["e1"]


def test_an_unknown_id_is_asked_once_then_remembered_for_a_while() -> None:
    with serve_registry() as (url, asked):
        reg = SchemaRegistry(url, retry_s=2)
        res = decoder(reg).decode([rec(wire(42, b""), offset=i) for i in range(5)])
        assert [m.reason for m in res.invalid] == ["unknown_schema"] * 5
        assert asked == [42]


def test_an_unreachable_registry_stops_the_poll_instead_of_dead_lettering_it() -> None:
    reg = SchemaRegistry(f"http://127.0.0.1:{free_port()}", retry_s=1, timeout_s=1)
    with pytest.raises(RegistryUnavailable, match="schema registry"):
        decoder(reg).decode([rec(avro_sample(0, TS, [1.0, 2.0, 3.0]))])


@settings(max_examples=300, deadline=None)
@given(
    schema_id=st.sampled_from([AVRO_ID, AVRO_LIST_ID, JSON_ID, PROTO_ID, 77]), payload=st.binary(max_size=64)
)
def test_no_payload_behind_a_valid_header_makes_decode_raise(
    registry, schema_id: int, payload: bytes
) -> None:
    reg, _ = registry
    res = decoder(reg).decode([rec(wire(schema_id, payload)), rec(avro_sample(9, TS, [1.0, 2.0, 3.0]))])
    assert res.messages == 2 and res.samples.entities.count("e1") >= 1
    assert all(m.reason != "internal_error" for m in res.invalid), res.invalid


def test_an_unusable_schema_is_fetched_and_compiled_once() -> None:
    with serve_registry() as (url, asked):
        reg = SchemaRegistry(url, retry_s=2)
        res = decoder(reg).decode([rec(wire(PROTO_BAD_ID, b"\x00"), offset=i) for i in range(4)])
        assert [m.reason for m in res.invalid] == ["unsupported_schema"] * 4
        assert asked == [PROTO_BAD_ID]
