"""Kafka producer side: predictions, dead letters and state changelog records.

One idempotent producer (acks=all, from the client layer ``stream_infer.kafka``) carries all
three, so per-key order holds and, in exactly-once mode, one transaction spans them together
with the consumed offsets. Delivery failures reach the sink through the producer's ``on_error``
and are raised at ``flush`` as ``SinkError``, so no offset is committed past a prediction that
did not reach the broker.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from stream_infer.errors import SinkError
from stream_infer.kafka import Producer
from stream_infer.kafka.errors import AuthorizationError, KafkaError
from stream_infer.model.heads import Head
from stream_infer.records import InvalidMessage, WindowBatch

logger = logging.getLogger(__name__)

# Room a dead-letter topic keeps beside the largest value it takes: the key, the original headers,
# the ``error.*`` and ``source.*`` headers and the record batch's own framing. topics.py creates
# the dead-letter topic with ``max.message.bytes`` = ``input.max_message_bytes`` + this.
DEAD_LETTER_HEADROOM_BYTES = 65_536
_RECORD_OVERHEAD_BYTES = 512  # batch header (61 B), record framing and varints, with margin
_HEADER_OVERHEAD_BYTES = 10  # the two varints of one header, at most


@dataclass(frozen=True, slots=True)
class Outlet:
    """Where one model's predictions go and what they carry: the output topic (the primary and
    canaries) or a shadow's own topic; the model id on every document; the model's head."""

    topic: str
    model_id: str
    head: Head


class Sink:
    """Publishes to the output, dead-letter and changelog topics (and shadows' topics)."""

    def __init__(
        self,
        producer: Producer,
        output_topic: str,
        dead_letter_topic: str,
        changelog_topic: str,
        model_id: str,
        head: Head | list[str],
        *,
        dead_letter_max_bytes: int = 1_048_576 - DEAD_LETTER_HEADROOM_BYTES,
    ) -> None:
        """``head``: how a row of engine outputs is published (a list of labels: a
        classification head with the default output settings). ``dead_letter_max_bytes``: the
        largest dead-letter value the dead-letter topic takes (``topics.dead_letter_limit_bytes``);
        the default fits Kafka's default 1 MiB topic."""
        self.producer = producer
        self.output_topic = output_topic
        self.dead_letter_topic = dead_letter_topic
        self.changelog_topic = changelog_topic
        self.model_id = model_id
        self.head = head if isinstance(head, Head) else Head("classification", tuple(head))
        self.outlet = Outlet(output_topic, model_id, self.head)
        self.dead_letter_max_bytes = dead_letter_max_bytes
        self._errors: list[BaseException] = []
        self._lock = threading.Lock()
        producer.on_error = self._on_error
        # Exactly-once: closed while a transaction commits on the commit path's thread, so that
        # predictions and dead letters wait for the next transaction (``hold``/``release``).
        self._gate = threading.Event()
        self._gate.set()
        self._discard = False  # the open transaction is abandoned: its sends are moot
        # The last prediction published per entity (``keep_last``; for ``GET /entities/<id>``).
        self.last_predictions: dict[str, bytes] | None = None
        self._keep_last = 0

    def keep_last(self, entities: int) -> None:
        """Keep the last prediction published for up to ``entities`` entities (the oldest
        first-published are forgotten past it). Off (the default) the hot path does not pay."""
        self.last_predictions = {}
        self._keep_last = max(1, entities)

    def hold(self) -> None:
        """Predictions and dead letters wait from now on, until ``release``."""
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def discard_until_replaced(self) -> None:
        """The transaction is abandoned (it will be aborted and its input replayed): sends are
        dropped until ``replace_producer``, and nothing waits at the gate."""
        self._discard = True
        self._gate.set()

    def _open(self) -> bool:
        """Wait at the gate; False when sends are to be dropped."""
        if not self._gate.is_set():
            self._gate.wait()
        return not self._discard

    def _on_error(self, exc: BaseException) -> None:
        with self._lock:
            self._errors.append(exc)

    def replace_producer(self, producer: Producer) -> None:
        """Send through ``producer`` from now on (the exactly-once rewind). The caller has
        abandoned the old producer, so every error callback of its records has run: those
        delivery errors are moot (its transaction is aborted) and are dropped here."""
        with self._lock:
            self._errors = []
        producer.on_error = self._on_error
        self.producer = producer
        self._discard = False
        self._gate.set()

    def publish(self, batch: WindowBatch, scores: np.ndarray, outlet: Outlet | None = None) -> np.ndarray:
        """Send one prediction per window, keyed by entity, to ``outlet`` (default: the output
        topic, as this sink's model); returns emit times [B] (ms).

        Per prediction this builds one dict and one ``orjson.dumps``; everything else (the
        head's fields, emit time, partitions) is computed once per batch. Each key's partition is
        murmur2's, as the Java client picks it: librdkafka hashes in C; for kafka-python the
        producer caches it per key, so the pure-Python hash runs once per entity. A window whose
        last sample's message carried a W3C ``traceparent`` header publishes it with the
        prediction, so a trace follows a sample into the prediction it completed."""
        if not self._open():
            return np.full(len(batch), time.time_ns() // 1_000_000, dtype=np.int64)
        emit_ms = time.time_ns() // 1_000_000
        out = outlet or self.outlet
        fields = out.head.fields(scores)
        version = out.head.schema_version
        produce = self.producer.produce
        topic = out.topic
        model = out.model_id
        dumps = orjson.dumps
        entities = batch.entities
        keys = [e.encode() for e in entities]
        parts = self.producer.key_partitions(topic, keys)
        traces = batch.trace if batch.trace is not None else [None] * len(entities)
        last = self.last_predictions if topic == self.output_topic else None
        try:
            for ent, key, part, sq, ev, head_fields, tp in zip(
                entities,
                keys,
                parts,
                batch.seq.tolist(),
                batch.event_ms.tolist(),
                fields,
                traces,
                strict=True,
            ):
                doc: dict[str, Any] = {"v": version} if version > 1 else {}
                doc.update(entity=ent, seq=sq, event_time_ms=ev, emit_time_ms=emit_ms)
                doc.update(head_fields)
                doc["model"] = model
                value = dumps(doc)
                produce(topic, key, value, part, None if tp is None else [("traceparent", tp)])
                if last is not None:
                    last[ent] = value
        except AuthorizationError as exc:  # an ACL revoked: not about one prediction
            raise SinkError(f"the broker refused a send to {topic}: {exc}") from exc
        if last is not None and len(last) > self._keep_last:
            for old in list(itertools.islice(last, len(last) - self._keep_last)):
                del last[old]
        return np.full(len(batch), emit_ms, dtype=np.int64)

    def dead_letter(self, invalid: Iterable[InvalidMessage]) -> int:
        """Original key, value and headers, plus ``error.*`` and ``source.*`` headers, cut to fit
        the dead-letter topic so that one big bad message cannot stop the service.

        * A value over ``dead_letter_max_bytes`` is cut to that size (less when the key and
          headers take more than the topic's headroom) and carries ``error.value_truncated``: its
          original size in bytes.
        * The original headers are dropped when they would not fit in the headroom beside the
          value; ``error.headers_dropped`` counts them.
        * If the producer refuses a record when it is handed over (kafka-python checks the size
          against ``max_request_size`` before sending), it is sent again with the value cut to a
          tenth of the limit, then with no value (empty for a keyless message, which must carry
          one of the two). A refusal even then is not about this record: ``SinkError``.
        """
        if not self._open():
            return 0
        limit = self.dead_letter_max_bytes
        headroom = min(DEAD_LETTER_HEADROOM_BYTES, limit)  # what the topic takes beside the value
        n = 0
        for m in invalid:
            headers, fixed_bytes = _dead_letter_headers(m, headroom)
            # The value gets what is left of limit + headroom, and never more than the limit.
            fitting = max(0, min(limit, limit + headroom - fixed_bytes))
            original = m.value
            for attempt, max_value_bytes in enumerate((fitting, fitting // 10, 0)):
                value, sent = original, headers
                if original is not None and len(original) > max_value_bytes:
                    if max_value_bytes:
                        value = original[:max_value_bytes]
                    else:  # no value at all; kafka-python refuses a record with neither key nor value
                        value = None if m.key is not None else b""
                    sent = [*headers, ("error.value_truncated", str(len(original)).encode())]
                try:
                    self.producer.produce(self.dead_letter_topic, m.key, value, None, sent)
                except AuthorizationError as exc:
                    raise SinkError(f"the broker refused a send to {self.dead_letter_topic}: {exc}") from exc
                except KafkaError as exc:
                    if attempt == 2:
                        raise SinkError(
                            f"the producer refuses even a dead letter without a value: {exc!r}"
                        ) from exc
                    logger.warning(
                        "dead letter of %s[%d]@%d refused by the producer (%s); sending it with a shorter value",
                        m.topic,
                        m.partition,
                        m.offset,
                        exc,
                    )
                    continue
                break
            n += 1
        return n

    def changelog(self, records: Iterable[tuple[bytes, bytes | None, int]]) -> int:
        """(key, value or None for a tombstone, partition) records, partitioned like the input."""
        n = 0
        try:
            for key, value, partition in records:
                self.producer.produce(self.changelog_topic, key, value, partition)
                n += 1
        except AuthorizationError as exc:
            raise SinkError(f"the broker refused a send to {self.changelog_topic}: {exc}") from exc
        return n

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait for every send so far; raise ``SinkError`` if any failed."""
        self.producer.flush_within(timeout_s)
        self.raise_errors()

    def raise_errors(self) -> None:
        with self._lock:
            errors, self._errors = self._errors, []
        if errors:
            err = SinkError(f"{len(errors)} records were not delivered: {errors[0]!r}")
            raise err from errors[0]

    def close(self, timeout_s: float = 10.0) -> None:
        try:
            self.producer.close(timeout=timeout_s)
        except Exception as exc:  # closing must not mask the shutdown path
            logger.warning("producer close: %s", exc)


def _dead_letter_headers(m: InvalidMessage, headroom: int) -> tuple[list[tuple[str, bytes]], int]:
    """The headers of ``m``'s dead letter, and the bytes its key, headers and framing take. The
    original headers are left out if they would not fit in ``headroom``."""
    own = [
        ("error.reason", m.reason.encode()),
        ("error.detail", m.detail[:500].encode()),
        ("source.topic", m.topic.encode()),
        ("source.partition", str(m.partition).encode()),
        ("source.offset", str(m.offset).encode()),
    ]
    original = [h for h in m.headers if not h[0].startswith(("error.", "source."))]
    # 64: room for error.value_truncated or error.headers_dropped.
    fixed = _RECORD_OVERHEAD_BYTES + len(m.key or b"") + _headers_bytes(own) + 64
    extra = _headers_bytes(original)
    if original and fixed + extra > headroom:
        own.append(("error.headers_dropped", str(len(original)).encode()))
        return own, fixed
    return original + own, fixed + extra


def _headers_bytes(headers: list[tuple[str, bytes]]) -> int:
    return sum(len(k.encode()) + len(v) + _HEADER_OVERHEAD_BYTES for k, v in headers)
