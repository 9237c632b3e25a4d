"""The sinks' small HTTP server: ``/metrics`` (Prometheus), ``/health`` and ``/ready``.

``/health`` is liveness: the sink's loop turned in the last ``max_loop_age_s`` seconds (it
also turns while it waits for Postgres, so an outage is not a reason to restart the sink).
``/ready`` says whether the sink is doing its job: partitions assigned and the last Postgres
write or ping succeeded; otherwise 503 with the reasons. Runs in a daemon thread beside the
sink's (blocking) consumer loop.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from sinks.postgres import SinkStatus


def _handler(status: SinkStatus, registry: CollectorRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, payload: dict[str, Any]) -> None:
            self._send(code, json.dumps(payload).encode())

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/health":
                alive, info = status.health()
                self._json(200 if alive else 503, {"status": "ok" if alive else "stalled", **info})
            elif path == "/ready":
                ready, reasons = status.readiness()
                self._json(200 if ready else 503, {"ready": ready, "reasons": reasons})
            else:
                self._json(404, {"error": "not found", "paths": ["/metrics", "/health", "/ready"]})

        def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds: no access log
            pass

    return Handler


def start_server(status: SinkStatus, host: str, port: int,
                 registry: CollectorRegistry = REGISTRY) -> ThreadingHTTPServer:
    """Serve in a daemon thread; ``server.shutdown()`` stops it. ``registry``: the metrics
    /metrics shows (the vault and audit sinks have their own, without the event sink's)."""
    server = ThreadingHTTPServer((host, port), _handler(status, registry))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="sink-http", daemon=True).start()
    return server
