"""Scenario 1, crash loop: SIGKILL at chosen and random moments while a writer appends and rotates.

The kills are aimed: some while the shipper's backend is inside COPY, some the instant its checkpoint
row moves (after COMMIT, before anything local: the state file, the tailer's memory, housekeeping),
some during start-up (reading the offsets), the rest at random. Batch size and flush interval change
at every restart, so kills land in small and large transactions. The writer uses hourly names and
logrotate-style renames, ends some files with dead-letter lines, and housekeeping deletes shipped files
under it. After the last restart everything written must be in the database exactly once.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import orjson
import psycopg

from conftest import Shipper, count_rows, event, line, wait_for

from .harness import Background, Ledger, Line, Probe, SpoolWriter, check

SIZES: dict[str, dict[str, int]] = {
    "short": {"events": 16_000, "kills": 8, "rate": 6_000},
    "long": {"events": int(os.environ.get("SHIPPER_TORTURE_EVENTS", "1000000")),
             "kills": int(os.environ.get("SHIPPER_TORTURE_KILLS", "200")), "rate": 3_500},
}
STRATEGIES = ("in_copy", "after_commit", "random", "startup")


class CrashWriter:
    """Appends at a steady rate to an hourly file and to events.jsonl, which it renames every
    ``rename_every`` events (logrotate's create mode); one burst in 50 carries a dead-letter line."""

    def __init__(self, spool: Path, ledger: Ledger, total: int, rate: int) -> None:
        self.spool = spool
        self.writer = SpoolWriter(ledger)
        self.ledger = ledger
        self.total = total
        self.rate = rate
        self.written = 0
        self.rng = random.Random(1)
        self.hour = 0
        self.renamed = 0
        self.started = time.monotonic()

    def step(self) -> None:
        if self.written >= self.total:
            time.sleep(0.05)
            return
        rng = self.rng
        n = min(rng.randint(20, 400), self.total - self.written)
        if self.written // 25_000 > self.hour:
            self.hour = self.written // 25_000
        target = (self.spool / f"moodle-events-{self.hour:05d}-web1.jsonl" if rng.random() < 0.7
                  else self.spool / "events.jsonl")
        first = self.ledger.take(n)
        items: list[tuple[bytes, Any]] = [(line(event(i)), i) for i in range(first, first + n)]
        if rng.random() < 0.02:
            items.insert(rng.randrange(1, len(items) + 1), self._bad())
        self.writer.append(target, items)
        self.written += n
        if target.name == "events.jsonl" and self.written // 9_000 > self.renamed:
            self.renamed = self.written // 9_000
            os.rename(target, self.spool / f"events.jsonl.{self.renamed}")
        ahead = self.written / self.rate - (time.monotonic() - self.started)
        if ahead > 0:
            time.sleep(ahead)

    def _bad(self) -> tuple[bytes, Line]:
        if self.rng.random() < 0.5:
            return b'{"eventname": "\\\\core\\\\event\\\\broken", "timecreated": \n', Line("", 0, b"")
        seq = self.ledger.take()
        obj = event(seq)
        del obj["timecreated"], obj["timecreated_us"]
        return orjson.dumps(obj) + b"\n", Line("", 0, b"", seq=seq)


class CommitWatch:
    """Timestamps of every observed move of the checkpoint offsets (a commit), polled every 20 ms."""

    def __init__(self, dsn: str) -> None:
        self.probe = Probe(dsn)
        self.moves: list[float] = []
        self.last: int | None = None
        self.thread = Background(self._step, "commit-watch")
        self.thread.start()

    def _step(self) -> None:
        try:
            now = self.probe.committed()
        except psycopg.Error:
            time.sleep(0.1)
            return
        if now != self.last:
            self.last = now
            self.moves.append(time.monotonic())
        time.sleep(0.02)

    def first_after(self, t: float) -> float | None:
        return next((m for m in self.moves if m > t), None)

    def stop(self) -> None:
        self.thread.stop()
        self.probe.close()


def kill_at(strategy: str, probe: Probe, rng: random.Random, timeout: float = 3.0) -> bool:
    """Wait for the moment ``strategy`` aims at; False when it did not come (then kill anyway)."""
    if strategy == "random":
        time.sleep(rng.uniform(0.1, 1.5))
        return True
    if strategy == "startup":
        time.sleep(rng.uniform(0.0, 0.4))
        return True
    deadline = time.monotonic() + timeout
    before = probe.committed() if strategy == "after_commit" else None
    while time.monotonic() < deadline:
        try:
            if strategy == "in_copy" and probe.in_copy():
                return True
            if strategy == "after_commit" and probe.committed() != before:
                return True
        except psycopg.Error:
            pass
        time.sleep(0.003)
    return False


def test_crash_loop(shipper: Shipper, level: str, figures: dict[str, Any]) -> None:
    size = SIZES[level]
    rng = random.Random(5)
    ledger = Ledger()
    crash_writer = CrashWriter(shipper.spool, ledger, size["events"], size["rate"])
    configs = [{"buffer.batch_size": b, "buffer.flush_interval": f}
               for b in (50, 700, 5000, 50000) for f in (0.05, 0.3, 1.0)]
    shipper.write_config(**{"spool.delete_grace": 1.0, "spool.rescan_interval": 0.3, **configs[0]})
    probe = Probe(shipper.dsn)
    watch = CommitWatch(shipper.dsn)
    writer = Background(crash_writer.step, "crash-writer")
    shipper.start()
    writer.start()
    hits = dict.fromkeys(STRATEGIES, 0)
    restarts: list[float] = []
    try:
        for k in range(size["kills"]):
            strategy = STRATEGIES[k % len(STRATEGIES)]
            if kill_at(strategy, probe, rng):
                hits[strategy] += 1
            shipper.kill()
            shipper.write_config(**rng.choice(configs))
            shipper.start()
            restarts.append(time.monotonic())
        wait_for(lambda: crash_writer.written >= size["events"], timeout=size["events"] / 500,
                 what="the writer to finish")
        writer.stop()
        expected = ledger.written
        wait_for(lambda: count_rows(shipper.dsn) + count_rows(shipper.dsn, "shipper_dead_letter") >= expected,
                 timeout=120 + size["events"] / 2000, interval=0.5, what=f"{expected} lines to arrive")
        time.sleep(1.0)  # a duplicate arriving late would show now
        assert shipper.stop() == 0
    finally:
        writer.halt.set()
        watch.stop()
        probe.close()
    outcome = check(shipper.dsn, ledger)
    recoveries = sorted(m - r for r in restarts if (m := watch.first_after(r)) is not None)
    figures.update(scenario="crash loop", level=level, kills=size["kills"], aimed_hits=hits,
                   **outcome.figures(), longest_recovery_s=round(max(recoveries, default=0), 2),
                   median_recovery_s=round(recoveries[len(recoveries) // 2], 2) if recoveries else None,
                   files_deleted=shipper.logs().count("every line is committed"))
    outcome.assert_exact()
    assert ledger.lines, "some dead-letter lines were written"
    assert hits["in_copy"] >= 1 and hits["after_commit"] >= 1, hits
    logs = shipper.logs()
    assert "Traceback" not in logs, logs[logs.index("Traceback") - 2000:][:4000]
