"""HTTP endpoints: ``/metrics`` (Prometheus text format), ``/healthz`` and ``/readyz``.

``/healthz`` answers 200 while the run loop is alive: it made progress within
``stall_timeout_s``, and its consumer has not been out of a settled group membership for longer
than ``group_timeout_s`` (the broker's own bound on a rebalance: beyond it the member is wedged,
and a restart is the cure). ``/readyz`` answers 200 once the engine is loaded and partitions are
assigned. ``/entities/<id>`` (``metrics.entity_api``, off by default) answers one entity's state
as JSON through the ``entities`` callable the service passes (``?tensors=1`` adds the state
tensors' values). Served from a daemon thread so it never blocks the pipeline.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from stream_infer.errors import ConfigError

logger = logging.getLogger(__name__)


class Health:
    """Liveness and readiness flags the run loop updates."""

    def __init__(self, stall_timeout_s: float = 60.0, group_timeout_s: float = 345.0) -> None:
        self.stall_timeout_s = stall_timeout_s
        self.group_timeout_s = group_timeout_s
        self.last_beat = time.monotonic()
        self.unsettled_since: float | None = None
        self.engine_loaded = False
        self.partitions_assigned = False
        self.stopping = False

    def beat(self) -> None:
        self.last_beat = time.monotonic()

    def group_settled(self, settled: bool) -> None:
        """Record whether the consumer is a settled group member (joined, not rebalancing)."""
        if settled:
            self.unsettled_since = None
        elif self.unsettled_since is None:
            self.unsettled_since = time.monotonic()

    @property
    def wedged(self) -> bool:
        """Out of a settled membership for longer than any rebalance may take."""
        since = self.unsettled_since
        return since is not None and time.monotonic() - since >= self.group_timeout_s

    @property
    def alive(self) -> bool:
        return time.monotonic() - self.last_beat < self.stall_timeout_s and not self.wedged

    @property
    def ready(self) -> bool:
        return self.engine_loaded and self.partitions_assigned and not self.stopping


EntityLookup = Callable[[str, bool], tuple[int, dict[str, Any]]]
ENTITIES_PREFIX = "/entities/"


def serve_http(
    health: Health,
    port: int,
    host: str = "0.0.0.0",
    registry: CollectorRegistry = REGISTRY,
    entities: EntityLookup | None = None,
) -> ThreadingHTTPServer:
    """Start the endpoints on ``host:port`` (port 0 picks a free one; see ``server_port``).
    ``entities``: ``(entity id, with tensor values) -> (status, JSON document)`` for
    ``GET /entities/<id>``; None leaves that route out (404).

    Raises ``ConfigError`` naming the port when it cannot be bound (in use, or a host that is
    not this machine's)."""

    routes: dict[str, Callable[[], tuple[int, bytes, str]]] = {
        "/metrics": lambda: (200, generate_latest(registry), CONTENT_TYPE_LATEST),
        "/healthz": lambda: (
            (200, b"ok\n", "text/plain")
            if health.alive
            else (503, b"out of the consumer group\n" if health.wedged else b"stalled\n", "text/plain")
        ),
        "/readyz": lambda: (
            (200, b"ready\n", "text/plain") if health.ready else (503, b"not ready\n", "text/plain")
        ),
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0]
            route = routes.get(path)
            if route is None and entities is not None and path.startswith(ENTITIES_PREFIX):
                status, body, ctype = _entity(entities, self.path)
            else:
                status, body, ctype = route() if route else (404, b"not found\n", "text/plain")
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            logger.debug("http: " + format, *args)

    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as exc:
        cause = "in use" if exc.errno == errno.EADDRINUSE else f"not available: {exc.strerror or exc}"
        raise ConfigError(f"metrics.port {port} on {host} is {cause}") from exc
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server


def _entity(lookup: EntityLookup, raw_path: str) -> tuple[int, bytes, str]:
    url = urlsplit(raw_path)
    entity = unquote(url.path[len(ENTITIES_PREFIX) :])
    if not entity:
        return 404, orjson.dumps({"reason": "no entity id in the path"}), "application/json"
    tensors = parse_qs(url.query).get("tensors", ["0"])[-1] in ("1", "true", "yes")
    try:
        status, doc = lookup(entity, tensors)
    except Exception as exc:  # an answer, never a dead HTTP thread
        logger.warning("GET /entities/%s failed: %s", entity, exc)
        status, doc = 500, {"entity": entity, "reason": f"{type(exc).__name__}: {exc}"}
    return status, orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY), "application/json"
