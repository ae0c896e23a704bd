"""The shipper as a service: live tail behind a steady writer, and idle cost with a full spool.

Latency, append to committed, per event: the writer stamps ``timecreated_us`` (hence ``time``) just
before its append; the row's commit time is ``pg_xact_commit_timestamp(xmin)``, the commit record of the
transaction that stored it (track_commit_timestamp = on, set by the benchmark on its own server). Both
clocks are this machine's. On a server without commit timestamps the benchmark polls ``max(time)``
every 20 ms instead: an event counts as committed at the first poll that sees a time at or after its
own (events are appended and committed in time order), which overstates latency by up to one poll.
"""

from __future__ import annotations

import bisect
import json
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from shipper import sample

from . import procstat, shipper_run
from .server import Server

WARMUP = "bench_warmup"


@dataclass
class Live:
    rate: float
    written: int
    seconds: float
    latency_ms: dict[str, float]
    shipper_cpu: float  # fraction of one core while the writer ran
    server_cpu: float | None
    writer_cpu: float
    machine_busy: float  # cores, everyone
    peak_rss_kib: int
    method: str
    load: str
    extra: dict[str, Any] = field(default_factory=dict)


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _commit_timestamps(server: Server) -> bool:
    return server.settings.get("track_commit_timestamp") == "on"


class _MaxTimePoller(threading.Thread):
    """Fallback clock: (poll time, max(time) committed) every ``every`` seconds."""

    def __init__(self, server: Server, every: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.server, self.every = server, every
        self.seen: list[tuple[float, float]] = []
        self.done = threading.Event()

    def run(self) -> None:
        with self.server.connect() as conn:
            while not self.done.wait(self.every):
                row = conn.execute("SELECT extract(epoch FROM max(time))::float8 FROM moodle_events"
                                   ).fetchone()
                if row and row[0] is not None:
                    self.seen.append((time.time(), float(row[0])))


def live_tail(server: Server, work: Path, rate: float, seconds: float, tick: float) -> Live:
    """Ship what a writer appends at ``rate`` events/s for ``seconds``, with default settings."""
    root = work / f"live-{int(rate)}"
    shutil.rmtree(root, ignore_errors=True)
    spool = root / "spool"
    spool.mkdir(parents=True)
    server.reset()
    setup = shipper_run.ShipperSetup(root, spool, server.dsn)
    proc = setup.start()
    poller = None
    try:
        # One event first, so that start-up (imports, connection, checkpoints) is not in the figures.
        warm = next(sample.events(1, start=time.time()))
        warm["eventname"] = WARMUP
        (spool / "moodle-events-warmup-bench.jsonl").write_bytes(orjson.dumps(warm) + b"\n")
        _wait_for(lambda: server.count() >= 1, 60, "the shipper to start")
        if not _commit_timestamps(server):
            poller = _MaxTimePoller(server)
            poller.start()
        machine0, server0 = procstat.MachineCpu.now(), server.cpu()
        cpu0 = procstat.process_cpu(proc.pid)
        started = time.monotonic()
        writer = subprocess.Popen(
            [sys.executable, "-m", "bench.writer", "--dir", str(spool), "--rate", str(rate),
             "--seconds", str(seconds), "--tick", str(tick)], stdout=subprocess.PIPE)
        done = shipper_run.wait(writer, started)
        out = json.loads(writer.stdout.read())  # type: ignore[union-attr]
        cpu1 = procstat.process_cpu(proc.pid)
        server1, machine = server.cpu(), procstat.MachineCpu.now() - machine0
        wall = done.seconds
        _wait_for(lambda: server.count() >= out["written"] + 1, 120, "the shipper to catch up")
        peak = procstat.rss_kib(proc.pid)[1]
    finally:
        if poller is not None:
            poller.done.set()
        shipper_run.stop(proc)
    with server.connect() as conn:
        if poller is None:
            pairs = conn.execute(
                "SELECT (extract(epoch FROM time) * 1e6)::bigint,"
                " (extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1e6)::bigint"
                " FROM moodle_events WHERE eventname <> %s", (WARMUP,)).fetchall()
            latencies = sorted((c - t) / 1000 for t, c in pairs)
            method = "pg_xact_commit_timestamp(xmin) - time"
        else:
            times = [t for (t,) in conn.execute(
                "SELECT extract(epoch FROM time)::float8 FROM moodle_events WHERE eventname <> %s",
                (WARMUP,)).fetchall()]
            latencies = sorted(_poll_latency(poller.seen, t) for t in times)
            method = "first poll of max(time) (20 ms) - time"
    return Live(rate, out["written"], wall, _percentiles(latencies), (cpu1 - cpu0) / wall,
                None if server0 is None or server1 is None else (server1 - server0) / wall,
                done.cpu / wall, machine.busy / wall, peak, method, procstat.load_average(),
                {"appends_per_s": 1 / tick})


def _poll_latency(seen: list[tuple[float, float]], t: float) -> float:
    i = bisect.bisect_left([m for _, m in seen], t)
    return (seen[i][0] - t) * 1000 if i < len(seen) else float("inf")


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}

    def pick(q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))]

    return {"p50": pick(0.50), "p90": pick(0.90), "p99": pick(0.99), "max": values[-1],
            "min": values[0], "events": float(len(values))}


@dataclass
class Idle:
    files: int
    seconds: float
    cpu: float  # fraction of one core
    wakeups_per_s: float
    open_fds: int
    rss_kib: int
    load: str
    others: float  # cores used by everything but the shipper (and the server) meanwhile


def idle(server: Server, work: Path, files: int, seconds: float, settle: float = 15.0,
         per_file: int = 20) -> Idle:
    """CPU of a shipper with ``files`` fully shipped files in its spool and nothing new coming."""
    root = work / "idle"
    shutil.rmtree(root, ignore_errors=True)
    spool = root / "spool"
    spool.mkdir(parents=True)
    server.reset()
    start = (int(time.time()) // 3600 - files) * 3600
    events = sample.events(files * per_file, start=start, per_second=per_file / 3600)
    nbytes = 0
    for i in range(files):  # hourly files, as the plugin names them: about six weeks of them
        hour = time.strftime("%Y%m%d%H", time.gmtime(start + i * 3600))
        data = b"".join(orjson.dumps(next(events)) + b"\n" for _ in range(per_file))
        (spool / f"moodle-events-{hour}-web1.jsonl").write_bytes(data)
        nbytes += len(data)
    # Kept, not deleted once shipped (the default): otherwise there would be nothing left to watch.
    setup = shipper_run.ShipperSetup(root, spool, server.dsn, {"spool.delete_shipped": False})
    proc = setup.start()
    try:
        def shipped() -> bool:
            with server.connect() as conn:
                row = conn.execute("SELECT coalesce(sum(byte_offset), 0) FROM shipper_checkpoints"
                                   ).fetchone()
            return int(row[0]) >= nbytes  # type: ignore[index]

        _wait_for(shipped, 120, "the idle spool to be shipped")
        time.sleep(settle)  # past a rescan and housekeeping, so the figures are those of a quiet day
        cpu0, ctx0 = procstat.process_cpu(proc.pid), procstat.context_switches(proc.pid)
        machine0, server0 = procstat.MachineCpu.now(), server.cpu() or 0.0
        began = time.monotonic()
        time.sleep(seconds)
        wall = time.monotonic() - began
        cpu1, ctx1 = procstat.process_cpu(proc.pid), procstat.context_switches(proc.pid)
        machine, server1 = procstat.MachineCpu.now() - machine0, server.cpu() or 0.0
        fds = len(list(Path(f"/proc/{proc.pid}/fd").iterdir()))
        rss = procstat.rss_kib(proc.pid)[0]
    finally:
        shipper_run.stop(proc)
    others = max(0.0, machine.busy - (cpu1 - cpu0) - (server1 - server0)) / wall
    return Idle(files, wall, (cpu1 - cpu0) / wall, (ctx1 - ctx0) / wall, fds, rss, procstat.load_average(),
                others)
