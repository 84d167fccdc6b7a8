"""Typed settings, read from a YAML file and ``STREAM_INFER_*`` environment variables.

Environment variables override the file; nested keys use ``__`` (``STREAM_INFER_KAFKA__BOOTSTRAP_SERVERS``).
Unknown keys and invalid values fail at start with a message that names them. Secrets are
``SecretStr`` (never printed) and may come from files (``*_file``), as Kubernetes mounts them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from stream_infer.errors import ConfigError

if TYPE_CHECKING:
    from stream_infer.formats.schema_registry import SchemaRegistry


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaSettings(_Section):
    # The Kafka client (stream_infer.kafka): librdkafka through confluent-kafka, or kafka-python.
    client: Literal["confluent-kafka", "kafka-python"] = "confluent-kafka"
    bootstrap_servers: str = "127.0.0.1:9092"
    client_id: str = "stream-infer"
    group_id: str = "stream-infer"
    # Static membership: a stable id per pod (the StatefulSet pod name) avoids a rebalance on restart.
    group_instance_id: str | None = None
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    session_timeout_ms: int = Field(45_000, ge=6_000)
    max_poll_interval_ms: int = Field(300_000, ge=10_000)
    max_poll_records: int = Field(5_000, ge=1)
    poll_timeout_ms: int = Field(100, ge=50, le=1_000)
    fetch_max_bytes: int = Field(52_428_800, ge=1024)
    max_partition_fetch_bytes: int = Field(4_194_304, ge=1024)
    request_timeout_ms: int = Field(30_000, ge=1_000)
    reconnect_backoff_max_ms: int = Field(5_000, ge=50)
    # At start: how long to keep trying to reach the brokers before failing with one line.
    startup_timeout_s: float = Field(30.0, gt=0)
    linger_ms: int = Field(5, ge=0)
    producer_batch_bytes: int = Field(262_144, ge=1024)
    compression_type: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "none"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_password_file: Path | None = None
    # OAUTHBEARER: tokens from an OpenID Connect provider, client credentials grant (oauth.py).
    sasl_oauth_token_endpoint_url: str | None = None
    sasl_oauth_client_id: str | None = None
    sasl_oauth_client_secret: SecretStr | None = None
    sasl_oauth_client_secret_file: Path | None = None
    sasl_oauth_scope: str | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_password: SecretStr | None = None
    ssl_check_hostname: bool = True
    # With kafka.client kafka-python: any other kafka-python connection property, passed to every
    # client as is (e.g. ssl_ciphers, connections_max_idle_ms, api_version, socket_options): only
    # keys that the consumer, the producer and the admin client all accept, checked at start.
    client_properties: dict[str, Any] = Field(default_factory=dict)
    # With kafka.client confluent-kafka: any other librdkafka property of every client (the group
    # consumer, the producer, the admin client and the readers), by librdkafka's name (e.g. ``queued.max.messages.kbytes``, ``ssl.cipher.suites``);
    # the service's own keys win over them.
    librdkafka_properties: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_security(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL"):
            if self.sasl_mechanism == "OAUTHBEARER":
                if not (self.sasl_oauth_token_endpoint_url and self.sasl_oauth_client_id):
                    raise ValueError(
                        "OAUTHBEARER needs kafka.sasl_oauth_token_endpoint_url and kafka.sasl_oauth_client_id"
                    )
                if self.sasl_oauth_client_secret is None and self.sasl_oauth_client_secret_file is None:
                    raise ValueError(
                        "OAUTHBEARER needs kafka.sasl_oauth_client_secret or kafka.sasl_oauth_client_secret_file"
                    )
                return self
            if self.sasl_mechanism is None or self.sasl_username is None:
                raise ValueError("SASL needs kafka.sasl_mechanism and kafka.sasl_username")
            if self.sasl_password is None and self.sasl_password_file is None:
                raise ValueError("SASL needs kafka.sasl_password or kafka.sasl_password_file")
        return self

    @model_validator(mode="after")
    def _check_client_properties(self) -> KafkaSettings:
        if self.client_properties:
            if self.client != "kafka-python":
                raise ValueError(
                    "kafka.client_properties are kafka-python properties: with kafka.client "
                    f"{self.client} set kafka.librdkafka_properties instead"
                )
            try:
                from stream_infer.kafka.kafka_python_admin import common_config_keys
            except ImportError:
                return self  # the start refuses the missing client in one line (require_client)
            common = common_config_keys()
            unknown = sorted(set(self.client_properties) - common)
            if unknown:
                raise ValueError(
                    f"kafka.client_properties {unknown}: not connection properties that every "
                    "kafka-python client accepts (set the service's own kafka.* keys for the others)"
                )
            managed = sorted(set(self.client_properties) & _MANAGED)
            if managed:
                raise ValueError(f"kafka.client_properties {managed}: set by the service's own kafka.* keys")
        return self

    def insecure(self) -> list[str]:
        """Warnings for settings that weaken the connection's security (logged at start)."""
        notes = []
        if self.security_protocol.endswith("SSL") and not self.ssl_check_hostname:
            notes.append(
                "kafka.ssl_check_hostname is false: the broker's certificate is not checked against "
                "its host name, so anyone holding any certificate of the same CA can pose as the broker"
            )
        if self.security_protocol == "SASL_PLAINTEXT" and self.sasl_mechanism == "PLAIN":
            notes.append(
                "kafka.security_protocol SASL_PLAINTEXT with SASL/PLAIN sends the password in clear: use SASL_SSL"
            )
        return notes

    def oauth_secret(self) -> str:
        if self.sasl_oauth_client_secret is not None:
            return self.sasl_oauth_client_secret.get_secret_value()
        assert self.sasl_oauth_client_secret_file is not None
        try:
            return self.sasl_oauth_client_secret_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"kafka.sasl_oauth_client_secret_file {self.sasl_oauth_client_secret_file}: {exc}"
            ) from exc

    def password(self) -> str | None:
        if self.sasl_password is not None:
            return self.sasl_password.get_secret_value()
        if self.sasl_password_file is not None:
            try:
                return self.sasl_password_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"kafka.sasl_password_file {self.sasl_password_file}: {exc}") from exc
        return None

    def client_kwargs(self, role: str) -> dict[str, Any]:
        """Connection and security settings shared by every kafka-python client.

        Each client gets its own ``client_id`` (``<client_id>-<role>``): kafka-python 3 keys its
        network loop by client id, and a consumer sharing one with a producer sees the producer's
        metadata updates as subscription changes and rebalances in a loop.
        """
        kw: dict[str, Any] = {
            **self.client_properties,
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "client_id": f"{self.client_id}-{role}",
            "request_timeout_ms": self.request_timeout_ms,
            "reconnect_backoff_max_ms": self.reconnect_backoff_max_ms,
            "security_protocol": self.security_protocol,
        }
        if self.sasl_mechanism == "OAUTHBEARER" and self.security_protocol.startswith("SASL"):
            from stream_infer.kafka.kafka_python_admin import token_provider
            from stream_infer.kafka.oauth import shared_provider

            assert self.sasl_oauth_token_endpoint_url and self.sasl_oauth_client_id
            kw.update(
                sasl_mechanism="OAUTHBEARER",
                sasl_oauth_token_provider=token_provider(
                    shared_provider(
                        self.sasl_oauth_token_endpoint_url,
                        self.sasl_oauth_client_id,
                        self.oauth_secret,
                        self.sasl_oauth_scope,
                    )
                ),
            )
        elif self.security_protocol.startswith("SASL"):
            kw.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.password(),
            )
        if self.security_protocol.endswith("SSL"):
            kw.update(
                ssl_cafile=_s(self.ssl_cafile),
                ssl_certfile=_s(self.ssl_certfile),
                ssl_keyfile=_s(self.ssl_keyfile),
                ssl_check_hostname=self.ssl_check_hostname,
                ssl_password=self.ssl_password.get_secret_value() if self.ssl_password else None,
            )
        return kw


# kafka-python properties that KafkaSettings sets itself: not overridable by client_properties.
_MANAGED = {
    "bootstrap_servers",
    "client_id",
    "request_timeout_ms",
    "reconnect_backoff_max_ms",
    "security_protocol",
    "sasl_mechanism",
    "sasl_plain_username",
    "sasl_plain_password",
    "sasl_oauth_token_provider",
    "ssl_cafile",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_check_hostname",
    "ssl_password",
}


def _s(p: Path | None) -> str | None:
    return str(p) if p is not None else None


class TopicSettings(_Section):
    input: str = "sensor-events"
    output: str = "predictions"
    dead_letter: str | None = None  # default: "<input>.dlq"
    changelog: str | None = None  # default: "<group_id>.<input>.state"
    create: bool = True  # create missing topics at start, the input too (changelog always compacted)
    # Partitions of the input topic when ``create`` makes it (it was missing): the most instances
    # that can share the work. Create the input yourself to choose its other settings.
    input_partitions: int = Field(4, ge=1)
    output_partitions: int | None = Field(None, ge=1)  # default: as many as the input


class ModelSettings(_Section):
    artifact: Path = Path("artifacts/basicmotions-cnnlstm")
    backend: Literal["onnxruntime", "torch", "tensorrt"] = "onnxruntime"
    device: str = "cpu"
    # Where per-entity state lives: auto is host numpy on the CPU and torch tensors on CUDA;
    # torch keeps torch tensors on the engine's device, the CPU included (backend torch only
    # there: the torch engine takes tensors; on CUDA every backend does).
    state_slab: Literal["auto", "numpy", "torch"] = "auto"
    # SHA-256 of the artifact's model.json (`serve --check` prints it): any other card is
    # refused at start, and the card's own file digests then pin every model file.
    card_sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    # Restore entity state written by another model (an earlier version of this one) when its
    # state contract is this model's: window, sample shape and state shapes (the changelog
    # records them; the hop must match too). Off: such state is dropped and entities restart.
    keep_state_on_upgrade: bool = False

    @model_validator(mode="after")
    def _check_state_slab(self) -> ModelSettings:
        cuda = self.device.startswith("cuda")
        if self.state_slab == "torch" and not cuda and self.backend != "torch":
            raise ValueError(f"model.state_slab torch on the CPU needs backend torch, not {self.backend}")
        if self.state_slab == "numpy" and cuda:
            raise ValueError(
                f"model.state_slab numpy cannot serve an engine on {self.device}: use auto or torch"
            )
        return self


ROLES = ("primary", "canary", "shadow")
DEFAULT_MODEL_NAME = "default"  # the name the single ``model:`` gets (its state keys are plain)


class ServedModel(ModelSettings):
    """One entry of ``models:`` (docs/models.md): a model, its name and its role on the stream.

    * ``primary`` publishes to the output topic and runs every entity (for the entities a canary
      serves, its predictions are the reference for agreement and are not published, so the
      canary can be rolled back with no warm-up);
    * ``canary`` serves ``fraction`` of the entities (a stable hash of the entity id: an entity
      never changes model) instead of the primary, on the output topic;
    * ``shadow`` runs every entity and publishes to its own topic (default
      ``<output>.shadow.<name>``), never to the output.

    Each model keeps its own per-entity state, under its name in the changelog: promoting a
    shadow (making it the primary under the same name) starts it with the state it built."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
    role: Literal["primary", "canary", "shadow"] = "primary"
    fraction: float = Field(0.0, ge=0.0, lt=1.0)
    topic: str | None = None

    @model_validator(mode="after")
    def _check_role(self) -> ServedModel:
        if self.role == "canary" and self.fraction <= 0:
            raise ValueError(f"models: canary {self.name} needs a fraction in (0, 1)")
        if self.role != "canary" and self.fraction:
            raise ValueError(f"models: fraction is for canaries; {self.name} is a {self.role}")
        if self.role != "shadow" and self.topic is not None:
            raise ValueError(f"models: topic is for shadows; {self.name} is a {self.role}")
        return self


class InputSettings(_Section):
    # A name registered in stream_infer.formats.FORMATS (json, f32, image, registry, ...).
    format: str = "json"
    max_message_bytes: int = Field(4_194_304, ge=16)
    max_samples_per_message: int = Field(10_000, ge=1)
    # In-band control messages (a record with a header "control": reset or set-state) steer an
    # entity's state. Off: any writer of the input could set any entity's state (docs/security.md).
    control_messages: bool = False
    # format "registry": Confluent wire format (Avro or JSON Schema), schemas from this registry.
    schema_registry_url: str | None = None
    schema_registry_username: str | None = None
    schema_registry_password: SecretStr | None = None
    schema_registry_password_file: Path | None = None

    @field_validator("format")
    @classmethod
    def _check_format(cls, v: str) -> str:
        from stream_infer.formats import FORMATS, format_names

        if v not in FORMATS:  # the shape of pydantic's own message for a Literal
            raise PydanticCustomError(
                "literal_error", "Input should be {expected}", {"expected": format_names()}
            )
        return v

    @model_validator(mode="after")
    def _check_registry(self) -> InputSettings:
        if self.needs_registry and not self.schema_registry_url:
            raise ValueError(f"input.format {self.format} needs input.schema_registry_url")
        return self

    @property
    def needs_registry(self) -> bool:
        """Whether the format resolves schema ids through a schema registry."""
        from stream_infer.formats import FORMATS

        return FORMATS[self.format].needs_registry

    def schema_registry(self) -> SchemaRegistry | None:
        """The registry client of a format that needs one (None for the other formats)."""
        if not self.needs_registry or not self.schema_registry_url:
            return None
        from stream_infer.formats.schema_registry import SchemaRegistry, require_registry_extra

        require_registry_extra()
        password = None
        if self.schema_registry_password is not None:
            password = self.schema_registry_password.get_secret_value()
        elif self.schema_registry_password_file is not None:
            try:
                password = self.schema_registry_password_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(
                    f"input.schema_registry_password_file {self.schema_registry_password_file}: {exc}"
                ) from exc
        return SchemaRegistry(self.schema_registry_url, self.schema_registry_username, password)


class EntitySettings(_Section):
    # Entities held in memory (slots). More live entities than this are paged out to the disk
    # tier, least recently seen first, and paged back in when they send again.
    max_entities: int = Field(100_000, ge=1)
    idle_ttl_s: float = Field(3600.0, gt=0)
    # page: a full memory pages out to the disk tier; refuse_new: no disk tier, a full memory
    # refuses new entities (dead letters, reason over_capacity). Either way nothing is deleted.
    on_full: Literal["page", "refuse_new"] = "page"
    # The disk tier's directory (a local volume; emptied at start: the changelog is the durable
    # copy). None: a temporary directory, removed at exit.
    disk_path: Path | None = None
    # The disk tier's budget; when it is full too, new entities are refused (over_capacity).
    disk_max_bytes: int = Field(2 * 1024**3, ge=1024**2)
    # A forward jump in seq larger than this resets the entity's window and state.
    max_seq_gap: int = Field(100, ge=1)
    # A backward jump larger than this is a restart (a new segment from zero state); smaller ones
    # are dropped as reorderings. None: the model's window - 2 (at least 0, below max_seq_gap),
    # so that neither a restart nor an outlier costs more than one window's warm-up.
    max_seq_rewind: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _rewind_below_gap(self) -> EntitySettings:
        if self.max_seq_rewind is not None and self.max_seq_rewind >= self.max_seq_gap:
            raise ValueError(
                f"entities.max_seq_rewind ({self.max_seq_rewind}) must be below entities.max_seq_gap "
                f"({self.max_seq_gap}): an outlier's jump must then be followed by a restart, not by drops"
            )
        return self


class BatcherSettings(_Section):
    max_batch: int = Field(256, ge=1, le=65_536)
    max_wait_ms: float = Field(20.0, ge=0)
    # Backpressure: input partitions pause above this many queued windows, resume below half.
    max_queue_windows: int = Field(16_384, ge=1)


class DeliverySettings(_Section):
    guarantee: Literal["at-least-once", "exactly-once"] = "at-least-once"
    commit_interval_ms: int = Field(1_000, ge=10)
    transactional_id: str | None = None  # default: "<group_id>-<group_instance_id or client_id>"
    # How long the broker lets a transaction stay open. A member killed inside one blocks every
    # read_committed reader of its partitions until the broker aborts it: this long plus the
    # broker's abort check (transaction.abort.timed.out.transaction.cleanup.interval.ms, 10 s).
    # A transaction spans a commit interval plus its checkpoint; one that outlives this is
    # aborted and its producer fenced (docs/durability.md). 10 s is Kafka Streams' choice.
    transaction_timeout_ms: int = Field(10_000, ge=1_000)

    @model_validator(mode="after")
    def _check_transaction_timeout(self) -> DeliverySettings:
        if self.guarantee == "exactly-once" and self.transaction_timeout_ms <= self.commit_interval_ms:
            raise ValueError(
                f"delivery.transaction_timeout_ms ({self.transaction_timeout_ms}) must be greater "
                f"than delivery.commit_interval_ms ({self.commit_interval_ms}): each transaction "
                "stays open for a whole commit interval, so the broker would abort every one"
            )
        return self


class OutputSettings(_Section):
    """What each prediction document carries (``docs/formats.md``, ``prediction.schema.json``).

    ``schema_version`` 2 (default) carries ``v`` and ``head``; a classification head publishes
    probabilities in ``scores``. 1 publishes the original document exactly (``scores`` are the
    raw logits, no ``v``/``head``) for consumers not yet moved to 2; classification models only.
    """

    schema_version: Literal[1, 2] = 2
    top_k: int = Field(0, ge=0, le=1_000)  # classification: add the k most probable labels
    logits: bool = False  # classification: add the raw logits beside the probabilities


class MetricsSettings(_Section):
    host: str = "0.0.0.0"
    port: int = Field(9100, ge=0, le=65_535)
    lag_interval_s: float = Field(5.0, gt=0)
    # GET /entities/<id> on this port: one entity's state as the pod holds it (off by default:
    # it shows entity ids and, with ?tensors=1, their state)
    entity_api: bool = False


class LoggingSettings(_Section):
    """``text``: one line per record for people; ``json``: one JSON object per line (``ts``,
    ``level``, ``logger``, ``message``, and ``entity``, ``partition``, ``offset``, ``reason``
    where a record is about one message) for log pipelines."""

    format: Literal["text", "json"] = "text"


class Settings(BaseSettings):
    """All settings of one service instance."""

    model_config = SettingsConfigDict(
        env_prefix="STREAM_INFER_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    kafka: KafkaSettings = KafkaSettings()
    topics: TopicSettings = TopicSettings()
    model: ModelSettings = ModelSettings()
    # Several models on the stream (docs/models.md); empty: the single ``model:`` alone.
    models: tuple[ServedModel, ...] = ()
    input: InputSettings = InputSettings()
    entities: EntitySettings = EntitySettings()
    batcher: BatcherSettings = BatcherSettings()
    delivery: DeliverySettings = DeliverySettings()
    output: OutputSettings = OutputSettings()
    metrics: MetricsSettings = MetricsSettings()
    shutdown_grace_s: float = Field(30.0, gt=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    logging: LoggingSettings = LoggingSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the file (passed as init kwargs by load_settings).
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _check_models(self) -> Settings:
        if not self.models:
            return self
        if "model" in self.model_fields_set:
            raise ValueError("set either model (one model) or models (several), not both")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"models: names must be unique, got {names}")
        primaries = [m.name for m in self.models if m.role == "primary"]
        if len(primaries) != 1:
            raise ValueError(f"models: exactly one primary, got {len(primaries)} ({primaries})")
        share = sum(m.fraction for m in self.models)
        if share >= 1.0:
            raise ValueError(f"models: the canaries' fractions add up to {share:g}; they must stay below 1")
        topics = [self.shadow_topic(m) for m in self.models if m.role == "shadow"]
        clash = {self.topics.output, self.topics.input, self.dead_letter_topic} & set(topics)
        if clash or len(set(topics)) != len(topics):
            raise ValueError(f"models: each shadow needs a topic of its own, got {topics}")
        return self

    @property
    def served_models(self) -> tuple[ServedModel, ...]:
        """The models on the stream, the primary first (the single ``model:`` is the primary
        named ``default``)."""
        if not self.models:
            return (ServedModel(name=DEFAULT_MODEL_NAME, **self.model.model_dump()),)
        return tuple(sorted(self.models, key=lambda m: m.role != "primary"))

    def shadow_topic(self, m: ServedModel) -> str:
        return m.topic or f"{self.topics.output}.shadow.{m.name}"

    @property
    def dead_letter_topic(self) -> str:
        return self.topics.dead_letter or f"{self.topics.input}.dlq"

    @property
    def changelog_topic(self) -> str:
        return self.topics.changelog or f"{self.kafka.group_id}.{self.topics.input}.state"

    @property
    def instance_id(self) -> str:
        return self.kafka.group_instance_id or self.kafka.client_id

    @property
    def transactional_id(self) -> str:
        return self.delivery.transactional_id or f"{self.kafka.group_id}-{self.instance_id}"


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from ``path`` (YAML), then env vars, then ``overrides`` (nested dicts).

    Raises ``ConfigError`` naming every unknown or invalid key.
    """
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"{p}: cannot read settings file: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(_yaml_problem(p, exc)) from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the settings file must hold a mapping at the top level")
        data = loaded
    data = _merge(data, overrides)
    if not data.get("kafka", {}).get("group_instance_id") and os.environ.get("POD_NAME"):
        data.setdefault("kafka", {})["group_instance_id"] = os.environ["POD_NAME"]
    try:
        return Settings(**data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {_msg(e)}" for e in exc.errors())
        where = f"{path}: " if path else ""
        raise ConfigError(f"{where}invalid settings: {problems}") from None


def _yaml_problem(path: Path, exc: yaml.YAMLError) -> str:
    """``file:line:column: not valid YAML: problem``, on one line (lines and columns from 1)."""
    mark = getattr(exc, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = getattr(exc, "problem", None) or str(exc)
    return f"{where}: not valid YAML: {' '.join(str(problem).split())}"


def _msg(err: Any) -> str:
    if err.get("type") == "extra_forbidden":
        return "unknown setting"
    return str(err.get("msg", "invalid"))


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
