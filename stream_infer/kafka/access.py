"""What the service may do on a secured cluster: the ACLs a configuration needs, a check of
them at start, and one line for each way a broker refuses a client.

Least privilege follows from the data flow: read the input, read and write the changelog, write
the output and the dead letters, join the consumer group (and commit its offsets), and, under
exactly-once, own the transactional ids. Creating topics is asked for only when
``topics.create`` is on. ``stream-infer acls`` prints the list for a configuration, as a table,
as ``kafka-acls.sh`` commands or as JSON, and can apply it with an administrator's settings.

The start-up check reads the operations the broker says this principal may perform on each
topic (``Metadata`` with ``include_topic_authorized_operations``), so a missing ACL stops the
service before it consumes anything, with one line naming the ACL and what it is for. The
transactional id cannot be asked about in advance: a missing one fails at the producer's
``init_transactions`` and is named the same way (``explain_authorization``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

from stream_infer.errors import AccessDenied, ConfigError
from stream_infer.kafka import errors
from stream_infer.kafka.types import AclSpec, Admin

if TYPE_CHECKING:
    from stream_infer.config import Settings

logger = logging.getLogger(__name__)

Resource = Literal["TOPIC", "GROUP", "TRANSACTIONAL_ID", "CLUSTER"]
Pattern = Literal["LITERAL", "PREFIXED"]


@dataclass(frozen=True)
class Acl:
    """One ALLOW rule: ``operation`` on ``resource`` ``name`` (``pattern``), and why."""

    resource: Resource
    name: str
    pattern: Pattern
    operation: str
    why: str

    def describe(self) -> str:
        prefixed = " (prefix)" if self.pattern == "PREFIXED" else ""
        return f"{self.operation} on {self.resource.lower().replace('_', ' ')} {self.name!r}{prefixed}"


def required_acls(settings: Settings) -> list[Acl]:
    """Every ACL the service needs under ``settings``, in data-flow order."""
    t, k, d = settings.topics, settings.kafka, settings.delivery
    acls = [
        Acl("TOPIC", t.input, "LITERAL", "READ", "consume the input"),
        Acl("GROUP", k.group_id, "LITERAL", "READ", "join the consumer group and commit its offsets"),
        Acl("TOPIC", settings.changelog_topic, "LITERAL", "READ", "restore entity state"),
        Acl("TOPIC", settings.changelog_topic, "LITERAL", "WRITE", "checkpoint entity state"),
        Acl("TOPIC", t.output, "LITERAL", "WRITE", "publish predictions"),
        *(
            Acl(
                "TOPIC",
                settings.shadow_topic(m),
                "LITERAL",
                "WRITE",
                f"publish shadow {m.name}'s predictions",
            )
            for m in settings.served_models
            if m.role == "shadow"
        ),
        Acl(
            "TOPIC", settings.dead_letter_topic, "LITERAL", "WRITE", "send bad input to the dead-letter topic"
        ),
        Acl(
            "TOPIC",
            settings.dead_letter_topic,
            "LITERAL",
            "DESCRIBE_CONFIGS",
            "read max.message.bytes to size dead letters (without it the broker default is assumed)",
        ),
    ]
    if d.guarantee == "exactly-once":
        if d.transactional_id:
            acls.append(
                Acl("TRANSACTIONAL_ID", d.transactional_id, "LITERAL", "WRITE", "exactly-once transactions")
            )
        else:
            acls.append(
                Acl(
                    "TRANSACTIONAL_ID",
                    f"{k.group_id}-",
                    "PREFIXED",
                    "WRITE",
                    "exactly-once transactions (one id per instance: <group_id>-<instance>)",
                )
            )
    if t.create:
        shadows = [settings.shadow_topic(m) for m in settings.served_models if m.role == "shadow"]
        for name in dict.fromkeys(
            (t.input, t.output, *shadows, settings.dead_letter_topic, settings.changelog_topic)
        ):
            acls.append(
                Acl("TOPIC", name, "LITERAL", "CREATE", "create the topic if missing (topics.create)")
            )
    return acls


def default_principal(settings: Settings) -> str | None:
    """``User:<sasl_username>`` under SASL/PLAIN or SCRAM; None where the principal comes from
    the broker's mapping of a certificate or a token (pass it explicitly)."""
    k = settings.kafka
    if k.security_protocol.startswith("SASL") and k.sasl_mechanism != "OAUTHBEARER" and k.sasl_username:
        return f"User:{k.sasl_username}"
    return None


def render(acls: list[Acl], principal: str, fmt: str, bootstrap: str = "<bootstrap>") -> str:
    """``table`` (for people), ``kafka-acls`` (commands for Kafka's own tool) or ``json``."""
    if fmt == "json":
        return json.dumps({"principal": principal, "acls": [asdict(a) for a in acls]}, indent=2)
    if fmt == "kafka-acls":
        flag = {"TOPIC": "--topic", "GROUP": "--group", "TRANSACTIONAL_ID": "--transactional-id"}
        lines = []
        for a in acls:
            res = "--cluster" if a.resource == "CLUSTER" else f"{flag[a.resource]} '{a.name}'"
            pat = " --resource-pattern-type prefixed" if a.pattern == "PREFIXED" else ""
            op = a.operation.title().replace("_", "")
            lines.append(
                f"kafka-acls.sh --bootstrap-server {bootstrap} --command-config admin.properties "
                f"--add --allow-principal '{principal}' --operation {op} {res}{pat}  # {a.why}"
            )
        return "\n".join(lines)
    if fmt != "table":
        raise ConfigError(f"unknown format {fmt!r}: table, kafka-acls or json")
    rows = [("RESOURCE", "NAME", "PATTERN", "OPERATION", "WHY")] + [
        (a.resource, a.name, a.pattern, a.operation, a.why) for a in acls
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    out = [f"principal {principal}"]
    out += ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4] for r in rows]
    return "\n".join(out)


def apply(admin: Admin, acls: list[Acl], principal: str) -> None:
    """Create the ACLs (idempotent: Kafka keeps one copy of an existing rule)."""
    try:
        admin.create_acls([AclSpec(a.resource, a.name, a.pattern, a.operation) for a in acls], principal)
    except errors.KafkaError as exc:
        raise AccessDenied(str(exc)) from exc


def check_topics(admin: Admin, settings: Settings) -> None:
    """Raise ``AccessDenied`` naming the first topic ACL that the broker says is missing.

    A topic that does not exist yet is skipped (creating it is checked by ``CREATE``, and
    Kafka answers a topic the principal may not describe as not authorized either way)."""
    needed = [a for a in required_acls(settings) if a.resource == "TOPIC" and a.operation != "CREATE"]
    names = list(dict.fromkeys(a.name for a in needed))
    allowed = admin.topic_operations(names)
    for a in needed:
        ops = allowed.get(a.name)
        if ops is None or a.operation in ops:
            continue
        if a.operation == "DESCRIBE_CONFIGS":
            logger.warning("kafka: %s is not allowed: %s", a.describe(), a.why)
            continue
        raise AccessDenied(_denied(a))


def check_group(admin: Admin, settings: Settings) -> None:
    """Raise ``AccessDenied`` if the broker refuses this principal the consumer group. Other
    errors (the coordinator not ready yet, say) are left to the consumer, which retries them."""
    acl = next(a for a in required_acls(settings) if a.resource == "GROUP")
    try:
        ops = admin.group_operations(acl.name)
    except errors.GroupAuthorizationFailedError as exc:
        raise AccessDenied(_denied(acl)) from exc
    except errors.KafkaError:
        return
    if ops is not None and acl.operation not in {str(getattr(o, "name", o)) for o in ops}:
        raise AccessDenied(_denied(acl))


def check_access(admin: Admin, settings: Settings) -> None:
    """The start-up check: every topic ACL, then the group (see the module docstring)."""
    check_topics(admin, settings)
    check_group(admin, settings)


def _denied(acl: Acl) -> str:
    return (
        f"kafka: not authorized: {acl.describe()} (needed to {acl.why}); "
        "`stream-infer acls` prints the ACLs this configuration needs"
    )


# --- refusals: one line per cause -------------------------------------------------------------

_REFUSALS: tuple[tuple[tuple[str, ...], str], ...] = (
    (
        ("SaslAuthenticationFailed", "Authentication failed"),
        "the broker refused the SASL credentials (kafka.sasl_mechanism {mech}, user {user!r}): "
        "wrong password or unknown user",
    ),
    (
        ("Hostname mismatch", "IP address mismatch"),
        "the broker's certificate does not name the host in kafka.bootstrap_servers ({servers}); "
        "TLS hostname verification refused it",
    ),
    (
        ("CERTIFICATE_VERIFY_FAILED",),
        "the broker's certificate is not signed by a CA in kafka.ssl_cafile ({cafile}): "
        "certificate verify failed",
    ),
    (
        ("ALERT_CERTIFICATE_UNKNOWN", "ALERT_BAD_CERTIFICATE", "ALERT_UNKNOWN_CA", "CERTIFICATE_REQUIRED"),
        "the broker refused this client's certificate (kafka.ssl_certfile {certfile}): missing, "
        "or not signed by a CA the broker trusts",
    ),
    (
        ("Invalid frame length",),
        "the listener at {servers} speaks TLS: set kafka.security_protocol to SSL or SASL_SSL",
    ),
    (
        ("WRONG_VERSION_NUMBER", "record layer failure"),
        "the listener at {servers} does not speak TLS: kafka.security_protocol {protocol} does not match it",
    ),
    (
        ("UnsupportedSaslMechanism", "Unsupported SASL mechanism"),
        "the listener does not offer kafka.sasl_mechanism {mech}",
    ),
)


def explain_refusal(fault: str, settings: Settings) -> str | None:
    """One line for a connection fault that retrying cannot fix (credentials, certificates, a
    protocol mismatch); None for faults that may pass (the broker down, a timeout)."""
    k = settings.kafka
    seen = _normal(fault)
    for needles, text in _REFUSALS:
        if any(_normal(n) in seen for n in needles):
            return text.format(
                mech=k.sasl_mechanism,
                user=k.sasl_username or k.sasl_oauth_client_id,
                servers=k.bootstrap_servers,
                cafile=k.ssl_cafile or "system CAs",
                certfile=k.ssl_certfile or "none",
                protocol=k.security_protocol,
            )
    return None


def _normal(text: str) -> str:
    """Faults as both clients word them: OpenSSL's reason codes (``CERTIFICATE_VERIFY_FAILED``)
    through Python's ssl module, its reason strings (``certificate verify failed``) through
    librdkafka."""
    return text.lower().replace("_", " ")


def closed_during_sasl(protocol: str, faults: list[str]) -> str:
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


def authorization_cause(exc: BaseException) -> BaseException | None:
    """The Kafka refusal behind ``exc`` (itself or a cause), if any: an authorization error, or
    credentials refused when a connection (re)authenticates (rotated or deleted meanwhile)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, errors.AuthorizationError | errors.SaslAuthenticationFailedError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def denied(exc: BaseException, settings: Settings) -> AccessDenied | None:
    """``AccessDenied`` with one line for an authorization error behind ``exc``; else None.
    A refusal met while publishing (a ``SinkError``) is about writing, any other about reading."""
    from stream_infer.errors import SinkError

    cause = authorization_cause(exc)
    if cause is None:
        return None
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < 8:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    writing = any(isinstance(e, SinkError) for e in chain)
    return AccessDenied(explain_authorization(cause, settings, writing) or str(cause))


def explain_authorization(exc: BaseException, settings: Settings, writing: bool = False) -> str | None:
    """One line for a Kafka authorization error raised mid-start or mid-stream (an ACL missing
    or removed), naming the ACL this configuration lists for it (for a topic read and written,
    WRITE when ``writing``); None for other errors."""
    import re

    acls = required_acls(settings)

    def first(resource: Resource) -> Acl | None:
        return next((a for a in acls if a.resource == resource), None)

    acl: Acl | None = None
    if isinstance(exc, errors.SaslAuthenticationFailedError):
        return f"Kafka at {settings.kafka.bootstrap_servers} refused the connection: " + (
            explain_refusal(str(exc), settings) or str(exc)
        )
    if isinstance(exc, errors.TransactionalIdAuthorizationFailedError):
        acl = first("TRANSACTIONAL_ID")
    elif isinstance(exc, errors.GroupAuthorizationFailedError):
        acl = first("GROUP")
    elif isinstance(exc, errors.TopicAuthorizationFailedError):
        words = set(re.split(r"[\s,'\"\[\]{}()]+", str(exc)))
        topics = set(getattr(exc, "unauthorized_topics", None) or []) or words
        candidates = [
            a for a in acls if a.resource == "TOPIC" and a.name in topics and a.operation != "CREATE"
        ]
        candidates.sort(key=lambda a: a.operation != ("WRITE" if writing else "READ"))
        acl = candidates[0] if candidates else None
    elif isinstance(exc, errors.ClusterAuthorizationFailedError):
        return f"kafka: not authorized on the cluster: {exc}"
    elif not isinstance(exc, errors.AuthorizationError):
        return None
    if acl is None:
        return f"kafka: not authorized: {exc}; `stream-infer acls` prints the ACLs this configuration needs"
    return _denied(acl)
