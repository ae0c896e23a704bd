"""Scenario 6, soak: one shipper process for a long time at a steady rate, with a fault every period,
its resident memory and open descriptors sampled all along; both must stay flat.

The writer uses hourly names (a new file every few seconds, so housekeeping deletes shipped files and
their descriptors must be released) and drops a dead-letter line now and then. The shipper talks to
the server through the test's proxy; the faults cycle: its backend terminated, the proxy resetting the
connection, the proxy blackholing it, the server killed and restarted. The process is never restarted:
a leak would show.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from typing import Any

import pytest

from conftest import Server, Shipper, count_rows, event, line, wait_for

from .harness import (
    Background,
    Ledger,
    Line,
    Probe,
    Proxy,
    SpoolWriter,
    check,
    open_fds,
    proxied,
    rss_kib,
    wait_commit_after,
)

SIZES: dict[str, dict[str, float]] = {
    "short": {"seconds": 9, "sample_every": 1, "fault_every": 2.5, "rate": 400, "file_every": 2},
    "long": {"seconds": float(os.environ.get("SHIPPER_TORTURE_SOAK_SECONDS", "3600")), "sample_every": 60,
             "fault_every": 60, "rate": 500, "file_every": 30},
}
FAULTS = ("terminate", "reset", "blackhole", "server")


def test_soak(shipper: Shipper, pg_server: Server, level: str, figures: dict[str, Any]) -> None:
    size = SIZES[level]
    rng = random.Random(6)
    proxy, through_proxy = proxied(shipper.dsn)
    shipper.write_config(**{"database.dsn": through_proxy,
                            "database.statement_timeout": 1.0, "database.connect_timeout": 2.0,
                            "spool.delete_grace": 2.0, "buffer.batch_size": 2000,
                            "buffer.flush_interval": 0.5})
    ledger = Ledger()
    writer = SpoolWriter(ledger)
    started = time.monotonic()

    def write() -> None:
        n = max(1, int(size["rate"] / 10))
        name = f"moodle-events-{int((time.monotonic() - started) / size['file_every']):06d}-web1.jsonl"
        first = ledger.take(n)
        items: list[tuple[bytes, Any]] = [(line(event(i)), i) for i in range(first, first + n)]
        if rng.random() < 0.02:
            items.append((b'{"eventname": "\\\\broken", "timecreated": tomorrow}\n', Line("", 0, b"")))
        writer.append(shipper.spool / name, items)
        time.sleep(0.1)

    probe = Probe(shipper.dsn)
    samples: list[tuple[float, int, int]] = []
    faults: dict[str, int] = dict.fromkeys(FAULTS, 0)
    recoveries: list[float] = []
    shipper.start()
    assert shipper.proc is not None
    pid = shipper.proc.pid
    wait_for(lambda: "offsets read" in shipper.logs(), what="start-up")
    thread = Background(write, "soak-writer")
    thread.start()
    next_sample = time.monotonic()
    next_fault = time.monotonic() + size["fault_every"]
    k = 0
    try:
        while time.monotonic() - started < size["seconds"]:
            now = time.monotonic()
            if now >= next_sample:
                samples.append((round(now - started, 1), rss_kib(pid), open_fds(pid)))
                next_sample += size["sample_every"]
            if now >= next_fault:
                # (the short run leaves blackholes to test_db_faults: each costs statement_timeout + 5 s)
                cycle = FAULTS if level == "long" else ("terminate", "reset", "server")
                fault = cycle[k % len(cycle)]
                k += 1
                if fault == "server" and pg_server.temp is None:
                    fault = "terminate"
                recoveries.append(_fault(fault, probe, proxy, pg_server))
                faults[fault] += 1
                next_fault = time.monotonic() + size["fault_every"]
            assert shipper.proc.poll() is None, "the shipper exited"
            time.sleep(0.2)
        thread.stop()
        expected = ledger.written
        wait_for(lambda: count_rows(shipper.dsn) + count_rows(shipper.dsn, "shipper_dead_letter") >= expected,
                 timeout=120, interval=0.5, what=f"{expected} lines")
        time.sleep(1.0)
        samples.append((round(time.monotonic() - started, 1), rss_kib(pid), open_fds(pid)))
        assert shipper.stop() == 0
    finally:
        thread.halt.set()
        probe.close()
        proxy.close()
    outcome = check(shipper.dsn, ledger)
    third = max(1, len(samples) // 3)
    early, late = samples[1:1 + third] or samples[:1], samples[-third:]
    rss_early = statistics.median(s[1] for s in early)
    rss_late = statistics.median(s[1] for s in late)
    fds_early = max(s[2] for s in early)
    fds_late = max(s[2] for s in late)
    figures.update(scenario="soak", level=level, seconds_run=size["seconds"], faults=faults,
                   longest_recovery_s=round(max(recoveries, default=0), 2),
                   rss_kib_first_third_median=rss_early, rss_kib_last_third_median=rss_late,
                   rss_kib_max=max(s[1] for s in samples), fds_first_third_max=fds_early,
                   fds_last_third_max=fds_late, samples=samples, **outcome.figures())
    outcome.assert_exact()
    assert rss_late <= max(rss_early * 1.10, rss_early + 8 * 1024), samples
    assert fds_late <= fds_early + 4, samples
    logs = shipper.logs()
    assert "Traceback" not in logs, logs[logs.index("Traceback") - 1000:][:4000]


def _fault(kind: str, probe: Probe, proxy: Proxy, pg_server: Server) -> float:
    """Inflict one fault; return seconds from its end to the next commit."""
    before = probe.committed()
    if kind == "terminate":
        probe.terminate()
    elif kind == "reset":
        proxy.drop()
    elif kind == "blackhole":
        proxy.stall()
        time.sleep(1.0)
        proxy.heal()
    elif kind == "server":
        assert pg_server.temp is not None
        probe.close()
        pg_server.temp.stop_server("immediate")
        time.sleep(1.0)
        pg_server.temp.start_server()
    took = wait_commit_after(probe, before, 90)
    if took is None:
        pytest.fail(f"no commit within 90 s after a {kind}")
    return took
