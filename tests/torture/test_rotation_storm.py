"""Scenario 3, rotation storm: real logrotate every second (create or copytruncate) on events.jsonl,
the writer's own hourly names beside it, and an operator deleting older files the shipper holds open.

logrotate's numbered scheme renames every old file at each rotation (.1 -> .2 -> ...): a rename storm.
In create mode every line written must arrive exactly once. In copytruncate mode logrotate itself loses
the lines written between its copy and its truncate (SPEC section 3); there the lines that must arrive
are those the files hold at the end, plus those of the files the operator deleted (read just before),
and any other line written may arrive at most once.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import Shipper, count_rows, wait_for

from .harness import Background, Ledger, SpoolWriter, check, fd_targets, scan_spool

LOGROTATE = shutil.which("logrotate") or ("/usr/sbin/logrotate" if os.path.exists("/usr/sbin/logrotate")
                                          else None)
SECONDS = {"short": 1.5, "long": float(os.environ.get("SHIPPER_TORTURE_ROTATION_SECONDS", "180"))}
RATE = 2500  # events a second


@pytest.mark.parametrize("mode", ["create", "copytruncate"])
def test_rotation_storm(shipper: Shipper, tmp_path: Path, mode: str, level: str,
                        figures: dict[str, Any]) -> None:
    if LOGROTATE is None:
        pytest.skip("logrotate is not installed (Debian package 'logrotate'; .ci/setup installs it)")
    # Housekeeping deletes shipped files too in create mode; in copytruncate mode the files must stay
    # for the final scan of what logrotate kept.
    shipper.write_config(**{"spool.delete_shipped": mode == "create", "spool.delete_grace": 1.0,
                            "spool.rescan_interval": 0.3, "buffer.batch_size": 2000})
    live = shipper.spool / "events.jsonl"
    conf = tmp_path / "logrotate.conf"
    conf.write_text(f"{live} {{\n  size 1\n  rotate 100000\n  {mode}\n  missingok\n  nocompress\n}}\n")
    ledger = Ledger()
    writer = SpoolWriter(ledger)
    rng = random.Random(9)
    rotations = {"ok": 0, "failed": 0}
    deleted: list[Path] = []
    deleted_content = Ledger()
    failures: list[str] = []
    state = {"hour": 0}
    started = time.monotonic()

    def write() -> None:
        n = rng.randint(50, 250)
        hour = int((time.monotonic() - started) / 0.7)  # a new "hour" every 0.7 s
        target = live if rng.random() < 0.5 else shipper.spool / f"moodle-events-{hour:06d}-web1.jsonl"
        state["hour"] = hour
        writer.events(target, n)
        time.sleep(n / RATE)

    def rotate() -> None:
        done = subprocess.run([LOGROTATE, "-s", str(tmp_path / "logrotate.state"), str(conf)],
                              capture_output=True, text=True)
        if done.returncode:
            rotations["failed"] += 1
            failures.append(done.stderr)
        else:
            rotations["ok"] += 1
        time.sleep(1.0)

    def operator() -> None:
        time.sleep(rng.uniform(0.5, 1.5))
        assert shipper.proc is not None
        held = set(fd_targets(shipper.proc.pid))
        old = [p for p in shipper.spool.iterdir()
               if str(p) in held and p.name != live.name and f"{state['hour']:06d}" not in p.name]
        if not old:
            return
        victim = rng.choice(old)
        with writer.lock:  # (the writer never appends to an old file; the lock keeps the read whole)
            data = victim.read_bytes()
            victim.unlink()
        deleted.append(victim)
        if mode == "copytruncate":
            copy = tmp_path / "deleted" / f"{len(deleted)}-{victim.name}"
            copy.parent.mkdir(exist_ok=True)
            copy.write_bytes(data)
            snapshot = scan_spool([copy])
            deleted_content.lines += snapshot.lines

    shipper.start()
    threads = [Background(write, "writer"), Background(rotate, "logrotate"), Background(operator, "operator")]
    for thread in threads:
        thread.start()
    try:
        time.sleep(SECONDS[level])
    finally:
        for thread in threads:
            thread.stop()
    if mode == "create":
        must, optional = ledger, None
    else:
        must = scan_spool(sorted(shipper.spool.iterdir()))
        must.lines += deleted_content.lines
        present = {line.seq for line in must.lines}
        optional = Ledger()
        optional.seqs.extend(s for s in ledger.seqs if s not in present)
    wait_for(lambda: count_rows(shipper.dsn) >= must.written, timeout=120, interval=0.3,
             what=f"{must.written} events")
    time.sleep(0.5 if level == "short" else 1.5)  # room for a duplicate to show up
    assert shipper.stop() == 0
    outcome = check(shipper.dsn, must, optional)
    logs = shipper.logs()
    figures.update(scenario=f"rotation storm ({mode})", level=level, logrotate_runs=rotations["ok"],
                   logrotate_failures=rotations["failed"], operator_deletions=len(deleted),
                   hourly_files=state["hour"] + 1,
                   housekeeping_deletions=logs.count("every line is committed"),
                   renames_seen=logs.count("file renamed"), truncations_seen=logs.count("was truncated"),
                   **outcome.figures())
    outcome.assert_exact()
    assert not failures, failures[0]
    assert rotations["ok"] >= 2 and deleted, (rotations, deleted)
    assert "Traceback" not in logs
    if mode == "create":
        assert outcome.window_lost == 0
