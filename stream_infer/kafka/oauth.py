"""SASL/OAUTHBEARER tokens from an OpenID Connect provider (the client credentials grant).

Both clients ask for a token at every (re)connection (kafka-python through an
``AbstractTokenProvider`` adapter in ``kafka_python_admin``, librdkafka through ``oauth_cb``);
this provider fetches one from ``kafka.sasl_oauth_token_endpoint_url`` (RFC 6749 4.4: HTTP basic
auth with the client id and secret, ``grant_type=client_credentials``, optional ``scope``) and
reuses it until 80 % of its lifetime (``expires_in``) has passed, so a fleet of clients asks the
provider once per token, not once per connection. A refused or unreachable endpoint raises
``TokenError`` naming the endpoint and the HTTP status or the network error, never the secret.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from stream_infer.errors import StreamInferError

REFRESH_AT = 0.8  # of a token's lifetime
DEFAULT_LIFETIME_S = 300.0  # when the provider does not say (no expires_in)


class TokenError(StreamInferError):
    """The OIDC provider gave no token."""


class OidcTokenProvider:
    def __init__(
        self,
        endpoint_url: str,
        client_id: str,
        client_secret: Callable[[], str],
        scope: str | None = None,
        timeout_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if urllib.parse.urlsplit(endpoint_url).scheme not in ("https", "http"):
            raise TokenError(f"kafka.sasl_oauth_token_endpoint_url {endpoint_url!r} is not an http(s) URL")
        self.endpoint_url = endpoint_url
        self.client_id = client_id
        self._secret = client_secret
        self.scope = scope
        self.timeout_s = timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0
        self.fetches = 0

    def token(self) -> str:
        with self._lock:
            if self._token is None or self._clock() >= self._refresh_at:
                self._token, lifetime = self._fetch()
                self._refresh_at = self._clock() + REFRESH_AT * lifetime
            return self._token

    def seconds_left(self) -> float:
        """How long the current token is trusted (librdkafka asks again before then)."""
        with self._lock:
            return max(5.0, self._refresh_at - self._clock())

    def _fetch(self) -> tuple[str, float]:
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        basic = base64.b64encode(
            f"{urllib.parse.quote(self.client_id)}:{urllib.parse.quote(self._secret())}".encode()
        ).decode()
        req = urllib.request.Request(
            self.endpoint_url,
            data=urllib.parse.urlencode(form).encode(),
            headers={
                "Authorization": f"Basic {basic}",
                "Content-Type": "application/x-www-form-urlencoded",
                "Accept": "application/json",
            },
            method="POST",
        )
        where = f"OAuth token endpoint {self.endpoint_url}"
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                body: Any = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise TokenError(
                f"{where} refused client {self.client_id!r}: HTTP {exc.code} {_oauth_error(exc)}"
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TokenError(f"{where} unreachable: {reason}") from None
        except ValueError:
            raise TokenError(f"{where} answered with something other than JSON") from None
        self.fetches += 1
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise TokenError(f"{where} answered without an access_token")
        lifetime = body.get("expires_in", DEFAULT_LIFETIME_S)
        return token, float(lifetime) if isinstance(
            lifetime, int | float
        ) and lifetime > 0 else DEFAULT_LIFETIME_S


def _oauth_error(exc: urllib.error.HTTPError) -> str:
    """The RFC 6749 error code of a refusal (``invalid_client``, ...), if the body has one."""
    try:
        doc = json.loads(exc.read() or b"{}")
    except ValueError:
        return ""
    return str(doc.get("error", "")) if isinstance(doc, dict) else ""


_providers: dict[tuple[str, str, str | None], OidcTokenProvider] = {}
_providers_lock = threading.Lock()


def shared_provider(
    endpoint_url: str, client_id: str, client_secret: Callable[[], str], scope: str | None
) -> OidcTokenProvider:
    """One provider per (endpoint, client, scope) in the process: every Kafka client of the
    service shares its token."""
    key = (endpoint_url, client_id, scope)
    with _providers_lock:
        if key not in _providers:
            _providers[key] = OidcTokenProvider(endpoint_url, client_id, client_secret, scope)
        return _providers[key]
