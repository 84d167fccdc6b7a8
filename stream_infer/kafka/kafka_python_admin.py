"""kafka-python's admin client, its reader outside any group and its OAuth token provider, in the
layer's types and errors (``stream_infer.kafka.connect_admin``, ``make_reader``)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import kafka
import kafka.errors as kerr
from kafka import KafkaAdminClient, KafkaConsumer
from kafka.admin import (
    ACL,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    ConfigResource,
    ConfigResourceType,
    NewTopic,
    ResourcePattern,
    ResourceType,
)
from kafka.net.sasl.oauth import AbstractTokenProvider

from stream_infer.errors import ConfigError
from stream_infer.kafka import errors
from stream_infer.kafka.kafka_python import (
    apply,
    from_kafka,
    records_from_kafka,
    to_kafka,
    translate,
    translated,
)
from stream_infer.kafka.types import AclSpec, ConsumedRecord, TopicPartition

if TYPE_CHECKING:
    from stream_infer.config import Settings

logger = logging.getLogger(__name__)

_ATTEMPT_MS = 2_000  # one bootstrap attempt at start, before the faults seen are checked
_TOPIC_AUTHORIZATION_FAILED = 29
_UNKNOWN_TOPIC = 3


class KafkaPythonAdmin:
    """``types.Admin`` on kafka-python's ``KafkaAdminClient``."""

    client = "kafka-python"

    def __init__(self, admin: Any) -> None:
        self._a = admin

    def partitions(self, topic: str) -> int | None:
        try:
            desc = self._a.describe_topics([topic])
        except kerr.KafkaError:
            return None
        if not desc or desc[0].get("error_code", 0) != 0:
            return None
        return len(desc[0]["partitions"]) or None

    @translated
    def create_topic(self, name: str, partitions: int, configs: dict[str, str] | None = None) -> None:
        self._a.create_topics([NewTopic(name, partitions, 1, topic_configs=configs or {})])

    @translated
    def topic_operations(self, topics: list[str]) -> dict[str, set[str] | None]:
        allowed: dict[str, set[str] | None] = {}
        for topic in self._a.describe_topics(topics):
            code = topic.get("error_code", 0)
            if code == _UNKNOWN_TOPIC:
                continue
            if code == _TOPIC_AUTHORIZATION_FAILED:
                allowed[topic["name"]] = set()
            else:
                ops = topic.get("authorized_operations")
                allowed[topic["name"]] = None if ops is None else {str(getattr(o, "name", o)) for o in ops}
        return allowed

    @translated
    def group_operations(self, group: str) -> set[str] | None:
        described = self._a.describe_groups([group], include_authorized_operations=True)
        found = described.get(group) if isinstance(described, dict) else None
        ops = (found or {}).get("authorized_operations")
        return None if ops is None else {str(getattr(o, "name", o)) for o in ops}

    def topic_config(self, topic: str, name: str) -> str | None:
        """None if the topic does not exist or may not be described (kafka-python answers both
        with no configs)."""
        resource = ConfigResource(ConfigResourceType.TOPIC, topic, [name])
        try:
            described = self._a.describe_configs([resource], config_filter="all")
            return str(described["topic"][topic][name]["value"])
        except (kerr.KafkaError, KeyError, TypeError):
            return None

    def broker_config(self, name: str) -> str | None:
        try:
            broker = str(self._a.describe_cluster()["brokers"][0]["broker_id"])
            resource = ConfigResource(ConfigResourceType.BROKER, broker, [name])
            described = self._a.describe_configs([resource], config_filter="all")
            return str(described["broker"][broker][name]["value"])
        except (kerr.KafkaError, KeyError, IndexError, TypeError):
            return None

    @translated
    def create_acls(self, acls: list[AclSpec], principal: str) -> None:
        result = self._a.create_acls(kafka_python_acls(acls, principal))
        failed = result.get("failed") or []
        if failed:
            acl, err = failed[0]
            raise errors.KafkaError(f"could not create ACL {acl}: {err}")

    def close(self) -> None:
        self._a.close()


def kafka_python_acls(acls: list[AclSpec], principal: str) -> list[Any]:
    """The rules as kafka-python ``ACL`` objects (for ``KafkaAdminClient.create_acls``)."""
    return [
        ACL(
            principal,
            "*",
            ACLOperation[a.operation],
            ACLPermissionType.ALLOW,
            ResourcePattern(ResourceType[a.resource], a.name, ACLResourcePatternType[a.pattern]),
        )
        for a in acls
    ]


def connect_admin(settings: Settings, timeout_s: float) -> KafkaPythonAdmin:
    """An admin client connected within ``timeout_s``.

    The first success lets kafka-python's own warnings through (``logs.kafka_connected``);
    until then its line per failed attempt is held back and the last one becomes the cause in
    the ``ConfigError``."""
    from stream_infer.kafka.access import closed_during_sasl, explain_refusal
    from stream_infer.logs import kafka_connected, kafka_startup_fault, kafka_startup_faults

    apply()  # a refusal's answer read together with the close is kept
    k = settings.kafka
    deadline = time.monotonic() + timeout_s
    while True:
        # Short attempts: a refusal (credentials, certificates) ends the start at once.
        left_ms = max(1, min(_ATTEMPT_MS, int((deadline - time.monotonic()) * 1000)))
        try:
            admin = KafkaAdminClient(**k.client_kwargs("admin"), bootstrap_timeout_ms=left_ms)
        except kerr.KafkaError as exc:
            refused = next(filter(None, (explain_refusal(f, settings) for f in kafka_startup_faults())), None)
            if refused:
                raise ConfigError(
                    f"Kafka at {k.bootstrap_servers} refused the connection: {refused}"
                ) from translate(exc)
            if time.monotonic() >= deadline:
                cause = kafka_startup_fault() or str(exc)
                raise ConfigError(
                    f"cannot reach Kafka at {k.bootstrap_servers} within {timeout_s:g} s: {cause}"
                    + closed_during_sasl(k.security_protocol, kafka_startup_faults())
                ) from translate(exc)
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            continue
        kafka_connected()
        return KafkaPythonAdmin(admin)


class KafkaPythonReader:
    """``stream_infer.kafka.Reader`` on a kafka-python consumer without a group."""

    def __init__(self, settings: Settings, role: str) -> None:
        apply()
        try:
            self._c = KafkaConsumer(
                **settings.kafka.client_kwargs(role),
                group_id=None,
                enable_auto_commit=False,
                isolation_level="read_committed",
                max_poll_records=50_000,
            )
        except kerr.KafkaError as exc:
            raise translate(exc) from exc

    @translated
    def partitions_for(self, topic: str) -> set[int] | None:
        return self._c.partitions_for_topic(topic)  # type: ignore[no-any-return]

    @translated
    def assign_from_beginning(self, partitions: list[TopicPartition]) -> None:
        parts = [to_kafka(tp) for tp in partitions]
        self._c.assign(parts)
        self._c.seek_to_beginning(*parts)

    @translated
    def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        ends = self._c.end_offsets([to_kafka(tp) for tp in partitions])
        return {from_kafka(tp): int(o) for tp, o in ends.items()}

    @translated
    def position(self, partition: TopicPartition) -> int:
        return int(self._c.position(to_kafka(partition)))

    @translated
    def poll(self, timeout_ms: int = 0) -> dict[TopicPartition, list[ConsumedRecord]]:
        return records_from_kafka(self._c.poll(timeout_ms=timeout_ms))

    def close(self) -> None:
        self._c.close()


class _TokenProvider(AbstractTokenProvider):  # type: ignore[misc]
    """The project's OIDC provider (``oauth``) as kafka-python's ``AbstractTokenProvider``."""

    def __init__(self, provider: Any) -> None:
        super().__init__()
        self.provider = provider

    def token(self) -> str:
        return self.provider.token()  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["provider"], name)


_adapters: dict[int, _TokenProvider] = {}


def token_provider(provider: Any) -> Any:
    """The one kafka-python adapter of ``provider`` (shared as the provider is)."""
    adapter = _adapters.get(id(provider))
    if adapter is None or adapter.provider is not provider:
        adapter = _adapters[id(provider)] = _TokenProvider(provider)
    return adapter


def common_config_keys() -> set[str]:
    """Properties that kafka-python's consumer, producer and admin client all accept."""
    return (
        set(kafka.KafkaConsumer.DEFAULT_CONFIG)
        & set(kafka.KafkaProducer.DEFAULT_CONFIG)
        & set(KafkaAdminClient.DEFAULT_CONFIG)
    )
