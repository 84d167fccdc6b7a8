"""The ACL list for a configuration, its renderings, and the one-line explanations of refusals
(pure logic; tests/integration/test_secured_broker.py runs them against a secured broker)."""

from __future__ import annotations

import json

import pytest

from stream_infer.config import Settings, load_settings
from stream_infer.errors import SinkError
from stream_infer.kafka import errors
from stream_infer.kafka.access import denied, explain_authorization, explain_refusal, render, required_acls


def _settings(**over: object) -> Settings:
    base: dict[str, object] = {"kafka": {"group_id": "g"}, "topics": {"input": "in", "output": "out"}}
    for k, v in over.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v  # type: ignore[dict-item]
    return load_settings(None, **base)


def _keys(s: Settings) -> set[tuple[str, str, str, str]]:
    return {(a.resource, a.name, a.pattern, a.operation) for a in required_acls(s)}


def test_at_least_once_without_topic_creation_needs_reads_writes_and_the_group() -> None:
    s = _settings(topics={"create": False})
    assert _keys(s) == {
        ("TOPIC", "in", "LITERAL", "READ"),
        ("GROUP", "g", "LITERAL", "READ"),
        ("TOPIC", "g.in.state", "LITERAL", "READ"),
        ("TOPIC", "g.in.state", "LITERAL", "WRITE"),
        ("TOPIC", "out", "LITERAL", "WRITE"),
        ("TOPIC", "in.dlq", "LITERAL", "WRITE"),
        ("TOPIC", "in.dlq", "LITERAL", "DESCRIBE_CONFIGS"),
    }


def test_exactly_once_adds_the_transactional_id_prefix_and_creation_adds_create() -> None:
    base = _keys(_settings(topics={"create": False}))
    eos = _keys(_settings(topics={"create": False}, delivery={"guarantee": "exactly-once"}))
    assert eos - base == {("TRANSACTIONAL_ID", "g-", "PREFIXED", "WRITE")}
    pinned = _keys(
        _settings(
            topics={"create": False}, delivery={"guarantee": "exactly-once", "transactional_id": "tx-1"}
        )
    )
    assert pinned - base == {("TRANSACTIONAL_ID", "tx-1", "LITERAL", "WRITE")}
    created = _keys(_settings())
    assert {k for k in created - base} == {
        ("TOPIC", t, "LITERAL", "CREATE") for t in ("in", "out", "in.dlq", "g.in.state")
    }


def test_the_renderings_carry_the_same_rules() -> None:
    s = _settings(delivery={"guarantee": "exactly-once"})
    acls = required_acls(s)
    doc = json.loads(render(acls, "User:svc", "json"))
    assert doc["principal"] == "User:svc" and len(doc["acls"]) == len(acls)
    commands = render(acls, "User:svc", "kafka-acls", "b:9093").splitlines()
    assert len(commands) == len(acls)
    assert all("--allow-principal 'User:svc'" in c and "--bootstrap-server b:9093" in c for c in commands)
    assert any("--transactional-id 'g-' --resource-pattern-type prefixed" in c for c in commands)
    assert any("--operation DescribeConfigs --topic 'in.dlq'" in c for c in commands)
    table = render(acls, "User:svc", "table").splitlines()
    assert table[0] == "principal User:svc" and len(table) == len(acls) + 2


FAULTS = [
    (
        "[Error 58] SaslAuthenticationFailedError: Authentication failed during authentication",
        "SASL credentials",
    ),
    (
        "Handshake failed: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: Hostname mismatch",
        "host",
    ),
    (
        "Handshake failed: [SSL: CERTIFICATE_VERIFY_FAILED] unable to get local issuer certificate",
        "kafka.ssl_cafile",
    ),
    ("KafkaConnectionError: [SSL: SSLV3_ALERT_CERTIFICATE_UNKNOWN] sslv3 alert", "client's certificate"),
    (
        "KafkaConnectionError: [SSL: SSLV3_ALERT_BAD_CERTIFICATE] sslv3 alert bad certificate",
        "client's certificate",
    ),
    ("InvalidReceiveError: Invalid frame length: 352518912", "speaks TLS"),
]


@pytest.mark.parametrize(("fault", "named"), FAULTS)
def test_each_refusal_gets_one_line_naming_its_cause(fault: str, named: str) -> None:
    line = explain_refusal(fault, _settings())
    assert line is not None and named in line and "\n" not in line


@pytest.mark.parametrize(
    "fault", ["KafkaConnectionError: 111 ECONNREFUSED", "socket disconnected", "timed out"]
)
def test_faults_that_may_pass_are_not_refusals(fault: str) -> None:
    assert explain_refusal(fault, _settings()) is None


def test_an_authorization_error_names_the_acl_of_that_exact_topic() -> None:
    s = _settings(topics={"input": "sensors", "output": "sensors.out"})
    err = errors.TopicAuthorizationFailedError("sensors.out")
    line = explain_authorization(err, s)
    assert line is not None and "WRITE on topic 'sensors.out'" in line
    state = errors.TopicAuthorizationFailedError("g.sensors.state")
    assert "READ on topic 'g.sensors.state'" in (explain_authorization(state, s) or "")
    # Met while publishing: the changelog's WRITE, not its READ.
    try:
        try:
            raise state
        except errors.KafkaError as exc:
            raise SinkError("refused") from exc
    except SinkError as outer:
        refused = denied(outer, s)
    assert refused is not None and "WRITE on topic 'g.sensors.state'" in str(refused)
    assert "group 'g'" in (explain_authorization(errors.GroupAuthorizationFailedError(), s) or "")
    assert denied(errors.KafkaConnectionError("x"), s) is None


def test_turning_hostname_verification_off_is_warned() -> None:
    s = _settings(kafka={"security_protocol": "SSL", "ssl_check_hostname": False})
    assert any("ssl_check_hostname is false" in n for n in s.kafka.insecure())
    assert _settings(kafka={"security_protocol": "SSL"}).kafka.insecure() == []
    plain = _settings(
        kafka={
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "PLAIN",
            "sasl_username": "u",
            "sasl_password": "p",
        }
    )
    assert any("in clear" in n for n in plain.kafka.insecure())


def test_credentials_refused_mid_stream_are_a_refusal_too() -> None:
    s = _settings(
        kafka={
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": "svc",
            "sasl_password": "p",
        }
    )
    refused = denied(errors.SaslAuthenticationFailedError("Authentication failed"), s)
    assert refused is not None and "refused the SASL credentials" in str(refused) and "'svc'" in str(refused)
