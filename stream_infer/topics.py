"""Topic bootstrap: output, dead-letter and the compacted changelog, created if missing.

The changelog must have exactly as many partitions as the input (input partition p is restored
from changelog partition p); a mismatch fails at start.
"""

from __future__ import annotations

import logging
import time

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from stream_infer.config import Settings
from stream_infer.errors import ConfigError

logger = logging.getLogger(__name__)


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


def ensure_topics(settings: Settings, input_partitions_if_missing: int = 4, timeout_s: float = 60.0) -> int:
    """Create missing topics; return the input's partition count."""
    admin = _admin(settings, timeout_s)
    try:
        t = settings.topics
        n = partitions_of(admin, t.input)
        if n is None:
            if not t.create:
                raise ConfigError(f"input topic {t.input!r} does not exist (topics.create is false)")
            create_topic(admin, t.input, input_partitions_if_missing)
            n = input_partitions_if_missing
        if t.create:
            out_n = t.output_partitions or n
            for name, parts, conf in (
                (t.output, out_n, {}),
                (settings.dead_letter_topic, n, {}),
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
        return n
    finally:
        admin.close()


def _wait_partitions(admin: KafkaAdminClient, topic: str, timeout_s: float) -> int | None:
    deadline = time.monotonic() + timeout_s
    while True:
        n = partitions_of(admin, topic)
        if n is not None or time.monotonic() > deadline:
            return n
        time.sleep(0.2)


def _admin(settings: Settings, timeout_s: float) -> KafkaAdminClient:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return KafkaAdminClient(**settings.kafka.client_kwargs("admin"))
        except KafkaError as exc:
            if time.monotonic() > deadline:
                raise ConfigError(f"cannot reach Kafka at {settings.kafka.bootstrap_servers}: {exc}") from exc
            time.sleep(1.0)
