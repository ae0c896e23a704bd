"""Scenario 2, database faults: the server killed mid-batch, the shipper's backend terminated, and a
proxy between shipper and server that resets, blackholes and delays connections.

A writer appends all along; each fault is aimed at a batch in flight (the shipper's backend inside
COPY) when one comes within a few seconds. Recovery is the time from the end of the fault (server back,
path healed) to the next commit; for a blackhole, detection is the time from the stall to the shipper
giving up on the dead connection.
"""

from __future__ import annotations

import random
import time
from typing import Any

import psycopg
import pytest

from conftest import Server, Shipper, count_rows, wait_for

from .harness import Background, Ledger, Probe, SpoolWriter, check, proxied, wait_commit_after

SIZES: dict[str, dict[str, Any]] = {
    "short": {"stops": 1, "pause": (0.5, 1.0), "terminations": 2, "drops": 1, "stalls": 1,
              "stall_hold": (0.2, 0.5), "delay_phase": 0.6},
    "long": {"stops": 20, "pause": (0.5, 8.0), "terminations": 60, "drops": 40, "stalls": 12,
             "stall_hold": (0.2, 10.0), "delay_phase": 20.0},
}
STATEMENT_TIMEOUT = 1.0  # a blackhole is noticed after statement_timeout + 5 s


class SteadyWriter:
    """``rate`` standard events a second into one file, renamed every 20k events (create rotation)."""

    def __init__(self, shipper: Shipper, rate: int = 1500) -> None:
        self.ledger = Ledger()
        self.writer = SpoolWriter(self.ledger)
        self.spool = shipper.spool
        self.rate = rate
        self.rotated = 0
        self.thread = Background(self._step, "steady-writer")

    def _step(self) -> None:
        path = self.spool / "events.jsonl"
        self.writer.events(path, self.rate // 20)
        if len(self.ledger.seqs) // 20_000 > self.rotated:
            self.rotated += 1
            path.rename(self.spool / f"events.jsonl.{self.rotated}")
        time.sleep(0.05)


def until_in_copy(probe: Probe, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if probe.in_copy():
                return True
        except psycopg.Error:
            pass
        time.sleep(0.003)
    return False


def finish(shipper: Shipper, writer: SteadyWriter, figures: dict[str, Any]) -> None:
    writer.thread.stop()
    expected = writer.ledger.written
    wait_for(lambda: count_rows(shipper.dsn) >= expected, timeout=120, interval=0.3,
             what=f"{expected} events")
    time.sleep(0.5)  # room for a late duplicate
    assert shipper.stop() == 0
    outcome = check(shipper.dsn, writer.ledger)
    figures.update(outcome.figures())
    outcome.assert_exact()
    logs = shipper.logs()
    assert "Traceback" not in logs, logs[logs.index("Traceback") - 2000:][:4000]


def test_server_killed_mid_batch_and_backend_terminated(
        shipper: Shipper, pg_server: Server, level: str, figures: dict[str, Any]) -> None:
    if pg_server.temp is None:
        pytest.skip("SHIPPER_TEST_DSN names an external server: this test stops and starts its own")
    size = SIZES[level]
    rng = random.Random(2)
    shipper.write_config(**{"buffer.batch_size": 5000, "buffer.flush_interval": 0.5,
                            "database.statement_timeout": STATEMENT_TIMEOUT})
    writer = SteadyWriter(shipper)
    probe = Probe(shipper.dsn)
    shipper.start()
    writer.thread.start()
    recoveries: list[float] = []
    mid_copy = {"stop": 0, "terminate": 0}
    try:
        for _ in range(size["stops"]):
            time.sleep(rng.uniform(0.2, 1.0))
            mid_copy["stop"] += until_in_copy(probe)
            probe.close()
            pg_server.temp.stop_server("immediate")
            time.sleep(rng.uniform(*size["pause"]))
            pg_server.temp.start_server()
            before = probe.committed()
            took = wait_commit_after(probe, before, 60)
            assert took is not None, "no commit within 60 s of the server's return"
            recoveries.append(took)
        for _ in range(size["terminations"]):
            time.sleep(rng.uniform(0.05, 0.8))
            mid_copy["terminate"] += until_in_copy(probe)
            before = probe.committed()
            probe.terminate()
            took = wait_commit_after(probe, before, 60)
            assert took is not None, "no commit within 60 s of the termination"
            recoveries.append(took)
        assert shipper.proc is not None and shipper.proc.poll() is None, "the shipper must not exit"
        finish(shipper, writer, figures)
    finally:
        writer.thread.halt.set()
        probe.close()
    figures.update(scenario="database: server killed, backend terminated", level=level,
                   server_kills=size["stops"], terminations=size["terminations"], aimed_mid_copy=mid_copy,
                   longest_recovery_s=round(max(recoveries), 2))


def test_proxy_resets_blackholes_and_delays(
        shipper: Shipper, pg_server: Server, level: str, figures: dict[str, Any]) -> None:
    size = SIZES[level]
    rng = random.Random(3)
    proxy, through_proxy = proxied(shipper.dsn)
    shipper.write_config(**{"database.dsn": through_proxy,
                            "buffer.batch_size": 5000, "buffer.flush_interval": 0.5,
                            "database.statement_timeout": STATEMENT_TIMEOUT,
                            "database.connect_timeout": 2.0})
    writer = SteadyWriter(shipper)
    probe = Probe(shipper.dsn)
    shipper.start()
    writer.thread.start()
    recoveries: list[float] = []
    detections: list[float] = []
    try:
        wait_commit_after(probe, 0, 30)
        for _ in range(size["drops"]):
            time.sleep(rng.uniform(0.1, 1.0))
            until_in_copy(probe)
            before = probe.committed()
            proxy.drop()
            took = wait_commit_after(probe, before, 60)
            assert took is not None, "no commit within 60 s of a reset"
            recoveries.append(took)
        for _ in range(size["stalls"]):
            time.sleep(rng.uniform(0.1, 1.0))
            until_in_copy(probe)
            stalled_at = time.monotonic()
            caught = proxy.stall()  # the shipper's connection among them
            assert caught
            before = probe.committed()
            hold = rng.uniform(*size["stall_hold"])
            noticed_at = None
            while noticed_at is None or time.monotonic() - stalled_at < hold:
                if noticed_at is None and proxy.stalled_open(caught) == 0:
                    noticed_at = time.monotonic()
                if time.monotonic() - stalled_at >= hold:
                    proxy.heal()
                assert time.monotonic() - stalled_at < 60, "the blackholed connection was not given up"
                time.sleep(0.02)
            proxy.heal()
            detections.append(noticed_at - stalled_at)
            took = wait_commit_after(probe, before, 60)
            assert took is not None, "no commit within 60 s of the path healing"
            # from the later of healing and noticing (no commit is possible before both)
            recoveries.append(time.monotonic() - max(noticed_at, stalled_at + hold))
        proxy.delay = 0.05  # every chunk, each way: slow but never stuck
        before = probe.committed()
        time.sleep(size["delay_phase"])
        assert wait_commit_after(probe, before, 30) is not None, "no commit through a slow path"
        proxy.delay = 0.0
        finish(shipper, writer, figures)
    finally:
        writer.thread.halt.set()
        probe.close()
        proxy.close()
    figures.update(scenario="database: proxy resets, blackholes, delays", level=level, resets=size["drops"],
                   blackholes=size["stalls"], longest_detection_s=round(max(detections), 2),
                   longest_recovery_s=round(max(recoveries), 2), proxy_connections=proxy.accepted)


def test_blackholed_shipper_killed_and_restarted(shipper: Shipper, level: str,
                                                 figures: dict[str, Any]) -> None:
    """What systemd does to a shipper stuck behind a blackhole: its watchdog kills it (WatchdogSec=30
    is far below statement_timeout + 5 s), and the unit starts a new one. The old session lives on in
    the server behind the dead path, holding the source's lock: the new process must end it."""
    cycles = 1 if level == "short" else 10
    rng = random.Random(4)
    proxy, through_proxy = proxied(shipper.dsn)
    shipper.write_config(**{"database.dsn": through_proxy,
                            "buffer.batch_size": 5000, "buffer.flush_interval": 0.5,
                            "database.statement_timeout": 30.0, "database.connect_timeout": 2.0})
    writer = SteadyWriter(shipper)
    probe = Probe(shipper.dsn)
    shipper.start()
    writer.thread.start()
    recoveries: list[float] = []
    try:
        wait_commit_after(probe, 0, 30)
        for _ in range(cycles):
            time.sleep(rng.uniform(0.1, 1.0))
            until_in_copy(probe)
            assert proxy.stall()
            time.sleep(1.0)
            shipper.kill()  # the watchdog's SIGABRT, in effect
            proxy.heal()
            assert probe.backends() >= 1, "the old session should outlive its process"
            before = probe.committed()
            shipper.start()
            restarted = time.monotonic()
            took = wait_commit_after(probe, before, 30)
            assert took is not None, "no commit within 30 s of the restart: the old session blocks it"
            recoveries.append(time.monotonic() - restarted)
        finish(shipper, writer, figures)
    finally:
        writer.thread.halt.set()
        probe.close()
        proxy.close()
    figures.update(scenario="database: blackholed, killed by the watchdog, restarted", level=level,
                   cycles=cycles, longest_recovery_s=round(max(recoveries), 2))
