"""Offline evaluation: recordings replayed through the service's own pipeline, without a broker.

Each recording becomes one entity whose samples go, in polls of interleaved entities, through
the same decode -> windows -> batcher -> engine -> sink code that ``serve`` runs (a ``Service``
wired to a ``ListProducer`` instead of Kafka). The predictions are therefore the ones the service
would publish for the same data, hop for hop; ``evaluate`` scores them against each
recording's label, per hop and at the end of the recording.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from stream_infer.errors import DataError
from stream_infer.kafka.types import ConsumedRecord
from stream_infer.model.card import ModelCard, load_card
from stream_infer.model.datasets import Recordings

if TYPE_CHECKING:
    from stream_infer.backends import BackendName

_POLL = 4096  # records per ingest call, as one poll of the service would bring
_TS0 = 1_700_000_000_000


@dataclass(frozen=True)
class ClassMetrics:
    label: str
    precision: float
    recall: float
    support: int  # hops whose true label is this one


@dataclass(frozen=True)
class Evaluation:
    """Classification figures over every hop and over each recording's last hop."""

    model: str
    n_recordings: int
    n_hops: int
    per_hop_accuracy: float
    at_end_accuracy: float
    labels: list[str]
    confusion: list[list[int]]  # per hop: rows = true label, columns = predicted label
    per_class: list[ClassMetrics]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def table(self) -> str:
        width = max(5, *(len(x) for x in self.labels))
        out = [
            f"model {self.model}: {self.n_recordings} recordings, {self.n_hops} hops",
            f"accuracy per hop {self.per_hop_accuracy:.4f}, at the end of a recording {self.at_end_accuracy:.4f}",
            "",
            f"{'label':<{width}}  precision  recall  support",
        ]
        out += [
            f"{m.label:<{width}}  {m.precision:9.4f}  {m.recall:6.4f}  {m.support:7d}" for m in self.per_class
        ]
        out += ["", "confusion per hop (rows: true, columns: predicted)"]
        out.append(" " * width + "  " + " ".join(f"{x[:width]:>{width}}" for x in self.labels))
        for label, row in zip(self.labels, self.confusion, strict=True):
            out.append(f"{label:<{width}}  " + " ".join(f"{n:>{width}d}" for n in row))
        return "\n".join(out)


def replay(
    artifact: str | Path, recordings: Recordings, backend: BackendName = "onnxruntime", device: str = "cpu"
) -> list[dict[str, Any]]:
    """The predictions the service publishes for ``recordings`` (one entity per recording, named
    by its index and name), each a prediction document as on the output topic."""
    from prometheus_client import CollectorRegistry

    from stream_infer.backends import open_engine
    from stream_infer.config import load_settings
    from stream_infer.service import Service
    from stream_infer.testing import ListProducer

    card = load_card(artifact)
    _check_fits(card, recordings)
    settings = load_settings(
        None,
        topics={"input": "evaluate", "output": "predictions", "create": False},
        model={"artifact": str(artifact), "backend": backend, "device": device},
        input={"format": "f32", "max_samples_per_message": 1},
        entities={"max_entities": max(1_000, len(recordings)), "idle_ttl_s": 1e9},
        batcher={"max_batch": 256, "max_wait_ms": 5},
        metrics={"port": 0},
    )
    engine = open_engine(artifact, backend, device, max_batch=256)
    svc = Service(settings, engine=engine, registry=CollectorRegistry(), card=card)
    producer = ListProducer()
    svc.wire(engine, producer)
    svc.workers.start()
    try:
        for poll in _polls(recordings):
            svc.ingest(poll)
        svc.drain()
    finally:
        svc.workers.stop()
        engine.close()
    return [orjson.loads(r.value) for r in producer.on("predictions") if r.value is not None]


def entity_of(index: int, name: str) -> str:
    """The entity id a recording is replayed as."""
    return f"{index:05d}-{name}"


@dataclass(frozen=True)
class ForecastEvaluation:
    """Regression (forecast) figures over every hop whose horizon lies inside its recording,
    beside the persistence and seasonal-naive baselines on the same hops."""

    model: str
    n_recordings: int
    n_hops: int
    horizon: int
    targets: list[str]
    mae: float
    rmse: float
    mae_per_step: list[float]  # step 1..N, over targets
    baselines: dict[str, dict[str, Any]]  # name -> {"mae", "rmse", "mae_per_step"}

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def table(self) -> str:
        steps = "  ".join(f"{'+' + str(s):>7}" for s in range(1, self.horizon + 1))
        out = [
            f"model {self.model}: {self.n_recordings} recordings, {self.n_hops} hops, "
            f"forecast of {', '.join(self.targets)} {self.horizon} steps ahead",
            "",
            f"{'forecast':<20}  {'MAE':>8}  {'RMSE':>8}  MAE per step {steps}",
        ]
        rows = [("model", {"mae": self.mae, "rmse": self.rmse, "mae_per_step": self.mae_per_step})]
        for name, row in [*rows, *self.baselines.items()]:
            per = "  ".join(f"{v:7.4f}" for v in row["mae_per_step"])
            out.append(f"{name:<20}  {row['mae']:8.4f}  {row['rmse']:8.4f}  {'':12} {per}")
        return "\n".join(out)


@dataclass(frozen=True)
class AnomalyEvaluation:
    """Anomaly figures over recordings with labelled events: every hop at the card's threshold
    (precision, recall), and the UCR anomaly archive's location test (the hop with the highest
    score lies within ``UCR_MARGIN`` samples of the labelled event), for the model and for the
    persistence baseline (score |x_t - x_(t-1)|, no threshold needed for the location test)."""

    model: str
    n_recordings: int
    n_hops: int
    threshold: float
    flagged: int
    precision: float
    recall: float
    located: int  # recordings whose highest score is within the margin of their event
    baseline_located: int

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def table(self) -> str:
        return "\n".join(
            [
                f"model {self.model}: {self.n_recordings} recordings with a labelled event, {self.n_hops} hops",
                f"threshold {self.threshold:g}: {self.flagged} hops flagged, precision {self.precision:.4f}, "
                f"recall {self.recall:.4f} (hops inside a labelled event)",
                f"highest score within {UCR_MARGIN} samples of the event (UCR archive test): model "
                f"{self.located}/{self.n_recordings}, persistence baseline {self.baseline_located}/{self.n_recordings}",
            ]
        )


UCR_MARGIN = 100  # samples either side of the labelled event (Wu & Keogh's archive protocol)


def evaluate(
    card: ModelCard, recordings: Recordings, predictions: list[dict[str, Any]]
) -> Evaluation | ForecastEvaluation | AnomalyEvaluation:
    """Score ``predictions`` (from ``replay``): against the recordings' labels for a
    classification head, against the recordings' own future values for a regression head."""
    if card.head_kind == "regression":
        return evaluate_forecast(card, recordings, predictions)
    if card.head_kind == "anomaly":
        return evaluate_anomaly(card, recordings, predictions)
    index = {c: i for i, c in enumerate(card.labels)}
    unknown = sorted(set(recordings.labels) - set(index))
    if unknown:
        raise DataError(f"labels {unknown} are not among the model's {card.labels}")
    by_entity: dict[str, list[dict[str, Any]]] = {}
    for p in predictions:
        by_entity.setdefault(p["entity"], []).append(p)
    k = len(card.labels)
    confusion = np.zeros((k, k), dtype=np.int64)
    end_hits = 0
    n_rec = 0
    for i, (name, label) in enumerate(zip(recordings.names, recordings.labels, strict=True)):
        hops = sorted(by_entity.get(entity_of(i, name), []), key=lambda p: p["seq"])
        if not hops:
            continue
        truth = index[label]
        predicted = np.asarray([int(np.argmax(p["scores"])) for p in hops])
        np.add.at(confusion, (np.full(len(predicted), truth), predicted), 1)
        end_hits += int(predicted[-1] == truth)
        n_rec += 1
    if n_rec == 0:
        raise DataError("no recording is long enough for one window: nothing to evaluate")
    n_hops = int(confusion.sum())
    predicted_n = confusion.sum(axis=0)
    true_n = confusion.sum(axis=1)
    diag = np.diag(confusion)
    per_class = [
        ClassMetrics(
            label,
            float(diag[j] / predicted_n[j]) if predicted_n[j] else 0.0,
            float(diag[j] / true_n[j]) if true_n[j] else 0.0,
            int(true_n[j]),
        )
        for j, label in enumerate(card.labels)
    ]
    return Evaluation(
        card.model_id,
        n_rec,
        n_hops,
        float(diag.sum() / n_hops),
        end_hits / n_rec,
        list(card.labels),
        confusion.tolist(),
        per_class,
    )


def evaluate_forecast(
    card: ModelCard, recordings: Recordings, predictions: list[dict[str, Any]]
) -> ForecastEvaluation:
    """Each hop's ``values`` (named ``<target>+<step>``) against the next ``horizon`` values of
    the targets in its recording; hops whose horizon runs past the end are not scored."""
    head = card.head
    targets = [str(t) for t in head.get("targets", [])]
    horizon = int(head.get("horizon", 0))
    names = [f"{t}+{s}" for s in range(1, horizon + 1) for t in targets]
    if not targets or horizon < 1 or sorted(names) != sorted(card.labels):
        raise DataError(
            "evaluate needs a regression head with targets and horizon whose outputs are named "
            f"<target>+<step>; {card.model_id} has head {head} and outputs {card.labels}"
        )
    missing = [t for t in targets if t not in recordings.channels]
    if missing:
        raise DataError(f"the recordings have no channel {missing} (they have {recordings.channels})")
    t_idx = [recordings.channels.index(t) for t in targets]
    season = int(head.get("season", 0))
    by_entity: dict[str, list[dict[str, Any]]] = {}
    for p in predictions:
        by_entity.setdefault(p["entity"], []).append(p)
    got, truth, persist, seasonal = [], [], [], []
    n_rec = 0
    for i, (name, values) in enumerate(zip(recordings.names, recordings.values, strict=True)):
        hops = [p for p in by_entity.get(entity_of(i, name), []) if p["seq"] + horizon < len(values)]
        if not hops:
            continue
        n_rec += 1
        t = np.asarray([p["seq"] for p in hops])
        steps = np.arange(1, horizon + 1)
        got.append(np.asarray([[p["values"][n] for n in names] for p in hops], dtype=np.float64))
        truth.append(values[t[:, None] + steps][:, :, t_idx].reshape(len(t), -1))
        persist.append(np.repeat(values[t][:, t_idx], horizon, axis=0).reshape(len(t), -1))
        if season:
            back = np.clip(t[:, None] + steps - season * np.ceil(steps / season).astype(int), 0, None)
            seasonal.append(values[back][:, :, t_idx].reshape(len(t), -1))
    if n_rec == 0:
        raise DataError("no recording is long enough for one window and its horizon: nothing to evaluate")
    y = np.concatenate(truth).astype(np.float64)

    def scores(pred: list[np.ndarray]) -> dict[str, Any]:
        err = np.concatenate(pred).astype(np.float64) - y
        per_step = np.abs(err).reshape(len(err), horizon, len(targets)).mean(axis=(0, 2))
        return {
            "mae": float(np.abs(err).mean()),
            "rmse": float(np.sqrt((err**2).mean())),
            "mae_per_step": [float(v) for v in per_step],
        }

    model = scores(got)
    baselines = {"persistence": scores(persist)}
    if season:
        baselines[f"seasonal naive ({season})"] = scores(seasonal)
    return ForecastEvaluation(
        card.model_id,
        n_rec,
        len(y),
        horizon,
        targets,
        model["mae"],
        model["rmse"],
        model["mae_per_step"],
        baselines,
    )


def evaluate_anomaly(
    card: ModelCard, recordings: Recordings, predictions: list[dict[str, Any]]
) -> AnomalyEvaluation:
    """Each hop's score against the recording's per-sample event labels (``events``)."""
    if not recordings.events:
        raise DataError(
            "evaluating an anomaly head needs recordings with labelled events (per-sample labels)"
        )
    threshold = float(card.head["threshold"])
    by_entity: dict[str, list[dict[str, Any]]] = {}
    for p in predictions:
        by_entity.setdefault(p["entity"], []).append(p)
    n_rec = n_hops = flagged = hits = positives = located = baseline_located = 0
    for i, (name, values, events) in enumerate(
        zip(recordings.names, recordings.values, recordings.events, strict=True)
    ):
        hops = sorted(by_entity.get(entity_of(i, name), []), key=lambda p: p["seq"])
        where = np.flatnonzero(events)
        if not hops or not len(where):
            continue
        n_rec += 1
        seq = np.asarray([p["seq"] for p in hops])
        score = np.asarray([p["score"] for p in hops])
        inside = events[seq]
        n_hops += len(seq)
        flagged += int((score > threshold).sum())
        hits += int((inside & (score > threshold)).sum())
        positives += int(inside.sum())
        lo, hi = where[0] - UCR_MARGIN, where[-1] + UCR_MARGIN
        located += int(lo <= seq[score.argmax()] <= hi)
        jump = np.abs(np.diff(values[:, 0]))
        baseline_located += int(lo <= int(jump.argmax()) + 1 <= hi)
    if n_rec == 0:
        raise DataError("no recording with a labelled event has a hop: nothing to evaluate")
    return AnomalyEvaluation(
        card.model_id,
        n_rec,
        n_hops,
        threshold,
        flagged,
        hits / flagged if flagged else 0.0,
        hits / positives if positives else 0.0,
        located,
        baseline_located,
    )


def _check_fits(card: ModelCard, recordings: Recordings) -> None:
    """Sensor recordings ``[T, F]`` for a sensor model; frame sequences ``[T, C, H, W]`` (as
    ``Recordings`` values) for a frame model."""
    if not len(recordings):
        raise DataError("no recordings to replay")
    shape = tuple(recordings.values[0].shape[1:])
    if shape != tuple(card.sample_shape):
        what = f"{shape[0]} channels" if len(shape) == 1 else f"samples of shape {list(shape)}"
        raise DataError(
            f"the recordings have {what}; model {card.model_id} takes samples of shape {card.sample_shape}"
        )


def _polls(recordings: Recordings) -> list[list[ConsumedRecord]]:
    """Round-robin over recordings (sample i of each, then i + 1), cut into polls; offsets count
    up as on one partition. f32 values with ``seq`` and ``ts`` headers."""
    out: list[list[ConsumedRecord]] = []
    poll: list[ConsumedRecord] = []
    keys = [entity_of(i, n).encode() for i, n in enumerate(recordings.names)]
    longest = max(len(v) for v in recordings.values)
    offset = 0
    for t in range(longest):
        ts = b"%d" % (_TS0 + 10 * t)
        seq = b"%d" % t
        for key, values in zip(keys, recordings.values, strict=True):
            if t < len(values):
                value = np.ascontiguousarray(values[t], dtype="<f4").tobytes()
                poll.append(
                    ConsumedRecord("evaluate", 0, offset, _TS0, key, value, [("seq", seq), ("ts", ts)])
                )
                offset += 1
                if len(poll) == _POLL:
                    out.append(poll)
                    poll = []
    if poll:
        out.append(poll)
    return out
