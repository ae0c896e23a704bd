"""The HTTP endpoint and the health decisions, in-process on a real socket (no daemon, no database).

The same endpoints on a running shipper against a real PostgreSQL are in test_metrics.py.
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry, Counter

from shipper import health, http
from shipper.errors import ShipperError
from shipper.http import MetricsServer, split_listen
from shipper.metrics import Metrics, failure_class
from shipper.pgtemp import free_port


@dataclass
class Loop:
    """Stands in for the daemon: the attributes health.py reads."""

    last_tick: float = 100.0
    started: bool = True
    last_error: str | None = None
    waiting_since: float | None = None
    stopping: bool = False


def get(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


class Endpoint:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.hits = Counter("moodle_shipper_test_hits", "test counter", registry=self.registry)
        self.alive: str | None = None
        self.ready: str | None = None
        self.server = MetricsServer(f"127.0.0.1:{free_port()}", self.registry,
                                    lambda: self.alive, lambda: self.ready)
        self.server.start()
        self.url = f"http://127.0.0.1:{self.server.port}"


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    e = Endpoint()
    try:
        yield e
    finally:
        e.server.stop()


def test_metrics_are_served_in_text_and_openmetrics(endpoint: Endpoint) -> None:
    endpoint.hits.inc(3)
    code, ctype, body = get(endpoint.url + "/metrics")
    assert code == 200 and ctype.startswith("text/plain; version=0.0.4")
    assert "moodle_shipper_test_hits_total 3.0" in body
    code, ctype, body = get(endpoint.url + "/metrics",
                            headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert code == 200 and ctype.startswith("application/openmetrics-text")
    assert body.rstrip().endswith("# EOF")


def test_healthz_and_readyz_answer_200_or_503_with_the_reason(endpoint: Endpoint) -> None:
    assert get(endpoint.url + "/healthz")[0::2] == (200, "ok: the main loop is progressing\n")
    assert get(endpoint.url + "/readyz")[0::2] == (200, "ready\n")
    endpoint.alive = "the main loop has not ticked for 40 s"
    endpoint.ready = "the last database operation failed: connection refused"
    assert get(endpoint.url + "/healthz")[0::2] == (503, "the main loop has not ticked for 40 s\n")
    assert get(endpoint.url + "/readyz/")[0::2] == (503, endpoint.ready + "\n")


def test_unknown_paths_head_and_a_failing_check(endpoint: Endpoint) -> None:
    assert get(endpoint.url + "/nope")[0] == 404
    code, _, body = get(endpoint.url + "/")
    assert code == 200 and "/readyz" in body
    code, _, body = get(endpoint.url + "/readyz", method="HEAD")
    assert (code, body) == (200, "")

    def broken() -> str | None:
        raise RuntimeError("boom")

    endpoint.server.readiness = broken
    assert get(endpoint.url + "/readyz")[0] == 500
    assert get(endpoint.url + "/healthz")[0] == 200  # one broken handler does not take the server down


def test_a_port_in_use_is_an_error_naming_the_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        server = MetricsServer(listen, CollectorRegistry(), lambda: None, lambda: None)
        with pytest.raises(ShipperError) as caught:
            server.start()
    assert f"metrics.listen = {listen!r}" in str(caught.value)
    assert "already in use" in str(caught.value)


def _ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


def _serve(listen: str) -> MetricsServer:
    server = MetricsServer(listen, CollectorRegistry(), lambda: None, lambda: None)
    server.start()
    return server


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0", "[::1]", "[::]"])
def test_stop_is_prompt_and_releases_the_address(host: str) -> None:
    """stop() wakes the serving thread instead of waiting for its poll (up to 0.5 s on every exit)."""
    if host.startswith("[") and not _ipv6():
        pytest.skip("no IPv6 loopback here")
    loopback = "[::1]" if host.startswith("[") else "127.0.0.1"
    port = 0
    for _ in range(3):
        server = _serve(f"{host}:{port}")  # the same port again after the first: what a SIGHUP reload does
        port, thread = server.port, server.thread
        assert get(f"http://{loopback}:{port}/healthz")[0] == 200
        time.sleep(0.05)  # inside the poll interval, where the old stop() waited for the rest of it
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 0.2
        assert thread is not None and not thread.is_alive()
    assert not any(t.name == "metrics-http" for t in threading.enumerate())


def test_stop_ends_at_the_poll_when_the_wake_up_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "_wake", lambda server: None)
    server = _serve("127.0.0.1:0")
    thread = server.thread
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < http.POLL_INTERVAL + 0.5
    assert thread is not None and not thread.is_alive()


def test_ipv6_listen_addresses_are_split() -> None:
    assert split_listen("[::1]:9847") == ("::1", 9847)
    assert split_listen("127.0.0.1:9847") == ("127.0.0.1", 9847)
    assert split_listen("localhost:1") == ("localhost", 1)


def test_liveness_follows_the_loop_tick() -> None:
    loop = Loop(last_tick=100.0)
    assert health.liveness(loop, timeout=30, now=129.0) is None
    reason = health.liveness(loop, timeout=30, now=145.0)
    assert reason and "has not ticked for 45 s" in reason and "metrics.liveness_timeout" in reason


def test_readiness_reasons() -> None:
    assert health.readiness(Loop(), max_wait=60, now=100) is None
    assert health.readiness(Loop(stopping=True), max_wait=60, now=100) == "shutting down"
    assert "starting" in (health.readiness(Loop(started=False), max_wait=60, now=100) or "")
    reason = health.readiness(Loop(started=False, last_error="connection refused"), 60, now=100)
    assert reason == "cannot read the committed offsets from the database: connection refused"
    reason = health.readiness(Loop(last_error="the schema is missing: run init-db"), 60, now=100)
    assert reason == "the last database operation failed: the schema is missing: run init-db"
    # Data waiting is normal for a while (flush_interval, a big commit); too long is not.
    assert health.readiness(Loop(waiting_since=50.0), max_wait=60, now=100) is None
    reason = health.readiness(Loop(waiting_since=10.0), max_wait=60, now=100)
    assert reason and "waited 90 s for a commit" in reason


def test_failure_classes_are_a_closed_set() -> None:
    import psycopg
    from psycopg import errors as e

    from shipper.errors import SchemaError

    assert failure_class(psycopg.OperationalError("connection refused")) == "connection"
    assert failure_class(ConnectionResetError()) == "connection"
    assert failure_class(SchemaError("the schema is missing")) == "schema"
    assert failure_class(e.InsufficientPrivilege()) == "42"
    assert failure_class(e.AdminShutdown()) == "57"
    assert failure_class(e.lookup("P0001")()) == "other"  # raise_exception: not a class we label
    m = Metrics()
    assert m.failure(e.UndefinedTable()) == "42"
    assert m.registry.get_sample_value("moodle_shipper_flush_failures_total", {"sqlstate_class": "42"}) == 1


def test_scrape_time_values_follow_the_loop() -> None:
    m = Metrics()
    state = {"alive": None, "ready": "starting", "commit": None}
    m.watch_health(lambda: state["alive"], lambda: state["ready"], lambda: state["commit"])
    sample = m.registry.get_sample_value
    assert (sample("moodle_shipper_up"), sample("moodle_shipper_ready")) == (1, 0)
    assert 0 <= (sample("moodle_shipper_last_commit_age_seconds") or -1) < 5  # since start
    state.update(alive="stuck", ready=None, commit=m.started - 100)
    assert (sample("moodle_shipper_up"), sample("moodle_shipper_ready")) == (0, 1)
    assert (sample("moodle_shipper_last_commit_age_seconds") or 0) >= 100
