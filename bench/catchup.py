"""Load the same rows into the same table by four methods, each measured the same way.

1. the shipper catching up the whole spool (the real command, default settings);
2. ``psql \\copy`` of the rows pre-converted to CSV: what the server can take, the ceiling;
3. the seed's sync mode: one INSERT and COMMIT per event;
4. the seed's async mode: batches of 1,000 single-row INSERTs in one transaction (its write_points).

The seed's plugin was PHP; here a Python client replays its statements with the rows already converted
to parameters outside the timing, and without server-side prepared statements (pg_query_params does
not prepare). Its client CPU is therefore a lower bound; the server's work is the seed's.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

from shipper.parse import COLUMNS

from . import procstat, shipper_run
from .data import Spool
from .report import Run
from .server import Server, pg_env, psql

COLUMN_LIST = ", ".join(COLUMNS)
INSERT = f"INSERT INTO moodle_events ({COLUMN_LIST}) VALUES ({', '.join(['%s'] * len(COLUMNS))})"
SEED_BATCH = 1000


class Measure:
    """Machine and server CPU around one run."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.machine = procstat.MachineCpu.now()
        self.server_cpu = server.cpu()
        self.started = time.monotonic()

    def run(self, method: str, events: int, client_cpu: float, seconds: float | None = None,
            peak_rss_kib: int = 0, **extra: object) -> Run:
        server_cpu = self.server.cpu()
        machine = procstat.MachineCpu.now() - self.machine
        elapsed = seconds if seconds is not None else time.monotonic() - self.started
        return Run(method, events, elapsed, client_cpu,
                   None if server_cpu is None or self.server_cpu is None else server_cpu - self.server_cpu,
                   machine.busy, peak_rss_kib, procstat.load_average(), dict(extra))


def shipper(server: Server, spool: Spool, work: Path, method: str = "shipper",
            sample_rss: float = 0.0, prefix: list[str] | None = None,
            settings: dict[str, str] | None = None) -> Run:
    """The shipper catching up the whole spool: ``run --exit-when-caught-up``, default settings
    (unless ``settings`` says otherwise, for experiments).

    spool.delete_shipped is off so the cached spool survives (deleting is one unlink per hourly file).
    """
    setup = shipper_run.ShipperSetup(work / "shipper", spool.dir, server.dsn,
                                     {"spool.delete_shipped": False, **(settings or {})})
    server.reset()
    measure = Measure(server)
    started = time.monotonic()
    proc = setup.start("--exit-when-caught-up", prefix=prefix)
    done = shipper_run.wait(proc, started, sample_rss)
    if done.returncode != 0:
        raise RuntimeError(f"the shipper failed ({done.returncode}): see {setup.log}")
    run = measure.run(method, spool.count, done.cpu, done.seconds, done.peak_rss_kib,
                      rss_samples=done.rss_samples)
    _check(server, spool.count, method)
    return run


def startup(server: Server, work: Path) -> float:
    """Wall seconds of a catch-up with nothing to ship: start-up (imports, connection, schema check,
    offsets) and exit, included in every shipper run's time."""
    empty = work / "empty-spool"
    empty.mkdir(exist_ok=True)
    setup = shipper_run.ShipperSetup(work / "shipper-empty", empty, server.dsn)
    started = time.monotonic()
    done = shipper_run.wait(setup.start("--exit-when-caught-up"), started)
    if done.returncode != 0:
        raise RuntimeError(f"the shipper failed ({done.returncode}): see {setup.log}")
    return done.seconds


def copy(server: Server, path: Path, events: int, fmt: str = "csv", method: str | None = None) -> Run:
    """``psql \\copy`` of a pre-converted file (CSV, or COPY text: the shipper's exact bytes)."""
    server.reset()
    option = "WITH (FORMAT csv)" if fmt == "csv" else ""
    argv = [psql(), server.dsn, "-X", "-q", "-v", "ON_ERROR_STOP=1",
            "-c", f"\\copy moodle_events ({COLUMN_LIST}) FROM '{path}' {option}"]
    measure = Measure(server)
    started = time.monotonic()
    proc = subprocess.Popen(argv, env=pg_env(), stdout=subprocess.DEVNULL)
    done = shipper_run.wait(proc, started)
    if done.returncode != 0:
        raise RuntimeError(f"psql \\copy failed ({done.returncode})")
    run = measure.run(method or f"psql \\copy ({fmt})", events, done.cpu, done.seconds, done.peak_rss_kib)
    _check(server, events, run.method)
    return run


def seed_sync(server: Server, params: list[tuple[str | None, ...]]) -> Run:
    """The seed's sync mode: each event its own INSERT, committed before the next (autocommit)."""
    return _seed(server, params, "seed sync (INSERT+COMMIT per event)", batch=1)


def seed_async(server: Server, params: list[tuple[str | None, ...]]) -> Run:
    """The seed's async mode: 1,000 single-row INSERTs, then COMMIT."""
    return _seed(server, params, f"seed async ({SEED_BATCH:,} INSERTs per transaction)", batch=SEED_BATCH)


def _seed(server: Server, params: list[tuple[str | None, ...]], method: str, batch: int) -> Run:
    server.reset()
    with psycopg.connect(server.dsn, autocommit=batch == 1) as conn:
        conn.prepare_threshold = None
        cur = conn.cursor()
        execute: Callable[..., object] = cur.execute
        measure = Measure(server)
        cpu0 = time.process_time()
        for i, values in enumerate(params, 1):
            execute(INSERT, values)
            if batch > 1 and i % batch == 0:
                conn.commit()
        if batch > 1:
            conn.commit()
        run = measure.run(method, len(params), time.process_time() - cpu0)
    _check(server, len(params), method)
    return run


def _check(server: Server, expected: int, method: str) -> None:
    got = server.count()
    if got != expected:
        raise RuntimeError(f"{method}: {got} rows in moodle_events, expected {expected}")
