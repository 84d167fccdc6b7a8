"""One exception tree for the whole package.

The run loop decides between retry and fail from ``retriable``, never from a message string
(kafka-python's error tree does the same).
"""

from __future__ import annotations


class StreamInferError(Exception):
    """Root of every error stream-infer raises on purpose."""

    retriable: bool = False


class ConfigError(StreamInferError):
    """Settings are missing, unknown or invalid; raised at start, never mid-stream."""


class DataError(StreamInferError):
    """Training or replay data cannot be read or does not match the documented format."""


class ModelError(StreamInferError):
    """A model artifact is missing, unreadable or inconsistent with its model card."""


class DecodeError(StreamInferError):
    """One input message is invalid. ``reason`` is a short stable label used in metrics and
    dead-letter headers (e.g. ``undecodable``, ``wrong_shape``, ``non_finite``)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class EngineError(StreamInferError):
    """The inference engine failed on a batch. Retried once, then the batch is split."""

    retriable = True


class StateError(StreamInferError):
    """A state snapshot cannot be decoded or belongs to another model version."""


class SinkError(StreamInferError):
    """Publishing to Kafka failed after the client's own retries."""

    retriable = True


class PipelineError(StreamInferError):
    """A failure that is not about one record (the inference thread died, the producer or the
    broker failed): the service stops without committing past unfinished records."""


class AccessDenied(StreamInferError):
    """The broker does not let this principal do something the configuration needs (a missing
    or revoked ACL): raised at start before anything is consumed, or mid-stream, where the
    service stops without committing. Retrying cannot help, so nothing is retried."""


class RegistryUnavailable(PipelineError):
    """The schema registry could not be asked (unreachable, 5xx, refused credentials) after
    retries: not about one record, so no record is dead-lettered for it; the service stops
    without committing and the input replays once the registry is back."""
