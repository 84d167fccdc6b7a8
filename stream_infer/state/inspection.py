"""Entity state you can see: the pure parts of ``GET /entities/<id>`` and ``stream-infer state``.

The entity's input partition (murmur2, as the producers pick it), the JSON view of one entity
(never its tensor values unless asked), and the ``.npz`` form of a changelog (export, an
optional user transform, shape checks against the target model, import records). Nothing here
touches Kafka: the command line reads and writes the changelog through ``stream_infer.kafka``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from stream_infer.errors import StateError
from stream_infer.model.contract import StateSpec
from stream_infer.state import codec
from stream_infer.state.codec import EntityState
from stream_infer.state.store import EntityView, ModelShape

Transform = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]

# The per-entity fields of an exported file, besides one ``state.<name>`` array per tensor.
META_FIELDS = (
    "entity",
    "partition",
    "model_id",
    "last_seq",
    "count",
    "fresh",
    "anchor",
    "offset",
    "event_ms",
)


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (the Java client's ``Utils.murmur2``), as an unsigned 32-bit int (as
    kafka-python's)."""
    length = len(data)
    seed = 0x9747B28C
    m = 0x5BD1E995
    r = 24
    h = (seed ^ length) & 0xFFFFFFFF
    n4 = length // 4
    for i in range(n4):
        k = int.from_bytes(data[4 * i : 4 * i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    rest = length % 4
    tail = 4 * n4
    if rest == 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h ^= data[tail]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def partition_for(entity: str, partitions: int) -> int:
    """The input (and changelog) partition of ``entity``'s key under the default partitioner."""
    return (murmur2(entity.encode()) & 0x7FFFFFFF) % partitions


def state_names(specs: tuple[StateSpec, ...]) -> list[str]:
    """One name per state tensor: the graph's input name."""
    return [s.input for s in specs]


def tensor_summary(name: str, value: np.ndarray, with_values: bool = False) -> dict[str, Any]:
    """Name, shape and L2 norm of one per-entity state tensor; its values only when asked."""
    arr = np.asarray(value, dtype=np.float32)
    out: dict[str, Any] = {"name": name, "shape": list(arr.shape), "norm": float(np.linalg.norm(arr))}
    if with_values:
        out["values"] = arr.tolist()
    return out


def entity_document(
    entity: str,
    partition: int,
    owned: bool,
    view: EntityView | None,
    tensors: list[tuple[str, np.ndarray]],
    prediction: Any = None,
    with_tensors: bool = False,
) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON document) of ``GET /entities/<id>``: 200 with what the store holds,
    404 with a reason when it holds nothing of the entity."""
    doc: dict[str, Any] = {"entity": entity, "partition": partition, "owned": owned}
    if view is None:
        where = "this pod owns its partition" if owned else "its partition is assigned elsewhere"
        doc["reason"] = f"entity not held here ({where})"
        return 404, doc
    doc.update(
        tier=view.tier,
        last_seq=view.last_seq,
        samples_in_segment=view.samples_in_segment,
        last_event_ms=view.last_event_ms,
        fresh=view.fresh,
        idle_s=round(view.idle_s, 3),
        last_prediction=prediction,
        states=[tensor_summary(n, a, with_tensors) for n, a in tensors],
    )
    return 200, doc


def decode_any(value: bytes, model: ModelShape) -> EntityState:
    """A changelog value decoded with ``model``'s shapes, whichever model id wrote it."""
    return codec.decode(value, model.model_id, model.window, model.sample_shape, model.states, True)


def show_lines(
    entity: str, partition: int, state: EntityState, names: list[str], with_values: bool
) -> list[str]:
    """What ``stream-infer state show`` prints of one decoded changelog value."""
    lines = [
        f"entity {entity}  partition {partition}  model {state.model_id}",
        f"last_seq {state.last_seq}  count {state.count}  fresh {str(state.fresh).lower()}  "
        f"event_ms {state.event_ms}  anchor {state.anchor}  offset {state.offset}",
    ]
    for name, arr in zip(names, state.states, strict=True):
        lines.append(f"state {name}  shape {list(arr.shape)}  norm {float(np.linalg.norm(arr)):.6g}")
        if with_values:
            lines.append(f"  {np.asarray(arr).tolist()}")
    return lines


def export_arrays(
    latest: Mapping[bytes, tuple[int, bytes | None]], model: ModelShape
) -> tuple[dict[str, np.ndarray], int]:
    """The changelog's latest values as arrays per field (tombstones left out), and how many
    values did not decode under ``model``'s shapes (left out too)."""
    names = state_names(model.states)
    rows: list[tuple[str, int, EntityState]] = []
    skipped = 0
    for key in sorted(latest):
        part, value = latest[key]
        if value is None:
            continue
        try:
            rows.append((key.decode(), part, decode_any(value, model)))
        except (StateError, UnicodeDecodeError):
            skipped += 1
    arrays: dict[str, np.ndarray] = {
        "entity": np.array([e for e, _, _ in rows], dtype=np.str_),
        "partition": np.array([p for _, p, _ in rows], dtype=np.int32),
        "model_id": np.array([s.model_id for _, _, s in rows], dtype=np.str_),
        "last_seq": np.array([s.last_seq for _, _, s in rows], dtype=np.int64),
        "count": np.array([s.count for _, _, s in rows], dtype=np.int64),
        "fresh": np.array([s.fresh for _, _, s in rows], dtype=bool),
        "anchor": np.array([s.anchor for _, _, s in rows], dtype=np.int64),
        "offset": np.array([s.offset for _, _, s in rows], dtype=np.int64),
        "event_ms": np.array([s.event_ms for _, _, s in rows], dtype=np.int64),
        "tail": np.array(
            [s.tail for _, _, s in rows] or np.zeros((0, model.window, *model.sample_shape)),
            dtype=np.float32,
        ),
    }
    for i, (name, spec) in enumerate(zip(names, model.states, strict=True)):
        stacked = [s.states[i] for _, _, s in rows]
        arrays[f"state.{name}"] = np.array(stacked or np.zeros((0, *spec.shape)), dtype=np.float32)
    return arrays, skipped


def save_npz(path: Any, arrays: Mapping[str, np.ndarray]) -> None:
    np.savez(path, **dict(arrays))  # type: ignore[arg-type]


def load_npz(path: Any) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def load_transform(spec: str) -> Transform:
    """``module:function`` -> the function (``fn(arrays) -> arrays``)."""
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise StateError(f"--transform {spec!r}: expected module:function")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise StateError(f"--transform {spec!r}: {exc}") from None
    if not callable(fn):
        raise StateError(f"--transform {spec!r} is not callable")
    return fn  # type: ignore[no-any-return]


def import_records(
    arrays: Mapping[str, np.ndarray], model: ModelShape, partitions: int | None = None
) -> list[tuple[bytes, bytes, int]]:
    """Changelog records (key, value, partition) for ``model`` from an exported file's arrays
    (after any transform). ``partitions``: the input topic's partition count; each record goes
    to its entity's partition (murmur2), else to the file's ``partition``. Raises ``StateError``
    (one line) when a field is missing or a shape does not match the model."""
    names = state_names(model.states)
    need = [*META_FIELDS, "tail", *(f"state.{n}" for n in names)]
    missing = [k for k in need if k not in arrays and k not in ("model_id", "partition")]
    if missing:
        raise StateError(f"the file lacks {', '.join(missing)}")
    n = len(arrays["entity"])
    want = {"tail": (n, model.window, *model.sample_shape)}
    want.update({f"state.{nm}": (n, *s.shape) for nm, s in zip(names, model.states, strict=True)})
    for key, shape in want.items():
        got = tuple(np.shape(arrays[key]))
        if got != shape:
            raise StateError(
                f"{key} has shape {list(got[1:])} per entity, model {model.model_id} needs "
                f"{list(shape[1:])} (a --transform can reshape it)"
                if got[:1] == shape[:1]
                else f"{key} has {got[0] if got else 0} rows for {n} entities"
            )
    for key in ("last_seq", "count", "fresh", "anchor", "offset", "event_ms"):
        if len(arrays[key]) != n:
            raise StateError(f"{key} has {len(arrays[key])} rows for {n} entities")
    if n == 0:
        return []
    # encode_many takes each state in the graph's layout, batch on its batch_axis
    states = [
        np.moveaxis(np.asarray(arrays[f"state.{nm}"], dtype=np.float32), 0, s.batch_axis)
        for nm, s in zip(names, model.states, strict=True)
    ]
    values = codec.encode_many(
        model.model_id,
        np.asarray(arrays["last_seq"], dtype=np.int64),
        np.asarray(arrays["event_ms"], dtype=np.int64),
        np.asarray(arrays["count"], dtype=np.int64),
        np.asarray(arrays["fresh"], dtype=bool),
        np.asarray(arrays["tail"], dtype=np.float32),
        *states,
        specs=model.states,
        anchor=np.asarray(arrays["anchor"], dtype=np.int64),
        offset=np.asarray(arrays["offset"], dtype=np.int64),
    )
    entities = [str(e) for e in arrays["entity"].tolist()]
    if partitions is not None:
        parts = [partition_for(e, partitions) for e in entities]
    elif "partition" in arrays:
        parts = [int(p) for p in arrays["partition"].tolist()]
    else:
        raise StateError("the file lacks partition, and the partition count is unknown")
    return [(e.encode(), v, p) for e, v, p in zip(entities, values, parts, strict=True)]


def model_shape(card: Any, model_id: str | None = None) -> ModelShape:
    """The store's view of a model card (``model_id`` overrides the card's id)."""
    return ModelShape(
        model_id or card.model_id,
        card.window,
        card.hop,
        tuple(card.sample_shape),
        tuple(card.state_shape),
        True,
        card.states,
    )
