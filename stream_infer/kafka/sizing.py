"""Client sizes derived from the settings, shared by both client implementations."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stream_infer.config import Settings


def max_request_bytes(settings: Settings) -> int:
    """The producer's largest request: it refuses a larger record before sending it."""
    return max(4 * settings.input.max_message_bytes, 1_048_576)


def heartbeat_interval_ms(settings: Settings) -> int:
    return min(3_000, settings.kafka.session_timeout_ms // 3)


def producer_batch_bytes(settings: Settings, dead_letter_max_bytes: int | None) -> int:
    """A topic's max.message.bytes bounds a whole record batch: batches stay within what the
    dead-letter topic takes (a single larger record still goes alone, cut by the sink)."""
    k = settings.kafka
    return min(k.producer_batch_bytes, max(16_384, dead_letter_max_bytes or k.producer_batch_bytes))
