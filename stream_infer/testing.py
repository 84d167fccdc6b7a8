"""Fakes that users of the library need too: an engine with a known, cheap step, and a producer
that keeps what it is given (to run the ingest path in-process, without a broker).

``LinearEngine`` is a real stateful step (no mock): ``h' = tanh(a*h + mean(x))``, ``c' = c + 1``,
``y = [h'_0, c'_0]``, so tests can compute the reference by hand and check that state is
carried, reset and restored per entity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream_infer.backends.base import EngineSpec
from stream_infer.model.card import ModelCard


class LinearEngine:
    name = "linear"

    def __init__(
        self,
        input_shape: tuple[int, ...],
        layers: int = 1,
        hidden: int = 4,
        a: float = 0.5,
        fail_when: float | None = None,
    ) -> None:
        self.spec = EngineSpec(input_shape, (layers, hidden), 2, 65_536, "cpu")
        self.a = a
        self.fail_when = fail_when  # raise if any window's mean equals this value (fault injection)
        self.calls = 0

    def infer(
        self, x: np.ndarray, h0: np.ndarray, c0: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self.calls += 1
        m = x.reshape(len(x), -1).mean(axis=1).astype(np.float32)  # [B]
        if self.fail_when is not None and np.any(np.isclose(m, self.fail_when)):
            raise RuntimeError("injected engine failure")
        hn = np.tanh(self.a * h0 + m[None, :, None]).astype(np.float32)
        cn = (c0 + 1.0).astype(np.float32)
        y = np.stack([hn[0, :, 0], cn[0, :, 0]], axis=1)
        return y, hn, cn

    def reference(self, windows: np.ndarray) -> np.ndarray:
        """Outputs for one entity's windows [T, *input_shape] stepped from zero state: [T, 2]."""
        h = np.zeros((1, 1, self.spec.state_shape[1]), np.float32)
        c = np.zeros_like(h)
        out = []
        for w in windows:
            y, h, c = self.infer(w[None], h, c)
            out.append(y[0])
        return np.asarray(out)

    def close(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class SentRecord:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    partition: int | None


@dataclass
class ListProducer:
    """A ``stream_infer.kafka.Producer`` that keeps every record in ``sent`` and never fails a
    delivery. ``max_request_size`` mimics the clients' synchronous size check."""

    max_request_size: int = 1 << 30
    sent: list[SentRecord] = field(default_factory=list)
    client: str = "list"
    on_error: Any = None

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        headers: Any = None,
    ) -> None:
        size = len(value or b"") + len(key or b"") + sum(len(k) + len(v) for k, v in headers or ())
        if size > self.max_request_size:
            raise ValueError(f"record of {size} bytes > max_request_size {self.max_request_size}")
        self.sent.append(SentRecord(topic, key, value, list(headers or ()), partition))

    def key_partitions(self, topic: str, keys: list[bytes]) -> list[int | None]:
        return [None] * len(keys)

    def on(self, topic: str) -> list[SentRecord]:
        return [r for r in self.sent if r.topic == topic]

    def flush_within(self, timeout_s: float | None = None) -> None:
        pass

    def abandon(self) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        pass


def linear_card(name: str, window: int, features: int, layers: int = 1, hidden: int = 4) -> ModelCard:
    """The card of a ``LinearEngine`` sensor model (labels a, b; hop 1), for tests that serve
    one without an artifact."""
    return ModelCard(
        name=name,
        version="1",
        kind="sensor",
        window=window,
        hop=1,
        sample_shape=[features],
        labels=["a", "b"],
        lstm_layers=layers,
        hidden_size=hidden,
    )
