"""Logging set-up, in one place: one line per record, to stderr.

kafka-python logs every failed connection attempt (at ERROR, several a second) while a broker
is out of reach. Until the first connection succeeds those lines are held back: a start that
cannot reach Kafka then ends in one line that names the cause (``kafka_startup_fault``), not in
hundreds of client lines. ``kafka_connected`` lets kafka-python's warnings through from then on.
At ``log_level`` DEBUG nothing is held back.
"""

from __future__ import annotations

import logging
import sys

from kafka.errors import KafkaTimeoutError


class _LastFault(logging.Handler):
    """Keeps the last error kafka-python logged before its first connection (e.g.
    ``KafkaConnectionError: 111 ECONNREFUSED``)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.last: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        for arg in record.args if isinstance(record.args, tuple) else ():
            # The final timeout is what the caller reports itself; the cause is what led to it.
            if isinstance(arg, BaseException) and not isinstance(arg, KafkaTimeoutError):
                self.last = str(arg)


_held = _LastFault()


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    kafka = logging.getLogger("kafka")
    kafka.removeHandler(_held)
    kafka.propagate = True
    if root.level <= logging.DEBUG:
        kafka.setLevel(logging.DEBUG)
        return
    # Until kafka_connected(): only kafka-python's errors, kept for the start's error message.
    kafka.setLevel(logging.ERROR)
    kafka.propagate = False
    _held.last = None
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
