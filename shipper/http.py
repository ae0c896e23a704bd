"""The HTTP endpoint on metrics.listen: /metrics for Prometheus, /healthz and /readyz for probes.

A ThreadingHTTPServer in a daemon thread: a slow scraper never delays the main loop, and the loop never
waits for HTTP. Routing follows patroni's habit (``GET /x`` runs ``do_GET_x``); the health answers come
from shipper.health, the exposition from prometheus_client (never written by hand).
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from .errors import ShipperError

log = logging.getLogger(__name__)

Check = Callable[[], str | None]

INDEX = b"""moodle-tsdb-shipper
/metrics  Prometheus metrics
/healthz  200 while the main loop is progressing, else 503 with the reason
/readyz   200 while shipping (or nothing to ship), else 503 with the reason
"""


class MetricsServer:
    """Serves one registry and two checks on ``listen`` ("HOST:PORT", "[v6]:PORT").

    :param liveness: returns None when alive, else the reason (answers /healthz).
    :param readiness: returns None when ready, else the reason (answers /readyz).
    """

    def __init__(self, listen: str, registry: CollectorRegistry, liveness: Check, readiness: Check) -> None:
        self.listen = listen
        self.registry = registry
        self.liveness = liveness
        self.readiness = readiness
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and serve in a daemon thread.

        :raises ShipperError: naming metrics.listen when the address cannot be bound (in use, not local).
        """
        host, port = split_listen(self.listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        handler = type("Handler", (_Handler,), {"endpoint": self})
        server_class = type("Server", (ThreadingHTTPServer,), {"address_family": family,
                                                               "daemon_threads": True})
        try:
            self.server = server_class((host, port), handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                why = "the address is already in use (another shipper, or another service?)"
            elif exc.errno == errno.EADDRNOTAVAIL:
                why = "no local interface has this address"
            else:
                why = exc.strerror or str(exc)
            raise ShipperError(f"metrics.listen = {self.listen!r}: cannot listen: {why}; choose "
                               "another address, or set it to \"off\"") from None
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.5},
                                       name="metrics-http", daemon=True)
        self.thread.start()
        log.info("serving /metrics, /healthz and /readyz on http://%s/", self.listen)

    @property
    def port(self) -> int:
        """The bound port (useful with port 0 in tests)."""
        assert self.server is not None
        return int(self.server.server_address[1])

    def stop(self) -> None:
        if self.server is None:
            return
        self.server.shutdown()
        self.server.server_close()
        if self.thread is not None:
            self.thread.join(timeout=5)
        self.server = None


def split_listen(listen: str) -> tuple[str, int]:
    """("HOST", PORT) from "HOST:PORT" or "[V6]:PORT" (already validated by the config)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class _Handler(BaseHTTPRequestHandler):
    endpoint: MetricsServer  # set on the subclass made per server
    server_version = "moodle-tsdb-shipper"
    _head_only = False

    def do_GET(self) -> None:
        """Route ``GET /x`` (http.server calls this by name)."""
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        route = {"/": self._index, "/metrics": self._metrics, "/healthz": self._healthz,
                 "/readyz": self._readyz}.get(path)
        if route is None:
            self._send(404, b"not found: try /metrics, /healthz or /readyz\n")
            return
        try:
            route()
        except Exception:
            log.exception("error answering %s", path)
            self._send(500, b"internal error (see the shipper's log)\n")

    def do_HEAD(self) -> None:
        self._head_only = True
        self.do_GET()

    def _index(self) -> None:
        self._send(200, INDEX)

    def _metrics(self) -> None:
        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        self._send(200, encoder(self.endpoint.registry), content_type)

    def _healthz(self) -> None:
        self._answer("/healthz", self.endpoint.liveness(), "ok: the main loop is progressing")

    def _readyz(self) -> None:
        self._answer("/readyz", self.endpoint.readiness(), "ready")

    def _answer(self, what: str, reason: str | None, ok: str) -> None:
        if reason is None:
            self._send(200, f"{ok}\n".encode())
        else:
            log.debug("%s: 503 %s", what, reason)
            self._send(503, f"{reason}\n".encode())

    def _send(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not self._head_only:
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Requests are logged at debug level only: a scrape every 15 s is not news."""
        log.debug("%s %s", self.address_string(), format % args)
