"""Logging set-up, in one place: one line per record, to stderr.

kafka-python logs every failed connection attempt (at ERROR, several a second) while a broker
is out of reach. Until the first connection succeeds those lines are held back: a start that
cannot reach Kafka then ends in one line that names the cause (``kafka_startup_fault``), not in
hundreds of client lines. ``kafka_connected`` lets kafka-python's warnings through from then on.
At ``log_level`` DEBUG nothing is held back.

Two kafka-python warnings say nothing an operator can act on and are dropped below DEBUG: "Task
... blocking the event loop" (its IO thread noticed a slow step, e.g. a large poll parsed in
Python) and "No partition metadata" (a topic's metadata not fetched yet, which it then fetches).

``format="json"`` writes one JSON object per line: ``ts``, ``level``, ``logger``, ``message``,
``exc`` (a traceback, when there is one) and the fields of ``FIELDS`` a caller passed as
``extra`` (the entity, partition and offset of the message a line is about).
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime, timezone

import orjson

FIELDS = ("entity", "topic", "partition", "offset", "reason")
_NOISE = ("blocking the event loop", "No partition metadata")


class _LastFault(logging.Handler):
    """Keeps the last error kafka-python logged before its first connection (e.g.
    ``KafkaConnectionError: 111 ECONNREFUSED``)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.last: str | None = None
        self.seen: dict[str, None] = {}  # every distinct fault, oldest first (bounded)

    def emit(self, record: logging.LogRecord) -> None:
        for arg in record.args if isinstance(record.args, tuple) else ():
            # The final timeout is what the caller reports itself; the cause is what led to it.
            if isinstance(arg, BaseException) and type(arg).__name__ != "KafkaTimeoutError":
                self.last = str(arg)
                if len(self.seen) < 64:
                    self.seen[self.last] = None
        if isinstance(record.msg, str) and "failed:" in record.msg and not record.args:
            self.seen.setdefault(record.msg, None)  # kafka-python formats some faults itself


_held = _LastFault()


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in FIELDS:
            if (value := record.__dict__.get(key)) is not None:
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


class _DropNoise(logging.Filter):
    """Drops kafka-python's unactionable warnings (see the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.WARNING or not record.name.startswith("kafka"):
            return True
        if not isinstance(record.msg, str):
            return True
        return not any(n in record.msg for n in _NOISE)


_noise = _DropNoise()


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    kafka = logging.getLogger("kafka")
    kafka.removeHandler(_held)
    kafka.propagate = True
    # On the handler: a logger's filters do not see records of its children (kafka.net...).
    if root.level <= logging.DEBUG:
        kafka.setLevel(logging.DEBUG)
        return
    handler.addFilter(_noise)
    # Until kafka_connected(): only kafka-python's errors, kept for the start's error message.
    kafka.setLevel(logging.ERROR)
    kafka.propagate = False
    _held.last = None
    _held.seen.clear()
    kafka.addHandler(_held)


def kafka_connected() -> None:
    """A client reached the broker: show kafka-python's warnings from now on (INFO stays off:
    it logs every connection and metadata update). Idempotent; a no-op unless
    ``configure_logging`` held its log back."""
    kafka = logging.getLogger("kafka")
    if _held not in kafka.handlers:
        return
    kafka.removeHandler(_held)
    kafka.propagate = True
    kafka.setLevel(max(logging.WARNING, logging.getLogger().level))


def kafka_startup_fault() -> str | None:
    """The last error kafka-python logged while no connection had succeeded yet, if any."""
    return _held.last


def kafka_startup_faults() -> list[str]:
    """Every distinct error kafka-python logged while no connection had succeeded yet: a
    refusal (bad credentials, an untrusted certificate) may hide behind later disconnects."""
    return list(_held.seen)
