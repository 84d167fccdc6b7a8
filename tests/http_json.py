"""A local JSON-over-HTTP server for tests that stand in for an HTTP service the service calls
(an OIDC token endpoint, a schema registry's read path): ``answer(method, path, headers, body)``
gives (status, JSON document) for each request."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

Answer = Callable[[str, str, dict[str, str], bytes], tuple[int, Any]]


@contextmanager
def serve_json(answer: Answer) -> Iterator[str]:
    """The base URL (``http://127.0.0.1:<port>``) of a server answering with ``answer``."""

    class Handler(BaseHTTPRequestHandler):
        def _reply(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            status, doc = answer(self.command, self.path, dict(self.headers), body)
            data = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _reply  # noqa: N815 (http.server's names)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
