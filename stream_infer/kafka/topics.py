"""Topic bootstrap: output, dead-letter and the compacted changelog, created if missing.

The changelog must have exactly as many partitions as the input (input partition p is restored
from changelog partition p); a mismatch fails at start.

The dead-letter topic carries the original value of a bad message, which may be as large as
``input.max_message_bytes``, so it is created with ``max.message.bytes`` of that plus
``DEAD_LETTER_HEADROOM_BYTES`` for the key, headers and framing. A dead-letter topic that already
exists keeps its own limit: ``dead_letter_limit_bytes`` reads it, and the sink cuts longer values
to fit (``error.value_truncated``) rather than fail on them.

Every client here reaches the brokers within ``kafka.startup_timeout_s`` or fails with one
``ConfigError`` naming the servers and the cause. The admin calls go through the layer's
``Admin`` (``stream_infer.kafka.connect_admin``), so either client serves them.
"""

from __future__ import annotations

import logging
import time

from stream_infer.config import Settings
from stream_infer.errors import ConfigError
from stream_infer.kafka import connect_admin
from stream_infer.kafka.access import check_access, denied
from stream_infer.kafka.errors import AuthorizationError, TopicAlreadyExistsError
from stream_infer.kafka.sizing import max_request_bytes
from stream_infer.kafka.types import Admin
from stream_infer.pipeline.sink import DEAD_LETTER_HEADROOM_BYTES

logger = logging.getLogger(__name__)

KAFKA_DEFAULT_MAX_MESSAGE_BYTES = 1_048_588  # the broker's message.max.bytes unless configured
_warned: set[tuple[str, int]] = set()  # (topic, max.message.bytes) already warned about


def partitions_of(admin: Admin, topic: str) -> int | None:
    return admin.partitions(topic)


def create_topic(admin: Admin, name: str, partitions: int, configs: dict[str, str] | None = None) -> None:
    try:
        admin.create_topic(name, partitions, configs)
        logger.info("created topic %s (%d partitions)", name, partitions)
    except TopicAlreadyExistsError:
        pass


def ensure_topics(settings: Settings, timeout_s: float | None = None) -> int:
    """Create missing topics; return the input's partition count. Reaching the brokers may take
    ``timeout_s`` (default ``kafka.startup_timeout_s``). A missing input topic is created too
    (``topics.input_partitions`` partitions, broker defaults otherwise) and said so in a warning:
    producers that start later, or a typo in ``topics.input``, then meet a topic sized by the
    service rather than an error."""
    admin = admin_client(settings, timeout_s)
    try:
        return _ensure_topics(admin, settings)
    except AuthorizationError as exc:
        raise denied(exc, settings) or exc from exc
    finally:
        admin.close()


def _ensure_topics(admin: Admin, settings: Settings) -> int:
    check_access(admin, settings)  # first: a topic this principal may not see looks missing
    t = settings.topics
    n = partitions_of(admin, t.input)
    if n is None:
        if not t.create:
            raise ConfigError(f"input topic {t.input!r} does not exist (topics.create is false)")
        create_topic(admin, t.input, t.input_partitions)
        n = t.input_partitions
        logger.warning(
            "input topic %s did not exist: created it with %d partitions (topics.create; "
            "topics.input_partitions sets the count, or create the topic yourself)",
            t.input,
            n,
        )
    if t.create:
        out_n = t.output_partitions or n
        for name, parts, conf in (
            (t.output, out_n, {}),
            (
                settings.dead_letter_topic,
                n,
                {"max.message.bytes": str(dead_letter_topic_bytes(settings))},
            ),
            (
                settings.changelog_topic,
                n,
                {"cleanup.policy": "compact", "min.compaction.lag.ms": "0", "segment.ms": "600000"},
            ),
            *((settings.shadow_topic(m), out_n, {}) for m in settings.served_models if m.role == "shadow"),
        ):
            if partitions_of(admin, name) is None:
                create_topic(admin, name, parts, conf)
    cl = _wait_partitions(admin, settings.changelog_topic, 10.0)
    if cl is not None and cl != n:
        raise ConfigError(
            f"changelog topic {settings.changelog_topic!r} has {cl} partitions; "
            f"the input {t.input!r} has {n}: they must match"
        )
    check_access(admin, settings)
    return n


def _wait_partitions(admin: Admin, topic: str, timeout_s: float) -> int | None:
    deadline = time.monotonic() + timeout_s
    while True:
        n = partitions_of(admin, topic)
        if n is not None or time.monotonic() > deadline:
            return n
        time.sleep(0.2)


def dead_letter_topic_bytes(settings: Settings) -> int:
    """``max.message.bytes`` of a dead-letter topic this service creates: the largest input
    message plus the headroom for its key and headers. The limit applies to a whole record
    *batch*, so it is never below the producer's batch size (nor the broker's default)."""
    largest = max(
        settings.input.max_message_bytes,
        settings.kafka.producer_batch_bytes,
        KAFKA_DEFAULT_MAX_MESSAGE_BYTES - DEAD_LETTER_HEADROOM_BYTES,
    )
    return largest + DEAD_LETTER_HEADROOM_BYTES


def max_dead_letter_value_bytes(settings: Settings, topic_max_message_bytes: int) -> int:
    """The largest dead-letter value that fits a topic of ``max.message.bytes`` =
    ``topic_max_message_bytes``: the limit less ``DEAD_LETTER_HEADROOM_BYTES`` (half the limit
    when that is under twice the headroom, so a small topic still keeps some of each value), and
    never more than the producer's ``max_request_size`` less the headroom."""
    limit = min(topic_max_message_bytes, max_request_bytes(settings))
    return max(0, limit - min(DEAD_LETTER_HEADROOM_BYTES, limit - limit // 2))


def dead_letter_limit_bytes(settings: Settings) -> int:
    """The largest dead-letter value safe to send (``Sink(dead_letter_max_bytes=...)``), from the
    dead-letter topic's effective ``max.message.bytes`` (its own or the broker default; the
    broker default if the topic does not exist yet). Connects to Kafka.

    Logs a warning, once per topic and limit, when the topic takes less than the largest input
    message plus the headroom: larger dead letters are then truncated."""
    admin = admin_client(settings)
    try:
        topic_bytes = _max_message_bytes(admin, settings.dead_letter_topic)
        if topic_bytes is None:
            topic_bytes = _broker_max_message_bytes(admin)
    finally:
        admin.close()
    value_bytes = max_dead_letter_value_bytes(settings, topic_bytes)
    wanted = dead_letter_topic_bytes(settings)
    if topic_bytes < wanted and (settings.dead_letter_topic, topic_bytes) not in _warned:
        _warned.add((settings.dead_letter_topic, topic_bytes))
        logger.warning(
            "dead-letter topic %s takes messages up to %d bytes (max.message.bytes), less than "
            "input.max_message_bytes + %d = %d: larger dead letters will be truncated to values of "
            "%d bytes (header error.value_truncated); raise the topic's max.message.bytes to %d to keep them whole",
            settings.dead_letter_topic,
            topic_bytes,
            DEAD_LETTER_HEADROOM_BYTES,
            wanted,
            value_bytes,
            wanted,
        )
    return value_bytes


def dead_letter_rule(settings: Settings) -> str:
    """One line on how dead letters are sized on the brokers this service would use (for
    ``serve --check``): the dead-letter topic's limit and the truncation threshold, or what
    will be created at start. Connects to Kafka."""
    admin = admin_client(settings)
    try:
        topic = settings.dead_letter_topic
        topic_bytes = _max_message_bytes(admin, topic)
        if topic_bytes is None and settings.topics.create:
            topic_bytes = dead_letter_topic_bytes(settings)
            what = f"topic {topic} will be created with max.message.bytes {topic_bytes}"
        elif topic_bytes is None:
            topic_bytes = _broker_max_message_bytes(admin)
            what = (
                f"topic {topic} does not exist and topics.create is false "
                f"(if the broker creates it: max.message.bytes {topic_bytes})"
            )
        else:
            what = f"topic {topic} max.message.bytes {topic_bytes}"
    finally:
        admin.close()
    return (
        f"dead letters: {what}; values over {max_dead_letter_value_bytes(settings, topic_bytes)} "
        "bytes are truncated"
    )


def access_rule(settings: Settings) -> str:
    """One line on this principal's access (for ``serve --check``): ``AccessDenied`` naming the
    first missing ACL of the topics that exist and the group, else what was checked."""
    admin = admin_client(settings)
    try:
        check_access(admin, settings)
    except AuthorizationError as exc:
        raise denied(exc, settings) or exc from exc
    finally:
        admin.close()
    return "kafka access ok: the topics that exist and the group allow what this configuration needs"


def _max_message_bytes(admin: Admin, topic: str) -> int | None:
    """The topic's effective ``max.message.bytes``; None if the topic does not exist (or may
    not be described)."""
    try:
        return int(admin.topic_config(topic, "max.message.bytes") or "")
    except ValueError:
        return None


def _broker_max_message_bytes(admin: Admin) -> int:
    """The brokers' default for topics (``message.max.bytes``), or Kafka's default if it cannot
    be read (e.g. no DescribeConfigs permission on the cluster)."""
    try:
        return int(admin.broker_config("message.max.bytes") or "")
    except ValueError:
        return KAFKA_DEFAULT_MAX_MESSAGE_BYTES


def admin_client(settings: Settings, timeout_s: float | None = None) -> Admin:
    """An admin client connected within ``timeout_s`` (default ``kafka.startup_timeout_s``), by
    ``kafka.client`` (``stream_infer.kafka.connect_admin``)."""
    return connect_admin(settings, timeout_s)
