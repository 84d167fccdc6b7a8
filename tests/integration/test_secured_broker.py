"""The service against a secured broker, as real processes: the project's ``kafka.sh start
--secure`` (TLS with a throwaway CA, mTLS and SASL_SSL/SCRAM-SHA-512 listeners, the
StandardAuthorizer with no access unless an ACL grants it).

- Predictions flow in both guarantee modes, over SCRAM and over mTLS, for a principal that holds
  exactly the ACLs ``stream-infer acls`` prints and applies for the configuration.
- Each refusal ends the start in one line naming the cause, without a retry storm and with
  nothing committed: a wrong password, an unknown user, a broker certificate from another CA, a
  client certificate from another CA, a host name the certificate does not name, and every
  required ACL missing in turn.
- An ACL revoked mid-stream stops the service with the ACL named and nothing committed past it.

The test itself writes and reads the topics as the broker's ``admin`` (mTLS, a super user)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from stream_infer.config import load_settings
from stream_infer.kafka.access import Acl, required_acls
from stream_infer.kafka.kafka_python_admin import kafka_python_acls
from tests.conftest import KAFKA_SH
from tests.processes import (
    SECURED,
    ServiceProcess,
    StreamFeeder,
    check_delivery,
    committed_offsets,
    create_topic,
    entity_streams,
    free_port,
    read_hops,
    reference,
    run_cli,
    service_config,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PRINCIPAL = "User:stream-infer"


@dataclass
class Secured:
    mtls: str  # bootstrap of the mTLS listener (the test's own clients use it as admin)
    scram: str  # bootstrap of the SASL_SSL listener
    tls: Path
    passwords: Path

    def client(self, auth: str, **over: Any) -> dict[str, Any]:
        """The service's ``kafka`` settings as user stream-infer over ``auth`` (scram or mtls)."""
        if auth == "scram":
            base = {
                "bootstrap_servers": self.scram,
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "SCRAM-SHA-512",
                "sasl_username": "stream-infer",
                "sasl_password_file": str(self.passwords / "stream-infer.password"),
                "ssl_cafile": str(self.tls / "ca.pem"),
            }
        else:
            base = {
                "bootstrap_servers": self.mtls,
                "security_protocol": "SSL",
                "ssl_cafile": str(self.tls / "ca.pem"),
                "ssl_certfile": str(self.tls / "stream-infer.pem"),
                "ssl_keyfile": str(self.tls / "stream-infer.key"),
            }
        return {**base, "startup_timeout_s": 20, **over}

    def admin_kafka(self) -> dict[str, Any]:
        return {
            "bootstrap_servers": self.mtls,
            "security_protocol": "SSL",
            "ssl_cafile": str(self.tls / "ca.pem"),
            "ssl_certfile": str(self.tls / "admin.pem"),
            "ssl_keyfile": str(self.tls / "admin.key"),
        }


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    if os.environ.get("KAFKA_BOOTSTRAP"):
        pytest.skip(
            "KAFKA_BOOTSTRAP points at an external cluster; this test starts a secured broker of its own"
        )
    home = tmp_path_factory.mktemp("kafka-secure")
    port, sport, cport = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "KAFKA_PORT": str(port),
        "KAFKA_SASL_PORT": str(sport),
        "KAFKA_CONTROLLER_PORT": str(cport),
        "KAFKA_HOME_DIR": str(home),
    }
    subprocess.run([str(KAFKA_SH), "start", "--secure"], check=True, env=env)
    try:
        envfile = dict(
            ln.split("=", 1)
            for ln in (home / "secure.env").read_text().splitlines()
            if "=" in ln and ln[0] != "#"
        )
        b = Secured(
            envfile["KAFKA_SSL_BOOTSTRAP"], envfile["KAFKA_SASL_BOOTSTRAP"], home / "tls", home / "scram"
        )
        admin = b.admin_kafka()
        SECURED[b.mtls] = {k: v for k, v in admin.items() if k != "bootstrap_servers"}
        yield b
    finally:
        SECURED.pop(f"127.0.0.1:{port}", None)
        subprocess.run([str(KAFKA_SH), "stop", "--secure"], check=False, env=env)


def _admin(b: Secured) -> Any:
    from kafka import KafkaAdminClient

    return KafkaAdminClient(**b.admin_kafka(), client_id=f"test-admin-{os.urandom(3).hex()}")


def _principal_acls(b: Secured, principal: str = PRINCIPAL) -> set[tuple[str, str, str, str]]:
    """Every ACL of ``principal``: (resource type, name, pattern, operation)."""
    from kafka.admin import (
        ACLFilter,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        ResourcePatternFilter,
        ResourceType,
    )

    admin = _admin(b)
    try:
        pattern = ResourcePatternFilter(ResourceType.ANY, None, ACLResourcePatternType.ANY)
        found, _ = admin.describe_acls(
            ACLFilter(principal, None, ACLOperation.ANY, ACLPermissionType.ANY, pattern)
        )
    finally:
        admin.close()
    return {
        (
            a.resource_pattern.resource_type.name,
            a.resource_pattern.resource_name,
            a.resource_pattern.pattern_type.name,
            a.operation.name,
        )
        for a in found
    }


def _revoke(b: Secured, acls: list[Acl]) -> None:
    admin = _admin(b)
    try:
        admin.delete_acls(kafka_python_acls(acls, PRINCIPAL))
    finally:
        admin.close()


@pytest.fixture
def clean_acls(secured: Secured) -> Iterator[None]:
    """Each test starts and ends with no ACL for the service's principal."""
    _revoke_all(secured)
    yield
    _revoke_all(secured)


def _revoke_all(b: Secured, principal: str = PRINCIPAL) -> None:
    from kafka.admin import (
        ACLFilter,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        ResourcePatternFilter,
        ResourceType,
    )

    admin = _admin(b)
    try:
        pattern = ResourcePatternFilter(ResourceType.ANY, None, ACLResourcePatternType.ANY)
        admin.delete_acls([ACLFilter(principal, None, ACLOperation.ANY, ACLPermissionType.ANY, pattern)])
    finally:
        admin.close()
    deadline = time.monotonic() + 10
    while _principal_acls(b, principal) and time.monotonic() < deadline:
        time.sleep(0.2)


def _apply_acls(b: Secured, cfg_path: Path, tmp_path: Path) -> str:
    """``stream-infer acls --apply-with`` as a process; returns the table it printed."""
    admin_cfg = tmp_path / "admin.yaml"
    admin_cfg.write_text(yaml.safe_dump({"kafka": b.admin_kafka()}))
    proc = run_cli(
        "acls", "--config", str(cfg_path), "--principal", PRINCIPAL, "--apply-with", str(admin_cfg)
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _expected(cfg: dict[str, Any]) -> set[tuple[str, str, str, str]]:
    s = load_settings(None, **cfg)
    return {(a.resource, a.name, a.pattern, a.operation) for a in required_acls(s)}


def _write(cfg: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
@pytest.mark.parametrize("auth", ["scram", "mtls"])
def test_predictions_flow_with_exactly_the_acls_it_lists(
    secured: Secured, clean_acls, artifact, tmp_path: Path, procs, feeders, auth: str, guarantee: str
) -> None:
    topic = f"sec-{auth}-{guarantee[:5]}-{os.urandom(3).hex()}"
    streams = entity_streams(6, 1, seed=21)
    ref = reference(artifact, streams)
    cfg = service_config(
        secured.mtls, topic, artifact, "a", kafka=secured.client(auth), delivery={"guarantee": guarantee}
    )
    cfg_path = _write(cfg, tmp_path / "svc.yaml")
    table = _apply_acls(secured, cfg_path, tmp_path)
    assert PRINCIPAL in table and topic in table
    deadline = time.monotonic() + 10
    while _principal_acls(secured) != _expected(cfg) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _principal_acls(secured) == _expected(cfg), "the principal holds other ACLs than listed"

    procs.append(p := ServiceProcess(cfg, tmp_path))
    p.wait_ready(120)  # it created its topics itself (topics.create: the CREATE ACLs)
    feeders.append(feeder := StreamFeeder(secured.mtls, topic, streams, 400))
    feeder.start()
    feeder.join(120)
    preds = read_hops(secured.mtls, f"{topic}.out", set(ref), timeout_s=60)
    check_delivery(preds, ref, guarantee)
    assert p.terminate(30) == 0, p.log()
    assert "not authorized" not in p.log(400)


def _refused(cfg: dict[str, Any], tmp_path: Path) -> tuple[str, float]:
    """Run ``serve`` to its end; returns its one stderr line and how long it took."""
    path = _write(cfg, tmp_path / f"refused-{os.urandom(3).hex()}.yaml")
    t0 = time.monotonic()
    proc = run_cli("serve", "--config", str(path), timeout_s=120)
    took = time.monotonic() - t0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    # One line names the cause; before it, at most the service's own warnings of a start that
    # got that far and the client's own report of the same refusal (no traceback).
    assert lines and lines[-1].startswith("error: "), lines
    noise = [
        ln
        for ln in lines[:-1]
        if " WARNING stream_infer." not in ln and not (" kafka." in ln and "AuthorizationFailed" in ln)
    ]
    assert not noise, noise
    return lines[-1], took


def _topic_for(b: Secured, prefix: str) -> str:
    """The input topic and the topics the service writes, made by the admin (so that the
    service needs no CREATE ACL: ``topics.create`` is off in the refusal tests)."""
    topic = f"{prefix}-{os.urandom(3).hex()}"
    for name in (topic, f"{topic}.out", f"{topic}.dlq"):
        create_topic(b.mtls, name, 2)
    create_topic(b.mtls, f"g-{topic}.{topic}.state", 2, **{"cleanup.policy": "compact"})
    return topic


REFUSALS = {
    "wrong password": (
        lambda b, tmp: {"sasl_password": "not-the-password"},
        "scram",
        "refused the SASL credentials",
    ),
    "unknown user": (
        lambda b, tmp: {"sasl_username": "nobody", "sasl_password": "whatever"},
        "scram",
        "refused the SASL credentials",
    ),
    "broker certificate from another CA": (
        lambda b, tmp: {"ssl_cafile": str(_other_ca(tmp)["ca"])},
        "scram",
        "not signed by a CA in kafka.ssl_cafile",
    ),
    "client certificate from another CA": (
        lambda b, tmp: {
            "ssl_certfile": str(_other_ca(tmp)["cert"]),
            "ssl_keyfile": str(_other_ca(tmp)["key"]),
        },
        "mtls",
        "refused this client's certificate",
    ),
    "host name not in the certificate": (
        lambda b, tmp: {"bootstrap_servers": b.mtls.replace("127.0.0.1", "localhost")},
        "mtls",
        "does not name the host",
    ),
}


def _other_ca(tmp: Path) -> dict[str, Path]:
    """A CA of the test's own and a certificate for CN=stream-infer signed by it."""
    d = tmp / "other-ca"
    if not (d / "client.pem").exists():
        d.mkdir(exist_ok=True)

        def ossl(*args: str) -> None:
            subprocess.run(["openssl", *args], check=True, capture_output=True)

        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        ossl("req", "-x509", "-new", *ec, "-days", "2", "-subj", "/CN=another CA",
             "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"))  # fmt: skip
        ossl("req", "-new", *ec, "-subj", "/CN=stream-infer", "-keyout", str(d / "client.key"),
             "-out", str(d / "client.csr"))  # fmt: skip
        ossl("x509", "-req", "-in", str(d / "client.csr"), "-CA", str(d / "ca.pem"), "-CAkey",
             str(d / "ca.key"), "-CAcreateserial", "-days", "2", "-out", str(d / "client.pem"))  # fmt: skip
    return {"ca": d / "ca.pem", "cert": d / "client.pem", "key": d / "client.key"}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_refused_connection_ends_the_start_in_one_line(
    secured: Secured, clean_acls, artifact, tmp_path: Path, case: str
) -> None:
    change, auth, cause = REFUSALS[case]
    topic = _topic_for(secured, "refused")
    cfg = service_config(
        secured.mtls,
        topic,
        artifact,
        "a",
        kafka=secured.client(auth, **change(secured, tmp_path)),
        topics={"input": topic, "output": f"{topic}.out", "create": False},
    )
    _apply_acls(secured, _write(cfg, tmp_path / "svc.yaml"), tmp_path)  # authorization is not the cause
    line, took = _refused(cfg, tmp_path)
    assert cause in line, line
    assert "not-the-password" not in line
    assert took < 15, f"{took:.1f} s to give up: retried a refusal"
    assert committed_offsets(secured.mtls, f"g-{topic}", topic, 2) == {0: 0, 1: 0}


_ATTEMPTS = """
import sys, yaml
from stream_infer.config import load_settings
from stream_infer.errors import ConfigError
from stream_infer.logs import configure_logging
from stream_infer.kafka.topics import admin_client

settings = load_settings(None, **yaml.safe_load(open(sys.argv[1])))
for _ in range(int(sys.argv[2])):
    configure_logging("WARNING")  # a fresh start each time: nothing seen by an earlier attempt
    try:
        admin_client(settings, timeout_s=2).close()  # one short attempt, as a start makes
        print("connected")
    except ConfigError as exc:
        print(str(exc).splitlines()[0])
"""


@pytest.mark.parametrize("case", ["wrong password", "unknown user"])
def test_every_refused_start_attempt_names_the_refusal(
    secured: Secured, artifact, tmp_path: Path, case: str
) -> None:
    """Twenty start-up connections in a row, in one process: each names the refused credentials.

    The broker's error response and its close often arrive in one read; a client that drops
    the bytes read before a close reports a disconnect instead (one attempt in four before)."""
    change, auth, cause = REFUSALS[case]
    topic = _topic_for(secured, "attempts")
    cfg = service_config(
        secured.mtls,
        topic,
        artifact,
        "a",
        kafka=secured.client(auth, **change(secured, tmp_path)),
        topics={"input": topic, "output": f"{topic}.out", "create": False},
    )
    path = _write(cfg, tmp_path / "attempts.yaml")
    proc = subprocess.run(
        [sys.executable, "-c", _ATTEMPTS, str(path), "20"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 20, proc.stdout
    wrong = [ln for ln in lines if cause not in ln]
    assert not wrong, f"{len(wrong)} of 20 attempts did not name the refusal: {wrong[0]}"


def test_hostname_verification_is_off_only_when_asked_and_then_warned(
    secured: Secured, clean_acls, artifact, tmp_path: Path
) -> None:
    topic = _topic_for(secured, "nohost")
    kafka = secured.client("mtls", bootstrap_servers=secured.mtls.replace("127.0.0.1", "localhost"))
    cfg = service_config(
        secured.mtls,
        topic,
        artifact,
        "a",
        kafka={**kafka, "ssl_check_hostname": False},
        topics={"input": topic, "output": f"{topic}.out", "create": False},
    )
    path = _write(cfg, tmp_path / "svc.yaml")
    _apply_acls(secured, path, tmp_path)
    proc = run_cli("serve", "--config", str(path), "--check", timeout_s=120)
    assert proc.returncode == 0, proc.stderr
    assert "kafka.ssl_check_hostname is false" in proc.stderr, proc.stderr
    assert "kafka access ok" in proc.stdout, proc.stdout


@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
def test_each_missing_acl_ends_the_start_naming_it(
    secured: Secured, clean_acls, artifact, tmp_path: Path, guarantee: str
) -> None:
    """Every ACL of the list removed in turn (the others granted): one line naming it."""
    topic = _topic_for(secured, "noacl")
    cfg = service_config(
        secured.mtls,
        topic,
        artifact,
        "a",
        kafka=secured.client("scram"),
        topics={"input": topic, "output": f"{topic}.out", "create": False},
        delivery={"guarantee": guarantee},
    )
    path = _write(cfg, tmp_path / "svc.yaml")
    needed = [a for a in required_acls(load_settings(None, **cfg)) if a.operation != "DESCRIBE_CONFIGS"]
    for acl in needed:
        _apply_acls(secured, path, tmp_path)
        _revoke(secured, [acl])
        line, took = _refused(cfg, tmp_path)
        assert f"not authorized: {acl.describe()}" in line, (acl, line)
        assert took < 30, f"{took:.1f} s to give up without {acl.describe()}"
    assert committed_offsets(secured.mtls, f"g-{topic}", topic, 2) == {0: 0, 1: 0}


def test_a_write_acl_revoked_mid_stream_stops_the_service_naming_it(
    secured: Secured, clean_acls, artifact, tmp_path: Path, procs, feeders
) -> None:
    topic = f"sec-revoke-{os.urandom(3).hex()}"
    streams = entity_streams(6, 1, seed=22)
    cfg = service_config(secured.mtls, topic, artifact, "a", kafka=secured.client("scram"))
    path = _write(cfg, tmp_path / "svc.yaml")
    _apply_acls(secured, path, tmp_path)
    procs.append(p := ServiceProcess(cfg, tmp_path))
    p.wait_ready(120)
    settings = load_settings(None, **cfg)
    write_out = next(
        a for a in required_acls(settings) if a.operation == "WRITE" and a.name == f"{topic}.out"
    )
    _revoke(secured, [write_out])
    time.sleep(1.0)  # the broker applies the change through its metadata log
    feeders.append(feeder := StreamFeeder(secured.mtls, topic, streams, 400))
    feeder.start()
    feeder.join(120)
    deadline = time.monotonic() + 60
    while p.alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not p.alive(), f"the service kept running without WRITE on its output:\n{p.log()}"
    assert p.proc.returncode == 2, p.log()
    assert f"not authorized: {write_out.describe()}" in p.log(5), p.log()
    assert committed_offsets(secured.mtls, f"g-{topic}", topic, 4) == {0: 0, 1: 0, 2: 0, 3: 0}


def test_credentials_rotate_without_losing_or_repeating_a_prediction(
    secured: Secured, clean_acls, artifact, tmp_path: Path, procs, feeders
) -> None:
    """The documented rotation (docs/security.md): a second user with the same ACLs, a rolling
    restart onto it (SIGTERM drains and commits), then the old user's credential and ACLs go."""
    from kafka.admin import UserScramCredentialDeletion, UserScramCredentialUpsertion

    nxt, password = "stream-infer-next", os.urandom(12).hex()
    topic = f"sec-rotate-{os.urandom(3).hex()}"
    streams = entity_streams(6, 1, seed=23)
    ref = reference(artifact, streams)
    old = service_config(
        secured.mtls,
        topic,
        artifact,
        "a",
        kafka=secured.client("scram"),
        delivery={"guarantee": "exactly-once"},
    )
    _apply_acls(secured, _write(old, tmp_path / "old.yaml"), tmp_path)
    admin = _admin(secured)
    try:
        assert admin.alter_user_scram_credentials(
            [UserScramCredentialUpsertion(nxt, "SCRAM-SHA-512", password)]
        ) == {nxt: None}
        new = service_config(
            secured.mtls,
            topic,
            artifact,
            "a",
            kafka=secured.client("scram", sasl_username=nxt, sasl_password=password),
            delivery={"guarantee": "exactly-once"},
        )
        admin_cfg = tmp_path / "admin.yaml"
        proc = run_cli(
            "acls", "-c", str(_write(new, tmp_path / "new.yaml")), "--apply-with", str(admin_cfg)
        )  # the principal comes from sasl_username
        assert proc.returncode == 0, proc.stderr

        procs.append(first := ServiceProcess(old, tmp_path))
        first.wait_ready(120)
        feeders.append(feeder := StreamFeeder(secured.mtls, topic, streams, 400))
        half = feeder.rounds // 2
        feeder.start(upto=half)
        feeder.wait_idle(60)
        assert first.terminate(30) == 0, first.log()
        procs.append(second := ServiceProcess(new, tmp_path))
        second.wait_ready(120)
        # The old credential goes only now: nothing uses it any more.
        assert admin.alter_user_scram_credentials(
            [UserScramCredentialDeletion("stream-infer", "SCRAM-SHA-512")]
        ) == {"stream-infer": None}
        feeder.join(120)
        preds = read_hops(secured.mtls, f"{topic}.out", set(ref), timeout_s=60)
        check_delivery(preds, ref, "exactly-once")
        assert second.terminate(30) == 0, second.log()
    finally:
        # Back to the broker's own credential for user stream-infer (the other tests use it).
        admin.alter_user_scram_credentials(
            [
                UserScramCredentialUpsertion(
                    "stream-infer",
                    "SCRAM-SHA-512",
                    (secured.passwords / "stream-infer.password").read_text().strip(),
                ),
                UserScramCredentialDeletion(nxt, "SCRAM-SHA-512"),
            ]
        )
        admin.close()
        _revoke_all(secured, f"User:{nxt}")


def test_a_producer_with_only_its_own_acl_reaches_nothing_but_the_input(
    secured: Secured, clean_acls, tmp_path: Path
) -> None:
    """The threat model's claim (docs/security.md): a producer allowed to write the input cannot
    write the output, the changelog or the dead-letter topic, nor read anything."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import ACL, ACLOperation, ACLPermissionType, ResourcePattern, ResourceType
    from kafka.errors import KafkaError

    topic = _topic_for(secured, "threat")
    admin = _admin(secured)
    try:
        admin.create_acls(
            [
                ACL(
                    "User:producer",
                    "*",
                    ACLOperation.WRITE,
                    ACLPermissionType.ALLOW,
                    ResourcePattern(ResourceType.TOPIC, topic),
                )
            ]
        )
    finally:
        admin.close()
    time.sleep(1.0)
    conn = {
        "bootstrap_servers": secured.scram,
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "producer",
        "sasl_plain_password": (secured.passwords / "producer.password").read_text().strip(),
        "ssl_cafile": str(secured.tls / "ca.pem"),
    }
    producer = KafkaProducer(**conn, client_id=f"test-producer-{os.urandom(3).hex()}", max_block_ms=5000)
    try:
        producer.send(topic, key=b"e", value=b"anything at all").get(10)  # the input: allowed
        for other in (f"{topic}.out", f"{topic}.dlq", f"g-{topic}.{topic}.state"):
            with pytest.raises(KafkaError):
                producer.send(other, key=b"e", value=b"forged").get(10)
    finally:
        producer.close(timeout=5)
    consumer = KafkaConsumer(**conn, client_id=f"test-reader-{os.urandom(3).hex()}", group_id=None)
    try:
        consumer.assign([TopicPartition(topic, 0)])
        consumer.seek_to_beginning()
        with pytest.raises(KafkaError):
            for _ in range(20):
                consumer.poll(timeout_ms=500)
    finally:
        consumer.close()
    granted = _principal_acls(secured, "User:producer")
    assert granted == {("TOPIC", topic, "LITERAL", "WRITE")}
    _revoke_all(secured, "User:producer")
