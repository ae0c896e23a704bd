"""The HTTP endpoint on metrics.listen: /metrics for Prometheus, /healthz and /readyz for probes.

A ThreadingHTTPServer in a daemon thread: a slow scraper never delays the main loop, and the loop never
waits for HTTP. Routing follows patroni's habit (``GET /x`` runs ``do_GET_x``); the health answers come
from shipper.health, the exposition from prometheus_client (never written by hand).
"""

from __future__ import annotations

import errno
import ipaddress
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

POLL_INTERVAL = 0.5  # the serving thread's idle wake-ups (2/s); stop() does not wait for them
WAKE_TIMEOUT = 0.25  # for stop()'s wake-up connection; past it the poll ends the loop anyway


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that stop() can end at once.

    socketserver's shutdown() only raises a private flag that serve_forever reads when its select()
    returns, i.e. at the next poll (up to 0.5 s added to every SIGTERM and exit). Here the serving loop
    is ``handle_request()`` while not ``stopping`` (a public flag, set before the wake-up so it cannot be
    missed), and stop() wakes the select() with a connection to the server's own address.
    """

    daemon_threads = True
    timeout = POLL_INTERVAL  # handle_request() returns after this long without a client
    stopping = False

    def verify_request(self, request: object, client_address: object) -> bool:
        """Once stopping, close whatever is accepted (stop()'s wake-up, a late scrape) unanswered."""
        return not self.stopping

    def serve_until_stopped(self) -> None:
        """serve_forever, but ending on a flag stop() sets without blocking (shutdown() blocks)."""
        while not self.stopping:
            self.handle_request()


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
        self.server: _Server | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and serve in a daemon thread.

        :raises ShipperError: naming metrics.listen when the address cannot be bound (in use, not local).
        """
        host, port = split_listen(self.listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        handler = type("Handler", (_Handler,), {"endpoint": self})
        server_class = type("Server", (_Server,), {"address_family": family})
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
        self.thread = threading.Thread(target=self.server.serve_until_stopped, name="metrics-http",
                                       daemon=True)
        self.thread.start()
        log.info("serving /metrics, /healthz and /readyz on http://%s/", self.listen)

    @property
    def port(self) -> int:
        """The bound port (useful with port 0 in tests)."""
        assert self.server is not None
        return int(self.server.server_address[1])

    def stop(self) -> None:
        """Stop serving and release the address, in milliseconds rather than at the next poll.

        Every SIGTERM and ``run --exit-when-caught-up`` waits for this, and a new server may bind the same
        address right after. If the wake-up connection fails, the loop still ends within POLL_INTERVAL.
        """
        server, thread = self.server, self.thread
        if server is None:
            return
        self.server = self.thread = None
        server.stopping = True
        _wake(server)
        if thread is not None:
            thread.join(timeout=4 * POLL_INTERVAL)
        server.server_close()


def _wake(server: _Server) -> None:
    """Connect to the server's own address so its select() returns now (loopback for 0.0.0.0 or ::).

    The connection is only opened and closed: verify_request turns it away, nothing is logged.
    """
    host, port, *v6 = server.server_address  # v6: flowinfo and scope id, kept for link-local addresses
    try:
        if ipaddress.ip_address(str(host)).is_unspecified:
            host = "::1" if server.address_family == socket.AF_INET6 else "127.0.0.1"
        with socket.socket(server.address_family, socket.SOCK_STREAM) as sock:
            sock.settimeout(WAKE_TIMEOUT)
            sock.connect((host, port, *v6))
    except (OSError, ValueError) as exc:
        log.debug("could not wake the metrics server (%s); it stops at its next poll", exc)


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
