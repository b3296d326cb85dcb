"""The HTTP endpoint of ``sagaz worker --metrics-port`` and ``sagaz metrics serve``:

- ``/metrics``: the Prometheus text format (process metrics, plus what is read on scrape);
- ``/healthz``: 200 while the process and its loops work (a Kubernetes liveness probe);
- ``/readyz``: 200 while the storage answers (a readiness probe), 503 with the reason otherwise.

It serves from threads of its own, so a scrape never waits for the event loop, and binds to
loopback unless told otherwise: the figures name sagas, tables and pools.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from sagaz.errors import ConfigurationError
from sagaz.observability.scrape import on_loop
from sagaz.storage.capabilities import Pingable

if TYPE_CHECKING:
    from sagaz.storage.base import SagaStorage

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "MetricsServer", "Probe", "storage_ready"]

logger = logging.getLogger(__name__)

DEFAULT_PORT = 9464
DEFAULT_HOST = "127.0.0.1"

Probe = Callable[[], tuple[bool, str]]
"""A health check: (ok, one line saying why not)."""


def storage_ready(
    storage: SagaStorage, loop: asyncio.AbstractEventLoop, timeout: float = 2.0
) -> Probe:
    """Readiness: ``storage`` answers a trivial query within ``timeout`` seconds (a storage
    that cannot say, the in-memory one, is always ready)."""

    def probe() -> tuple[bool, str]:
        if not isinstance(storage, Pingable):
            return True, "ok"
        try:
            on_loop(loop, storage.ping, timeout)
        except TimeoutError:
            return False, f"the storage did not answer within {timeout:g}s"
        except Exception as exc:
            return False, f"the storage is unavailable: {exc}"
        return True, "ok"

    return probe


def _always() -> tuple[bool, str]:
    return True, "ok"


class MetricsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on ``host:port`` (port 0: any free one)."""

    def __init__(
        self, registry: CollectorRegistry, *, host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT, healthy: Probe = _always, ready: Probe = _always,
    ):
        self.registry = registry
        self.host = host
        self.requested_port = port
        self.healthy = healthy
        self.ready = ready
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port it listens on (the one chosen when asked for 0)."""
        if self._server is None:
            return self.requested_port
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        """Bind and serve in a thread; ConfigurationError when the address is unusable."""
        handler = _handler_for(self)
        try:
            server = _QuietServer((self.host, self.requested_port), handler)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot serve metrics on {self.host}:{self.requested_port} ({exc.strerror or exc})"
                "; choose another --metrics-port/--port or --metrics-host/--host") from None
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="sagaz-metrics",
                                        daemon=True)
        self._thread.start()
        logger.info("metrics on %s/metrics", self.url,
                    extra={"action": "metrics_serving", "port": self.port})

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None


class _QuietServer(ThreadingHTTPServer):
    """A scraper that gives up (Prometheus past its scrape_timeout) closes the socket while the
    answer is written; socketserver would print that as a traceback on stderr."""

    def handle_error(self, request: object, client_address: object) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError):
            logger.debug("metrics client %s went away: %s", client_address, exc,
                         extra={"action": "metrics_client_gone"})
            return
        logger.warning("metrics request from %s failed", client_address, exc_info=True,
                       extra={"action": "metrics_request_failed"})


def _handler_for(server: MetricsServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(server.registry), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/readyz"):
                ok, why = (server.healthy if path == "/healthz" else server.ready)()
                self._send(200 if ok else 503, (why + "\n").encode(), "text/plain; charset=utf-8")
            else:
                self._send(404, b"not found: try /metrics, /healthz or /readyz\n",
                           "text/plain; charset=utf-8")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            logger.debug("metrics request: " + format, *args,
                         extra={"action": "metrics_request"})

    return Handler
