"""The health endpoint of the process that runs the project's flows (the deployments' runner
or a work pool's worker), and its CPU priority."""

from __future__ import annotations

import os
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from maquette.config import Settings


def lower_priority(niceness: int) -> None:
    """Raise this process's niceness to `niceness` (never lowers it: that needs privileges)."""
    current = os.nice(0)
    if niceness > current:
        os.nice(niceness - current)


def health_server(settings: Settings, healthy: Callable[[], bool]) -> ThreadingHTTPServer:
    """An HTTP server on `orchestration.host:runner_port` answering GET /health only: 200 while
    `healthy()` (the runner or worker polls the Prefect server on time: Prefect's own health
    rule), else 503."""

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != "/health":
                self._answer(404, b'{"detail": "only GET /health is served here"}')
                return
            ok = healthy()
            self._answer(200 if ok else 503, b'{"message": "OK"}' if ok else b"{}")

        def do_POST(self) -> None:
            self._answer(405, b'{"detail": "only GET /health is served here"}')

        do_PUT = do_DELETE = do_PATCH = do_POST

        def _answer(self, code: int, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # `maquette status` polls it: no line per check in the runner's log

    o = settings.orchestration
    return ThreadingHTTPServer((o.host, o.runner_port), Health)
