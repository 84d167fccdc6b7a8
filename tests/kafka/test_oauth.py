"""The OIDC token provider (client credentials) against a local HTTP endpoint: tokens are reused
until 80 % of their lifetime, refusals and outages are one clear error without the secret;
and the settings that select it, and the client property pass-through, are validated."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from stream_infer.config import KafkaSettings
from stream_infer.kafka.oauth import OidcTokenProvider, TokenError
from tests.http_json import serve_json

Reply = tuple[int, dict]


@pytest.fixture
def endpoint() -> Iterator[tuple[str, list[Reply], list[str]]]:
    replies: list[Reply] = []
    auth: list[str] = []

    def answer(method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        auth.append(headers.get("Authorization", ""))
        return replies.pop(0)

    with serve_json(answer) as url:
        yield f"{url}/token", replies, auth


def test_a_token_is_reused_until_80_percent_of_its_lifetime(endpoint) -> None:
    url, replies, auth = endpoint
    now = [0.0]
    p = OidcTokenProvider(url, "svc", lambda: "pw", clock=lambda: now[0])
    replies += [(200, {"access_token": "t1", "expires_in": 100}), (200, {"access_token": "t2"})]
    assert p.token() == "t1" and p.token() == "t1"
    now[0] = 79.0
    assert p.token() == "t1" and p.fetches == 1
    now[0] = 80.0
    assert p.token() == "t2" and p.fetches == 2
    assert auth[0] == "Basic c3ZjOnB3"  # base64("svc:pw")


@pytest.mark.parametrize(
    ("reply", "says"),
    [
        ((401, {"error": "invalid_client"}), "HTTP 401 invalid_client"),
        ((200, {"token_type": "Bearer"}), "without an access_token"),
    ],
)
def test_a_refusal_is_one_error_that_names_the_endpoint_not_the_secret(endpoint, reply, says) -> None:
    url, replies, _ = endpoint
    replies.append(reply)
    with pytest.raises(TokenError) as err:
        OidcTokenProvider(url, "svc", lambda: "top-secret").token()
    assert url in str(err.value) and says in str(err.value) and "top-secret" not in str(err.value)


def test_an_unreachable_endpoint_is_named() -> None:
    with pytest.raises(TokenError, match="unreachable"):
        OidcTokenProvider("http://127.0.0.1:9/token", "svc", lambda: "x", timeout_s=2).token()


def test_oauthbearer_settings_are_checked() -> None:
    base = {"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER"}
    with pytest.raises(ValidationError, match="sasl_oauth_token_endpoint_url"):
        KafkaSettings(**base)
    with pytest.raises(ValidationError, match="sasl_oauth_client_secret"):
        KafkaSettings(**base, sasl_oauth_token_endpoint_url="https://idp/token", sasl_oauth_client_id="svc")
    ks = KafkaSettings(
        **base,
        sasl_oauth_token_endpoint_url="https://idp/token",
        sasl_oauth_client_id="svc",
        sasl_oauth_client_secret="s3cr3t-value",
    )
    kw = ks.client_kwargs("consumer")
    assert kw["sasl_mechanism"] == "OAUTHBEARER" and kw["sasl_oauth_token_provider"].client_id == "svc"
    assert kw["sasl_oauth_token_provider"] is ks.client_kwargs("producer")["sasl_oauth_token_provider"]
    assert "s3cr3t" not in repr(ks) and "s3cr3t" not in str(ks.model_dump())


def test_client_properties_pass_through_only_shared_connection_properties() -> None:
    kp = {"client": "kafka-python"}
    ks = KafkaSettings(
        **kp, client_properties={"connections_max_idle_ms": 60_000, "metadata_max_age_ms": 30_000}
    )
    kw = ks.client_kwargs("admin")
    assert kw["connections_max_idle_ms"] == 60_000 and kw["metadata_max_age_ms"] == 30_000
    with pytest.raises(ValidationError, match="max_poll_records"):
        KafkaSettings(**kp, client_properties={"max_poll_records": 10})  # the consumer's alone
    with pytest.raises(ValidationError, match="set by the service"):
        KafkaSettings(**kp, client_properties={"bootstrap_servers": "elsewhere:9092"})


def test_client_properties_are_kafka_pythons_alone() -> None:
    """librdkafka takes its own names (kafka.librdkafka_properties): kafka-python's are refused."""
    with pytest.raises(ValidationError, match="set kafka.librdkafka_properties instead"):
        KafkaSettings(client_properties={"connections_max_idle_ms": 60_000})
