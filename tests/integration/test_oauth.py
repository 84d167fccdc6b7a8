"""SASL/OAUTHBEARER end to end: a broker of the test's own with an OAUTHBEARER listener (the
project's kafka.sh, ``KAFKA_OAUTH_PORT``; Kafka's unsecured token validator checks each
token's subject and expiry), an OpenID Connect token endpoint served by the test (client
credentials grant, HTTP basic auth), and the service as a real process that fetches its tokens
there. Predictions flow; a refused client secret ends the start in one line naming the endpoint
and the refusal. Input and output are written and read on the broker's plaintext listener."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.conftest import KAFKA_SH
from tests.http_json import serve_json
from tests.processes import (
    ServiceProcess,
    StreamFeeder,
    check_delivery,
    entity_streams,
    free_port,
    read_hops,
    reference,
    run_cli,
    service_config,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLIENT, SECRET = "stream-infer", "s3cret-value"


@dataclass
class Broker:
    plain: str
    oauth: str
    env: dict[str, str] = field(repr=False)


@pytest.fixture(scope="module")
def oauth_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    if os.environ.get("KAFKA_BOOTSTRAP"):
        pytest.skip("KAFKA_BOOTSTRAP points at an external cluster; this test starts a broker of its own")
    port, cport, oport = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "KAFKA_PORT": str(port),
        "KAFKA_CONTROLLER_PORT": str(cport),
        "KAFKA_OAUTH_PORT": str(oport),
        "KAFKA_HOME_DIR": str(tmp_path_factory.mktemp("kafka-oauth")),
    }
    subprocess.run([str(KAFKA_SH), "start"], check=True, env=env)
    try:
        yield Broker(f"127.0.0.1:{port}", f"127.0.0.1:{oport}", env)
    finally:
        subprocess.run([str(KAFKA_SH), "stop"], check=False, env=env)


def _unsigned_jwt(subject: str, lifetime_s: int) -> str:
    def part(doc: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()

    now = int(time.time())
    return f"{part({'alg': 'none'})}.{part({'sub': subject, 'iat': now, 'exp': now + lifetime_s})}."


@dataclass
class TokenEndpoint:
    url: str
    grants: list[str]  # the client id of every token issued


@pytest.fixture(scope="module")
def token_endpoint() -> Iterator[TokenEndpoint]:
    grants: list[str] = []
    expected = "Basic " + base64.b64encode(f"{CLIENT}:{SECRET}".encode()).decode()

    def answer(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict]:
        if headers.get("Authorization") != expected or b"grant_type=client_credentials" not in body:
            return 401, {"error": "invalid_client"}
        grants.append(CLIENT)
        return 200, {"access_token": _unsigned_jwt(CLIENT, 600), "token_type": "Bearer", "expires_in": 600}

    with serve_json(answer) as url:
        yield TokenEndpoint(f"{url}/oauth2/token", grants)


def _oauth(endpoint: TokenEndpoint, broker: Broker, secret: str) -> dict:
    return {
        "bootstrap_servers": broker.oauth,
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "OAUTHBEARER",
        "sasl_oauth_token_endpoint_url": endpoint.url,
        "sasl_oauth_client_id": CLIENT,
        "sasl_oauth_client_secret": secret,
    }


def _topic(broker: Broker, prefix: str, partitions: int = 2) -> str:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    name = f"{prefix}-{os.urandom(4).hex()}"
    admin = KafkaAdminClient(bootstrap_servers=broker.plain)
    try:
        admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        admin.close()
    return name


@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
def test_the_service_authenticates_with_oidc_tokens_and_serves(
    oauth_broker: Broker, token_endpoint: TokenEndpoint, artifact, tmp_path: Path, procs, feeders, guarantee
) -> None:
    topic = _topic(oauth_broker, "oauth")
    streams = entity_streams(4, 2, seed=9)
    ref = reference(artifact, streams)
    before = len(token_endpoint.grants)
    cfg = service_config(
        oauth_broker.plain,
        topic,
        artifact,
        "a",
        kafka=_oauth(token_endpoint, oauth_broker, SECRET),
        delivery={"guarantee": guarantee},
    )
    procs.append(p := ServiceProcess(cfg, tmp_path))
    p.wait_ready(120)
    feeders.append(feeder := StreamFeeder(oauth_broker.plain, topic, streams, 400))
    feeder.start()
    feeder.join(120)
    preds = read_hops(oauth_broker.plain, f"{topic}.out", set(ref), timeout_s=60)
    check_delivery(preds, ref, guarantee)
    assert p.terminate(30) == 0, p.log()
    issued = len(token_endpoint.grants) - before
    # Every client of the process (consumer, producers, admin, changelog reader) shares one token.
    assert 1 <= issued <= 2, f"{issued} tokens for one process"


def test_a_refused_client_secret_ends_the_start_in_one_line(
    oauth_broker: Broker, token_endpoint: TokenEndpoint, artifact, tmp_path: Path
) -> None:
    topic = _topic(oauth_broker, "oauth-refused")
    cfg = service_config(
        oauth_broker.plain,
        topic,
        artifact,
        "a",
        kafka={**_oauth(token_endpoint, oauth_broker, "not-the-secret"), "startup_timeout_s": 8},
    )
    path = tmp_path / "refused.yaml"
    path.write_text(yaml.safe_dump(cfg))
    t0 = time.monotonic()
    proc = run_cli("serve", "--config", str(path), timeout_s=90)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, lines
    assert token_endpoint.url in lines[0] and "HTTP 401 invalid_client" in lines[0], lines
    assert "not-the-secret" not in proc.stderr + proc.stdout
    assert time.monotonic() - t0 < 60
