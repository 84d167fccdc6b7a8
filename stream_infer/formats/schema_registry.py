"""Schema Registry input: values in the Confluent wire format, decoded with the writer's schema.

Wire format (Confluent Schema Registry, also served by Apicurio's Confluent-compatible API)::

    byte 0      magic 0
    bytes 1-4   schema id, big-endian
    bytes 5-    the value: Avro binary (schemaType AVRO, the default), JSON text (JSON), or for
                PROTOBUF the message indexes (zigzag varints: a count, then the path of the
                message type in the schema; a single 0 byte for the first message) and then
                the Protobuf binary

The schema of an id is fetched once (``GET <url>/schemas/ids/<id>``; ids are immutable) and
cached; a Protobuf schema (``.proto`` text) is compiled with protoc (grpcio-tools, in process)
into message classes. A value that is not in the wire format, or whose id the registry does not
know, is one bad record (``undecodable``, ``unknown_schema``); a schema that cannot be used (a
Protobuf schema that imports other registry subjects, one protoc rejects) is
``unsupported_schema``. A
registry that cannot be asked is not about one record: ``RegistryUnavailable`` stops the service
without a commit, so nothing is dead-lettered for the registry's sake. The decoded document is
then checked like a ``json`` message (``seq``, ``ts``, ``values``); Avro ``timestamp-millis``
values are read as their raw epoch milliseconds (other logical timestamps arrive as datetimes and
are turned into milliseconds).
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

import orjson
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential

from stream_infer.errors import ConfigError, DecodeError, RegistryUnavailable

# What the extra ``stream-infer[registry]`` installs: Avro (fastavro), Protobuf (protobuf, and
# protoc from grpcio-tools); imported when a schema of that type is first met.
REGISTRY_MODULES = ("fastavro", "google.protobuf", "grpc_tools")


def require_registry_extra() -> None:
    """``ConfigError`` in one line when the extra of ``input.format: registry`` is missing."""
    import importlib.util

    for module in REGISTRY_MODULES:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise ConfigError("input.format: registry needs the extra: pip install 'stream-infer[registry]'")


MAGIC = 0
HEADER_BYTES = 5
UNKNOWN_TTL_S = 60.0  # an id the registry did not know is asked again after this long
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
SchemaType = Literal["AVRO", "JSON", "PROTOBUF"]


@dataclass(frozen=True)
class Schema:
    id: int
    type: SchemaType
    parsed: Any  # fastavro's parsed schema (AVRO), the text (JSON), top-level descriptors (PROTOBUF)


class _Transient(Exception):
    """A registry answer worth asking again (network error, 5xx, 429)."""


class SchemaRegistry:
    """A caching client of the registry's ``/schemas/ids/<id>`` endpoint (thread-safe)."""

    def __init__(
        self,
        url: str,
        username: str | None = None,
        password: str | None = None,
        timeout_s: float = 10.0,
        retry_s: float = 30.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self._auth = None
        if username is not None:
            token = base64.b64encode(f"{username}:{password or ''}".encode()).decode()
            self._auth = f"Basic {token}"
        self._cache: dict[int, Schema] = {}
        self._unknown: dict[int, float] = {}  # id -> monotonic time it may be asked again
        self._unusable: dict[int, DecodeError] = {}  # ids are immutable: asked and compiled once
        self._lock = threading.Lock()
        self.fetches = 0

    def get(self, schema_id: int) -> Schema:
        with self._lock:
            if schema_id in self._cache:
                return self._cache[schema_id]
            if self._unknown.get(schema_id, 0.0) > time.monotonic():
                raise DecodeError("unknown_schema", f"schema id {schema_id} is not in the registry")
            if (known := self._unusable.get(schema_id)) is not None:
                raise DecodeError(known.reason, known.detail)
        doc = self._fetch(schema_id)
        try:
            schema = _parse(schema_id, doc)
        except DecodeError as err:
            with self._lock:
                self._unusable[schema_id] = err
            raise
        with self._lock:
            self._cache[schema_id] = schema
        return schema

    def _fetch(self, schema_id: int) -> dict[str, Any]:
        try:
            return self._fetch_retrying(schema_id)
        except _Transient as exc:
            raise RegistryUnavailable(f"schema registry {self.url}: {exc}") from None

    def _fetch_once(self, schema_id: int) -> dict[str, Any]:
        req = urllib.request.Request(
            f"{self.url}/schemas/ids/{schema_id}", headers={"Accept": "application/json"}
        )
        if self._auth:
            req.add_header("Authorization", self._auth)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                doc = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                with self._lock:
                    self._unknown[schema_id] = time.monotonic() + UNKNOWN_TTL_S
                raise DecodeError("unknown_schema", f"schema id {schema_id} is not in the registry") from None
            if exc.code in (401, 403):
                raise RegistryUnavailable(
                    f"schema registry {self.url} refused the credentials: HTTP {exc.code}"
                ) from None
            raise _Transient(f"HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise _Transient(str(getattr(exc, "reason", exc))) from None
        except ValueError:
            raise _Transient("an answer that is not JSON") from None
        self.fetches += 1
        if not isinstance(doc, dict) or not isinstance(doc.get("schema"), str):
            raise _Transient("an answer without a schema")
        return doc

    def _fetch_retrying(self, schema_id: int) -> dict[str, Any]:
        fetch = retry(
            retry=retry_if_exception_type(_Transient),
            wait=wait_exponential(0.2, max=5),
            stop=stop_after_delay(self.retry_s),
            reraise=True,
        )(self._fetch_once)
        return fetch(schema_id)


def _parse(schema_id: int, doc: dict[str, Any]) -> Schema:
    kind = str(doc.get("schemaType") or "AVRO").upper()
    text = doc["schema"]
    if kind == "AVRO":
        import fastavro

        try:
            return Schema(schema_id, "AVRO", fastavro.parse_schema(_raw_millis(json.loads(text))))
        except Exception as exc:  # a schema the registry holds but fastavro cannot use
            raise DecodeError("unsupported_schema", f"Avro schema {schema_id}: {exc}") from None
    if kind == "JSON":
        return Schema(schema_id, "JSON", text)
    if kind == "PROTOBUF":
        if doc.get("references"):
            raise DecodeError("unsupported_schema", f"Protobuf schema {schema_id} imports other subjects")
        return Schema(schema_id, "PROTOBUF", _compile_proto(schema_id, text))
    raise DecodeError("unsupported_schema", f"schema id {schema_id} has schemaType {kind}")


def _raw_millis(node: Any) -> Any:
    """The schema with ``timestamp-millis`` longs read as plain longs: their raw value is the
    epoch milliseconds the service wants, and an out-of-range one is then ``bad_timestamp``
    (the range check) instead of a datetime overflow inside the Avro reader."""
    if isinstance(node, dict):
        if (
            node.get("logicalType") in ("timestamp-millis", "local-timestamp-millis")
            and node.get("type") == "long"
        ):
            return "long"
        return {k: _raw_millis(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_raw_millis(v) for v in node]
    return node


def split_wire(value: bytes) -> tuple[int, bytes]:
    """(schema id, payload) of a wire-format value."""
    if len(value) < HEADER_BYTES or value[0] != MAGIC:
        raise DecodeError("undecodable", "not in the schema registry wire format (magic byte 0, schema id)")
    return int.from_bytes(value[1:HEADER_BYTES], "big"), value[HEADER_BYTES:]


def decode_value(schema: Schema, payload: bytes) -> Any:
    """The document a wire-format payload holds (a dict, or a list of dicts for several samples)."""
    if schema.type == "AVRO":
        import fastavro

        buf = io.BytesIO(payload)
        try:
            doc = fastavro.schemaless_reader(buf, schema.parsed, None)
        except Exception as exc:
            raise DecodeError(
                "undecodable", f"not Avro of schema {schema.id}: {type(exc).__name__}"
            ) from None
        if buf.tell() != len(payload):
            raise DecodeError("undecodable", f"{len(payload) - buf.tell()} bytes after the Avro record")
        return _millis(doc)
    if schema.type == "JSON":
        try:
            return orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise DecodeError("undecodable", f"not JSON: {exc}") from None
    if schema.type == "PROTOBUF":
        return _decode_proto(schema, payload)
    raise DecodeError("unsupported_schema", f"schema {schema.id} has type {schema.type}")


def _compile_proto(schema_id: int, text: str) -> list[Any]:
    """The top-level message descriptors of a ``.proto`` text, in file order (what message
    index 0, 1, ... name), compiled by protoc into a pool of their own."""
    import importlib.resources
    import tempfile
    from pathlib import Path

    from google.protobuf import descriptor_pb2, descriptor_pool
    from grpc_tools import protoc

    name = f"registry_schema_{schema_id}.proto"
    with tempfile.TemporaryDirectory(prefix="stream-infer-proto-") as tmp:
        (Path(tmp) / name).write_text(text)
        out = Path(tmp) / "set.pb"
        include = importlib.resources.files("grpc_tools") / "_proto"
        args = [
            "protoc",
            f"-I{tmp}",
            f"-I{include}",
            f"--descriptor_set_out={out}",
            "--include_imports",
            name,
        ]
        if protoc.main(args) != 0 or not out.is_file():
            raise DecodeError("unsupported_schema", f"Protobuf schema {schema_id} does not compile")
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    pool = descriptor_pool.DescriptorPool()
    for f in files:
        pool.Add(f)
    fd = pool.FindFileByName(name)
    own = next(f for f in files if f.name == name)
    return [fd.message_types_by_name[m.name] for m in own.message_type]


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """A zigzag varint of ``buf`` at ``pos``: (value, next position)."""
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise DecodeError("undecodable", "truncated Protobuf message indexes")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return (value >> 1) ^ -(value & 1), pos


def _decode_proto(schema: Schema, payload: bytes) -> Any:
    from google.protobuf import message_factory
    from google.protobuf.message import DecodeError as ProtoDecodeError

    count, pos = _varint(payload, 0)
    if not 0 <= count <= 32:
        raise DecodeError("undecodable", f"{count} Protobuf message indexes")
    path = [0] if count == 0 else []
    for _ in range(count):
        idx, pos = _varint(payload, pos)
        path.append(idx)
    types = schema.parsed
    desc = None
    for depth, idx in enumerate(path):
        if not 0 <= idx < len(types):
            raise DecodeError("undecodable", f"message index {path} not in Protobuf schema {schema.id}")
        desc = types[idx]
        if depth + 1 < len(path):
            types = list(desc.nested_types)
    assert desc is not None
    try:
        msg = message_factory.GetMessageClass(desc).FromString(payload[pos:])
    except ProtoDecodeError:
        raise DecodeError("undecodable", f"not a {desc.full_name} message (schema {schema.id})") from None
    return _proto_doc(msg)


def _proto_doc(msg: Any) -> dict[str, Any]:
    """A message's fields as the document a ``json`` sample would be: scalars and repeated
    scalars as Python values, a ``google.protobuf.Timestamp`` as epoch milliseconds."""
    doc: dict[str, Any] = {}
    for field in msg.DESCRIPTOR.fields:
        value = getattr(msg, field.name)
        if field.message_type is not None:
            if field.message_type.full_name == "google.protobuf.Timestamp" and msg.HasField(field.name):
                doc[field.name] = value.ToMilliseconds()
            continue
        doc[field.name] = list(value) if _repeated(field) else value
    return doc


def _repeated(field: Any) -> bool:
    flag = getattr(field, "is_repeated", None)
    if flag is not None:
        return bool(flag)
    return bool(field.label == field.LABEL_REPEATED)


def _millis(doc: Any) -> Any:
    """Avro ``timestamp-millis``/``-micros`` ``ts`` fields (datetimes) as epoch milliseconds."""
    items = doc if isinstance(doc, list) else [doc]
    for it in items:
        if isinstance(it, dict) and isinstance(it.get("ts"), datetime):
            ts = it["ts"]
            if ts.tzinfo is None:
                ts = ts.replace(tzinfo=timezone.utc)
            it["ts"] = (ts - _EPOCH) // timedelta(milliseconds=1)
    return doc
