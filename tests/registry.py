"""A schema registry for tests: the Confluent API's read path (``GET /schemas/ids/<id>``), served
from memory on a local port, and the wire format written with fastavro. Not a registry product:
the decoding side is what is under test, and the bytes follow the documented wire format (magic
0, big-endian schema id, Avro binary or JSON text)."""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import fastavro

from tests.http_json import serve_json

SAMPLE_AVRO = {
    "type": "record",
    "name": "Sample",
    "namespace": "sensors",
    "fields": [
        {"name": "seq", "type": "long"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "values", "type": {"type": "array", "items": "float"}},
    ],
}
SAMPLES_AVRO = {"type": "array", "items": SAMPLE_AVRO}
SAMPLE_JSON_SCHEMA = {
    "type": "object",
    "properties": {"seq": {"type": "integer"}, "ts": {"type": "integer"}, "values": {"type": "array"}},
    "required": ["seq", "values"],
}
# Sample is the second message type: values name it with message indexes [1].
SAMPLE_PROTO = """syntax = "proto3";
package sensors;
message Header { string source = 1; }
message Sample {
  int64 seq = 1;
  int64 ts = 2;
  repeated float values = 3;
}
"""
# The ids the test registry serves: Avro one sample, Avro a list, JSON Schema, Protobuf, a
# Protobuf schema that imports another subject, one that does not compile.
AVRO_ID, AVRO_LIST_ID, JSON_ID, PROTO_ID, PROTO_REF_ID, PROTO_BAD_ID = 1, 2, 3, 4, 5, 6
SCHEMAS: dict[int, dict[str, Any]] = {
    AVRO_ID: {"schema": json.dumps(SAMPLE_AVRO)},
    AVRO_LIST_ID: {"schema": json.dumps(SAMPLES_AVRO)},
    JSON_ID: {"schemaType": "JSON", "schema": json.dumps(SAMPLE_JSON_SCHEMA)},
    PROTO_ID: {"schemaType": "PROTOBUF", "schema": SAMPLE_PROTO},
    PROTO_REF_ID: {
        "schemaType": "PROTOBUF",
        "schema": 'syntax = "proto3"; import "other.proto"; message S { Other o = 1; }',
        "references": [{"name": "other.proto", "subject": "other", "version": 1}],
    },
    PROTO_BAD_ID: {"schemaType": "PROTOBUF", "schema": "syntax = 'proto3'; message { broken"},
}


def wire(schema_id: int, payload: bytes) -> bytes:
    return b"\x00" + schema_id.to_bytes(4, "big") + payload


def avro(doc: Any, schema: dict[str, Any] = SAMPLE_AVRO) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), doc)
    return buf.getvalue()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def proto_sample(seq: int, ts_ms: int, values: list[float]) -> bytes:
    """One ``sensors.Sample`` in the wire format (schema ``PROTO_ID``), encoded by hand from the
    Protobuf encoding rules: message indexes [1] (zigzag: count 1 -> 2, index 1 -> 2), then
    field 1 and 2 as varints and field 3 as packed little-endian floats."""
    packed = struct.pack(f"<{len(values)}f", *values)
    body = b"\x08" + _varint(seq) + b"\x10" + _varint(ts_ms) + b"\x1a" + _varint(len(packed)) + packed
    return wire(PROTO_ID, b"\x02\x02" + body)


def avro_sample(seq: int, ts_ms: int, values: list[float]) -> bytes:
    """One sample in the wire format (schema ``AVRO_ID``)."""
    return wire(AVRO_ID, avro({"seq": seq, "ts": ts_ms, "values": values}))


@contextmanager
def serve_registry(schemas: dict[int, dict[str, Any]] = SCHEMAS) -> Iterator[tuple[str, list[int]]]:
    """(url, the ids asked for, in order) of a registry serving ``schemas``."""
    asked: list[int] = []

    def answer(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict]:
        parts = path.rstrip("/").split("/")
        if method != "GET" or len(parts) != 4 or parts[1:3] != ["schemas", "ids"] or not parts[3].isdigit():
            return 404, {"error_code": 404}
        sid = int(parts[3])
        asked.append(sid)
        return (200, schemas[sid]) if sid in schemas else (404, {"error_code": 40403})

    with serve_json(answer) as url:
        yield url, asked
