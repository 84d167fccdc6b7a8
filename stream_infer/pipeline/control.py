"""In-band control messages: records of the input topic that steer an entity's state instead of
carrying samples. Documented in docs/formats.md (the format) and docs/security.md (what turning
them on grants).

A control message is keyed by the entity (so it is ordered with the entity's samples) and
carries a header ``control``:

* ``reset``: the entity's current segment ends; its next window starts from zero state with an
  empty window. The value is empty, or a JSON object ``{"model": ...}``; by default every model
  on the stream (as a sample's ``reset`` header does).
* ``set-state``: the value is a JSON object ``{"model": ..., "states": {NAME: nested list}}``;
  the entity starts a new segment with an empty window whose carried state is the given tensors
  (an entity not yet held is admitted). ``model`` defaults to the primary. State names and
  per-entity shapes are those ``GET /entities/<id>`` reports.

``model`` is a model's name, a list of names, or ``"*"`` (every model). This module only reads
and checks a control message (``Controls.parse``); ``Ingest`` orders it among the samples and
``EntityStore.steer`` applies it. Parsing never raises: a control it cannot apply becomes a dead
letter (``control_disabled``, ``bad_control``) and changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import numpy as np
import orjson

from stream_infer.errors import DecodeError
from stream_infer.formats.base import Record, describe
from stream_infer.metrics import CONTROL_KINDS
from stream_infer.model.contract import StateSpec
from stream_infer.pipeline.decode import as_invalid
from stream_infer.records import InvalidMessage

CONTROL = "control"  # the header that makes a record a control message
KINDS = CONTROL_KINDS  # its values; the label of stream_infer_control_messages_total
EVERY_MODEL = "*"

_headers = attrgetter("headers")

Tensors = tuple[np.ndarray, ...]  # one float32 array per state of a model, per-entity shape


def has_control(records: Sequence[Record]) -> bool:
    """Whether any record carries a ``control`` header. A poll whose records carry no headers
    at all (the common case) is answered at C speed."""
    if not any(map(_headers, records)):
        return False
    return any(k == CONTROL for r in records if r.headers for k, _ in r.headers)


def is_control(rec: Record) -> bool:
    return bool(rec.headers) and any(k == CONTROL for k, _ in rec.headers)


@dataclass(frozen=True, slots=True)
class Control:
    """One control message, checked against the models it targets."""

    kind: str  # one of ``KINDS``
    entity: str
    partition: int
    offset: int
    # (model name, its tensors in the contract's order; None for a reset), the primary first
    targets: tuple[tuple[str, Tensors | None], ...]


class Controls:
    """Reads control messages for the models on the stream (``models``: each model's state
    specs by name, the primary first)."""

    def __init__(
        self, enabled: bool, models: Mapping[str, tuple[StateSpec, ...]], max_message_bytes: int = 4_194_304
    ) -> None:
        self.enabled = enabled
        self.models = dict(models)
        self.primary = next(iter(self.models))
        self.max_message_bytes = max_message_bytes

    def parse(self, rec: Record) -> Control | InvalidMessage:
        """The control message ``rec`` as a ``Control``, or its dead letter. Never raises."""
        try:
            return self._parse(rec)
        except DecodeError as err:
            return as_invalid(rec, err)
        except Exception as exc:  # an input nobody foresaw: refused all the same
            return as_invalid(rec, _bad(f"unreadable control message: {describe(exc)}"))

    def _parse(self, rec: Record) -> Control:
        if not self.enabled:
            raise DecodeError(
                "control_disabled",
                "a control message, but input.control_messages is false: it was not applied",
            )
        values = [v for k, v in rec.headers or () if k == CONTROL]
        if len(values) != 1:
            raise _bad(f"{len(values)} 'control' headers; a control message has one")
        raw = values[0]
        kind = raw.decode("ascii", "replace").strip().lower() if isinstance(raw, bytes) else ""
        if kind not in KINDS:
            raise _bad(f"header 'control' must be 'reset' or 'set-state', got {raw!r:.60}")
        if not rec.key:
            raise _bad("a control message needs a key (the entity id)")
        try:
            entity = rec.key.decode("utf-8")
        except UnicodeDecodeError:
            raise _bad("the key (the entity id) is not UTF-8") from None
        value = rec.value or b""
        if len(value) > self.max_message_bytes:
            raise _bad(f"{len(value)} bytes > input.max_message_bytes {self.max_message_bytes}")
        doc = self._document(value, kind)
        if kind == "reset":
            if set(doc) - {"model"}:
                raise _bad(f"a reset takes only 'model'; got {sorted(doc)}")
            models = self._models(doc.get("model", EVERY_MODEL))
            targets: tuple[tuple[str, Tensors | None], ...] = tuple((m, None) for m in models)
        else:
            if set(doc) - {"model", "states"}:
                raise _bad(f"a set-state takes 'model' and 'states'; got {sorted(doc)}")
            if "states" not in doc:
                raise _bad("a set-state needs 'states': {name: nested list of numbers}")
            states = doc["states"]
            if not isinstance(states, dict):
                raise _bad(f"'states' must be an object of name -> nested list, got {_type(states)}")
            models = self._models(doc.get("model", self.primary))
            targets = tuple((m, _tensors(m, self.models[m], states)) for m in models)
        return Control(kind, entity, rec.partition, rec.offset, targets)

    def _document(self, value: bytes, kind: str) -> dict[str, Any]:
        if kind == "reset" and not value.strip():
            return {}
        if not value.strip():
            raise _bad("a set-state needs a JSON object as its value; the value is empty")
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise _bad(f"the value is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise _bad(f"the value must be a JSON object, got {_type(doc)}")
        return doc

    def _models(self, given: Any) -> list[str]:
        """The model names ``given`` targets, in the stream's order (the primary first)."""
        known = list(self.models)
        if given == EVERY_MODEL:
            return known
        names = [given] if isinstance(given, str) else given
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise _bad(f"'model' must be a model's name, a non-empty list of names or '*', got {given!r:.80}")
        unknown = [n for n in names if n not in self.models]
        if unknown:
            raise _bad(f"unknown model {unknown[0]!r:.80}; the models on this stream: {known}")
        return [n for n in known if n in names]


def _tensors(model: str, specs: tuple[StateSpec, ...], states: dict[str, Any]) -> Tensors:
    """The given states as float32 arrays in ``specs``' order, each checked for its name, its
    per-entity shape and finite values."""
    wanted = {s.input: s for s in specs}
    about = ", ".join(f"{s.input} {list(s.shape)}" for s in specs)
    unknown = [n for n in states if n not in wanted]
    if unknown:
        raise _bad(f"model {model!r} has no state {unknown[0]!r:.80} (its states: {about})")
    missing = [n for n in wanted if n not in states]
    if missing:
        raise _bad(f"state {missing[0]!r} of model {model!r} is missing (its states: {about})")
    out = []
    for spec in specs:
        given = states[spec.input]
        try:
            arr = np.asarray(given)
        except (ValueError, TypeError):  # ragged nesting
            arr = np.asarray(None)
        if arr.dtype.kind not in "iuf":
            raise _bad(
                f"state {spec.input!r} of model {model!r} must be a nested list of numbers of "
                f"shape {list(spec.shape)}"
            )
        if arr.shape != spec.shape:
            raise _bad(
                f"state {spec.input!r} of model {model!r} has shape {list(arr.shape)}; "
                f"expected {list(spec.shape)}"
            )
        with np.errstate(over="ignore"):
            f32 = arr.astype(np.float32)
        if not np.isfinite(f32).all():
            raise _bad(
                f"state {spec.input!r} of model {model!r} holds NaN or infinity (or overflows float32)"
            )
        out.append(f32)
    return tuple(out)


def _bad(detail: str) -> DecodeError:
    return DecodeError("bad_control", detail)


def _type(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(v), type(v).__name__
    )
