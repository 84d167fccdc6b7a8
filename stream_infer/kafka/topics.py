"""Topic bootstrap: output, dead-letter and the compacted changelog, created if missing.

The changelog must have exactly as many partitions as the input (input partition p is restored
from changelog partition p); a mismatch fails at start.

The dead-letter topic carries the original value of a bad message, which may be as large as
``input.max_message_bytes``, so it is created with ``max.message.bytes`` of that plus
``DEAD_LETTER_HEADROOM_BYTES`` for the key, headers and framing. A dead-letter topic that already
exists keeps its own limit: ``dead_letter_limit_bytes`` reads it, and the sink cuts longer values
to fit (``error.value_truncated``) rather than fail on them.

Every client here reaches the brokers within ``kafka.startup_timeout_s`` or fails with one
``ConfigError`` naming the servers and the cause.
"""

from __future__ import annotations

import logging
import time

from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import AuthorizationError, KafkaError, TopicAlreadyExistsError

from stream_infer.config import Settings
from stream_infer.errors import ConfigError
from stream_infer.kafka import max_request_bytes
from stream_infer.kafka.access import check_access, denied, explain_refusal
from stream_infer.logs import kafka_connected, kafka_startup_fault, kafka_startup_faults
from stream_infer.pipeline.sink import DEAD_LETTER_HEADROOM_BYTES

logger = logging.getLogger(__name__)

KAFKA_DEFAULT_MAX_MESSAGE_BYTES = 1_048_588  # the broker's message.max.bytes unless configured
_ATTEMPT_MS = 2_000  # one bootstrap attempt at start, before the faults seen are checked
_warned: set[tuple[str, int]] = set()  # (topic, max.message.bytes) already warned about


def partitions_of(admin: KafkaAdminClient, topic: str) -> int | None:
    try:
        desc = admin.describe_topics([topic])
    except KafkaError:
        return None
    if not desc or desc[0].get("error_code", 0) != 0:
        return None
    return len(desc[0]["partitions"]) or None


def create_topic(
    admin: KafkaAdminClient, name: str, partitions: int, configs: dict[str, str] | None = None
) -> None:
    try:
        admin.create_topics([NewTopic(name, partitions, 1, topic_configs=configs or {})])
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


def _ensure_topics(admin: KafkaAdminClient, settings: Settings) -> int:
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


def _wait_partitions(admin: KafkaAdminClient, topic: str, timeout_s: float) -> int | None:
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


def _max_message_bytes(admin: KafkaAdminClient, topic: str) -> int | None:
    """The topic's effective ``max.message.bytes``; None if the topic does not exist (or may
    not be described: kafka-python answers both with no configs)."""
    resource = ConfigResource(ConfigResourceType.TOPIC, topic, ["max.message.bytes"])
    try:
        described = admin.describe_configs([resource], config_filter="all")
        return int(described["topic"][topic]["max.message.bytes"]["value"])
    except (KafkaError, KeyError, TypeError, ValueError):
        return None


def _broker_max_message_bytes(admin: KafkaAdminClient) -> int:
    """The brokers' default for topics (``message.max.bytes``), or Kafka's default if it cannot
    be read (e.g. no DescribeConfigs permission on the cluster)."""
    try:
        broker = str(admin.describe_cluster()["brokers"][0]["broker_id"])
        resource = ConfigResource(ConfigResourceType.BROKER, broker, ["message.max.bytes"])
        described = admin.describe_configs([resource], config_filter="all")
        return int(described["broker"][broker]["message.max.bytes"]["value"])
    except (KafkaError, KeyError, IndexError, TypeError, ValueError):
        return KAFKA_DEFAULT_MAX_MESSAGE_BYTES


def admin_client(settings: Settings, timeout_s: float | None = None) -> KafkaAdminClient:
    """An admin client connected within ``timeout_s`` (default ``kafka.startup_timeout_s``).

    The first success lets kafka-python's own warnings through (``logs.kafka_connected``);
    until then its line per failed attempt is held back and the last one becomes the cause in
    the ``ConfigError``."""
    from stream_infer.kafka import kafka_python

    kafka_python.apply()  # a refusal's answer read together with the close is kept
    k = settings.kafka
    timeout_s = k.startup_timeout_s if timeout_s is None else timeout_s
    deadline = time.monotonic() + timeout_s
    while True:
        # Short attempts: a refusal (credentials, certificates) ends the start at once.
        left_ms = max(1, min(_ATTEMPT_MS, int((deadline - time.monotonic()) * 1000)))
        try:
            admin = KafkaAdminClient(**k.client_kwargs("admin"), bootstrap_timeout_ms=left_ms)
        except KafkaError as exc:
            refused = next(filter(None, (explain_refusal(f, settings) for f in kafka_startup_faults())), None)
            if refused:
                raise ConfigError(
                    f"Kafka at {k.bootstrap_servers} refused the connection: {refused}"
                ) from exc
            if time.monotonic() >= deadline:
                cause = kafka_startup_fault() or str(exc)
                raise ConfigError(
                    f"cannot reach Kafka at {k.bootstrap_servers} within {timeout_s:g} s: {cause}"
                    + _closed_during_sasl(k.security_protocol, kafka_startup_faults())
                ) from exc
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            continue
        kafka_connected()
        return admin


def _closed_during_sasl(protocol: str, faults: list[str]) -> str:
    """The second possibility, for a SASL listener that only ever closed the connection: a
    broker that answers bad credentials with a bare close (no error response) looks like this
    from the client's side, so the line names both causes and what to check first."""
    if not protocol.startswith("SASL") or not any("socket disconnected" in f for f in faults):
        return ""
    return (
        "; the broker accepted the connection and then closed it, which is also how a broker "
        "without SaslAuthenticate error responses refuses credentials: check "
        "kafka.sasl_username and the password first, then the broker's log"
    )
