"""``registry``: a Confluent schema-registry wire-format value (magic byte, schema id, then an
Avro, Protobuf or JSON Schema payload; ``schema_registry``), holding the same documents as
``json``."""

from __future__ import annotations

from stream_infer.formats import schema_registry
from stream_infer.formats.base import DecodeContext, Format, Parsed, Record
from stream_infer.formats.json import samples_of, stack


def parse(ctx: DecodeContext, rec: Record) -> Parsed:
    reg = ctx.registry
    assert reg is not None, "format registry needs a SchemaRegistry"
    schema_id, payload = schema_registry.split_wire(rec.value or b"")
    doc = schema_registry.decode_value(reg.get(schema_id), payload)
    return samples_of(ctx, doc, rec)


FORMAT = Format(
    "registry",
    parse=parse,
    stack=stack,
    needs_registry=True,
    doc="schema-registry wire format (Avro, Protobuf, JSON Schema) of the json documents",
)
