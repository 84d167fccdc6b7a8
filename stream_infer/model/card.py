"""The model artifact's card (`model.json`): everything the service needs to serve a model.

An artifact is a directory::

    model.json    this card (with the SHA-256 of the two files below: model/integrity.py)
    weights.pt    torch state_dict, loaded with ``weights_only=True`` (no code runs on load)
    model.onnx    step(x, h0, c0) -> (y, hn, cn), dynamic batch

The service never imports torch to read a card.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from stream_infer.errors import ModelError
from stream_infer.model.contract import StateSpec, lstm_states
from stream_infer.model.heads import make_head

CARD_FILE = "model.json"
WEIGHTS_FILE = "weights.pt"
ONNX_FILE = "model.onnx"


@dataclass(frozen=True)
class ModelCard:
    name: str
    version: str
    kind: Literal["sensor", "frame"]
    window: int  # W: samples per window (1 for frame models)
    hop: int  # k: samples between predictions
    sample_shape: list[int]  # one sample: [F] for sensors, [C, H, W] for frames
    labels: list[str]  # one name per output column of the head (class labels, forecast names, "score")
    lstm_layers: int = 0  # stream-infer's own CNN-LSTM: its (h, c) pair; 0 for an imported graph
    hidden_size: int = 0
    norm_mean: list[float] = field(default_factory=list)  # per channel, applied inside the graph
    norm_std: list[float] = field(default_factory=list)
    conv_channels: int = 32
    training: dict[str, Any] = field(default_factory=dict)  # data, split, epochs, seed, ...
    accuracy: dict[str, Any] = field(default_factory=dict)  # per_hop, at_end, split, n
    channels: list[str] = field(default_factory=list)  # optional channel names
    files: dict[str, str] = field(default_factory=dict)  # file name -> SHA-256 (model/integrity.py)
    sample_rate_hz: float | None = None  # samples per second of the training data, when given
    # An imported graph's contract (docs/model-contract.md): its window input, head output and
    # state pairs [{"input", "output", "shape", "batch_axis"}]. Empty: the CNN-LSTM's x, y, (h, c).
    input_name: str = "x"
    output_name: str = "y"
    state: list[dict[str, Any]] = field(default_factory=list)
    # The head (stream_infer/model/heads.py): {"kind": "classification"} when empty; "regression" may
    # name "targets" (channels) and "horizon" (steps) for evaluate; "anomaly" needs "threshold".
    head: dict[str, Any] = field(default_factory=dict)
    # N > 1: N CNN-LSTMs of lstm_layers / N layers each, served as one graph (model/net.py)
    ensemble: int = 1

    @property
    def head_kind(self) -> str:
        return str(self.head.get("kind", "classification"))

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Engine input per item (no batch): [W, F] for sensors, [C, H, W] for frames."""
        if self.kind == "frame":
            return tuple(self.sample_shape)
        return (self.window, *self.sample_shape)

    @property
    def state_shape(self) -> tuple[int, int]:
        """(L, Hd) of the CNN-LSTM's pair; a batch of states is [L, B, Hd] as ONNX's LSTM lays
        it out. (0, 0) for an imported graph: see ``states``."""
        return (self.lstm_layers, self.hidden_size)

    @property
    def states(self) -> tuple[StateSpec, ...]:
        """The state pairs of the graph (the model contract)."""
        if self.state:
            return tuple(
                StateSpec(
                    str(s["input"]),
                    str(s["output"]),
                    tuple(int(d) for d in s["shape"]),
                    int(s.get("batch_axis", 0)),
                )
                for s in self.state
            )
        return lstm_states(self.lstm_layers, self.hidden_size)

    @property
    def model_id(self) -> str:
        return f"{self.name}@{self.version}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / CARD_FILE
        path.write_text(self.to_json() + "\n")
        return path


def load_card(directory: str | Path) -> ModelCard:
    """Read and validate ``model.json``; errors name the file and the problem."""
    path = Path(directory) / CARD_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ModelError(f"{path}: no model card (is this a model artifact directory?)") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: cannot read model card: {exc}") from exc
    try:
        card = ModelCard(**raw)
    except TypeError as exc:
        raise ModelError(f"{path}: invalid model card: {exc}") from exc
    if card.kind not in ("sensor", "frame"):
        raise ModelError(f"{path}: kind must be 'sensor' or 'frame', not {card.kind!r}")
    if card.window < 1 or card.hop < 1 or card.hop > card.window and card.kind == "sensor":
        raise ModelError(f"{path}: need 1 <= hop <= window, got window={card.window} hop={card.hop}")
    if card.kind == "frame" and (card.window != 1 or card.hop != 1 or len(card.sample_shape) != 3):
        raise ModelError(f"{path}: a frame model has window=1, hop=1 and sample_shape [C, H, W]")
    try:
        states = card.states
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{path}: invalid state pairs: {exc}") from exc
    if not states:
        raise ModelError(f"{path}: no state pairs (the model carries no state from hop to hop)")
    try:
        make_head(card.labels, card.head)
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from exc
    return card
