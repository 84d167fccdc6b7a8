"""stream-infer: streaming CNN-LSTM inference on Kafka with per-entity carried LSTM state."""

from stream_infer.backends import Engine, EngineSpec, load_engine
from stream_infer.errors import StreamInferError
from stream_infer.model.card import ModelCard, load_card

__version__ = "0.1.0"

__all__ = ["Engine", "EngineSpec", "ModelCard", "StreamInferError", "__version__", "load_card", "load_engine"]
