"""Security settings reach every Kafka client, secrets never reach a log line, and model files
load without running code."""

from __future__ import annotations

import ast
import logging
from pathlib import Path
from typing import Any

import pytest
import torch

import stream_infer
from stream_infer.config import Settings, load_settings
from stream_infer.errors import ModelError

ROOT = Path(stream_infer.__file__).resolve().parent
PASSWORD = "pw-9f3a-never-print-me"


class _Captured(Exception):
    pass


def _settings(tmp_path: Path, protocol: str, mechanism: str | None, client: str = "kafka-python") -> Settings:
    kafka: dict[str, Any] = {
        "security_protocol": protocol,
        "bootstrap_servers": "a:9093,b:9093",
        "client": client,
    }
    if protocol.startswith("SASL"):
        pw = tmp_path / "password"
        pw.write_text(PASSWORD + "\n")
        kafka.update(sasl_mechanism=mechanism, sasl_username="svc", sasl_password_file=str(pw))
    if protocol.endswith("SSL"):
        for name in ("ca.pem", "cert.pem", "key.pem"):
            (tmp_path / name).write_text("-")
        kafka.update(
            ssl_cafile=str(tmp_path / "ca.pem"),
            ssl_certfile=str(tmp_path / "cert.pem"),
            ssl_keyfile=str(tmp_path / "key.pem"),
            ssl_password="key-" + PASSWORD,
        )
    return load_settings(kafka=kafka, topics={"input": "in"})


def _client_kwargs_of_every_role(monkeypatch: pytest.MonkeyPatch, s: Settings) -> dict[str, dict[str, Any]]:
    """Build each client the service builds, capturing the constructor's keyword arguments
    (the constructor would connect; it is stopped there)."""
    from stream_infer import kafka as layer
    from stream_infer.kafka import compacted as source
    from stream_infer.kafka import kafka_python, kafka_python_admin, topics

    seen: dict[str, dict[str, Any]] = {}

    def fake(**kw: Any) -> Any:
        seen[kw["client_id"].rsplit("-", 1)[-1]] = kw
        raise _Captured

    for mod, name in (
        (kafka_python, "KafkaPythonConsumer"),
        (kafka_python, "KafkaPythonProducer"),
        (kafka_python_admin, "KafkaConsumer"),
        (kafka_python_admin, "KafkaAdminClient"),
    ):
        monkeypatch.setattr(mod, name, fake)
    calls = (
        lambda: layer.make_consumer(s),
        lambda: layer.make_producer(s, "txn"),
        lambda: source.read_changelog(s, [0]),
        lambda: layer.await_partitions(s, "in", timeout_s=0.1),
        lambda: topics.admin_client(s, timeout_s=0.1),
    )
    for call in calls:
        with pytest.raises(_Captured):
            call()
    return seen


@pytest.mark.parametrize(
    "protocol,mechanism",
    [
        ("SASL_SSL", "SCRAM-SHA-512"),
        ("SASL_SSL", "SCRAM-SHA-256"),
        ("SASL_PLAINTEXT", "PLAIN"),
        ("SSL", None),
    ],
)
def test_security_settings_reach_every_client(monkeypatch, tmp_path, protocol, mechanism):
    s = _settings(tmp_path, protocol, mechanism)
    seen = _client_kwargs_of_every_role(monkeypatch, s)
    assert set(seen) == {"consumer", "producer", "changelog", "probe", "admin"}
    for role, kw in seen.items():
        assert kw["security_protocol"] == protocol, role
        assert kw["bootstrap_servers"] == ["a:9093", "b:9093"]
        if mechanism:
            assert kw["sasl_mechanism"] == mechanism, role
            assert kw["sasl_plain_username"] == "svc", role
            assert kw["sasl_plain_password"] == PASSWORD, role  # read from sasl_password_file
        else:
            assert "sasl_mechanism" not in kw
        if protocol.endswith("SSL"):
            assert kw["ssl_cafile"] == str(tmp_path / "ca.pem"), role
            assert kw["ssl_certfile"] == str(tmp_path / "cert.pem"), role
            assert kw["ssl_password"] == "key-" + PASSWORD, role


@pytest.mark.parametrize(
    "protocol,mechanism",
    [("SASL_SSL", "SCRAM-SHA-512"), ("SASL_PLAINTEXT", "PLAIN"), ("SSL", None)],
)
def test_security_settings_reach_the_librdkafka_clients(monkeypatch, tmp_path, protocol, mechanism):
    """With kafka.client confluent-kafka every client is librdkafka's: the group consumer, the
    producer, the changelog reader, the probe and the admin client."""
    from stream_infer import kafka as layer
    from stream_infer.kafka import compacted as source
    from stream_infer.kafka import confluent, topics

    s = _settings(tmp_path, protocol, mechanism, client="confluent-kafka")
    seen: dict[str, dict[str, Any]] = {}

    def fake(cls: Any, conf: dict[str, Any]) -> Any:
        seen[conf["client.id"].rsplit("-", 1)[-1]] = conf
        raise _Captured

    monkeypatch.setattr(confluent, "_make", fake)
    for call in (
        lambda: layer.make_consumer(s),
        lambda: layer.make_producer(s, "txn"),
        lambda: source.read_changelog(s, [0]),
        lambda: layer.await_partitions(s, "in", timeout_s=0.1),
        lambda: topics.admin_client(s, timeout_s=0.1),
    ):
        with pytest.raises(_Captured):
            call()
    assert set(seen) == {"consumer", "producer", "changelog", "probe", "admin"}
    for role, conf in seen.items():
        assert conf["security.protocol"] == protocol.lower(), role
        assert conf["bootstrap.servers"] == "a:9093,b:9093"
        if mechanism:
            assert (conf["sasl.mechanism"], conf["sasl.username"]) == (mechanism, "svc"), role
            assert conf["sasl.password"] == PASSWORD, role  # read from sasl_password_file
        else:
            assert "sasl.mechanism" not in conf
        if protocol.endswith("SSL"):
            assert conf["ssl.ca.location"] == str(tmp_path / "ca.pem"), role
            assert conf["ssl.certificate.location"] == str(tmp_path / "cert.pem"), role
            assert conf["ssl.key.password"] == "key-" + PASSWORD, role
            assert conf["ssl.endpoint.identification.algorithm"] == "https", role
    assert seen["producer"]["transactional.id"] == "txn"


def test_secrets_never_appear_in_repr_dumps_or_logs(tmp_path, caplog):
    s = _settings(tmp_path, "SASL_SSL", "SCRAM-SHA-512")
    inline = load_settings(
        kafka={
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "PLAIN",
            "sasl_username": "svc",
            "sasl_password": PASSWORD,
        }
    )
    log = logging.getLogger("stream_infer.test")
    with caplog.at_level(logging.DEBUG):
        for obj in (s, inline, s.kafka, inline.kafka):
            log.info("settings %s %r", obj, obj)
            log.debug("dump %s", obj.model_dump())
            log.debug("json %s", obj.model_dump_json())
    text = caplog.text + repr(s) + str(inline) + repr(inline.kafka)
    assert PASSWORD not in text
    assert "**********" in text  # SecretStr's mask: the field is there, its value is not
    assert inline.kafka.password() == PASSWORD and s.kafka.password() == PASSWORD


def test_the_service_never_logs_client_kwargs():
    """client_kwargs() holds the plain password (kafka-python needs it): no module may log it."""
    offenders = []
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            is_log = (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in {"debug", "info", "warning", "error", "exception", "critical"}
            )
            if is_log and ("client_kwargs" in ast.unparse(node) or "password" in ast.unparse(node).lower()):
                offenders.append(f"{path}:{node.lineno}")
    assert not offenders


def test_every_torch_load_uses_weights_only():
    loads = []
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in {"torch.load", "load"}:
                kw = {k.arg: k.value for k in node.keywords}
                if ast.unparse(node.func) == "torch.load":
                    loads.append(path)
                    assert "weights_only" in kw and ast.unparse(kw["weights_only"]) == "True", path
    assert loads, "no torch.load found: the check looks in the wrong place"


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (Path.write_text, (Path(self.marker), "pwned"))


def test_a_weights_file_carrying_code_does_not_run_it(tmp_path):
    from stream_infer.model.card import ModelCard
    from stream_infer.model.export import load_model

    art = tmp_path / "art"
    art.mkdir()
    ModelCard(
        name="evil",
        version="1",
        kind="sensor",
        window=4,
        hop=2,
        sample_shape=[3],
        labels=["a", "b"],
        lstm_layers=1,
        hidden_size=4,
    ).save(art)
    marker = tmp_path / "marker"
    torch.save({"w": _Payload(str(marker))}, art / "weights.pt")
    with pytest.raises(ModelError, match="refused to load"):
        load_model(art)
    assert not marker.exists(), "loading the weights executed code"
