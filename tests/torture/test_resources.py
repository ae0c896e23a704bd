"""Scenario 5, resource limits: a full file system under the state directory and under the spool, a
descriptor limit far below the number of spool files, and a spool directory that loses and regains
read permission.

Full file systems are 1 MiB tmpfs mounts (root only; skipped with the reason elsewhere). Permissions
are enforced on a shipper run as root without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (setpriv): root
ignores file modes otherwise, and the interpreter under /root is out of reach of other users.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Shipper, count_rows, wait_for

from .harness import Background, Ledger, SpoolWriter, check, fd_targets

SIZES: dict[str, dict[str, int]] = {
    "short": {"spool_bytes": 2 * 1024 * 1024, "files": 200, "state_seconds": 1, "perm_cycles": 1},
    "long": {"spool_bytes": 100 * 1024 * 1024, "files": 10_000, "state_seconds": 30, "perm_cycles": 10},
}


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "1m") -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def start_as(shipper: Shipper, prefix: list[str]) -> None:
    """Shipper.start() behind a wrapper that execs it (prlimit, setpriv): the pid stays the shipper's."""
    log = open(shipper.log, "ab")  # noqa: SIM115 - the child's for its lifetime
    shipper.proc = subprocess.Popen([*prefix, *shipper.command("run")], stdout=log, stderr=log,
                                    cwd=shipper.root, env=shipper.env())
    log.close()


def fill(path: Path) -> Path:
    """Fill the file system holding ``path``; return the filler file."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    return filler


def finish(shipper: Shipper, ledger: Ledger, figures: dict[str, Any]) -> None:
    expected = ledger.written
    wait_for(lambda: count_rows(shipper.dsn) + count_rows(shipper.dsn, "shipper_dead_letter") >= expected,
             timeout=180, interval=0.3, what=f"{expected} lines")
    time.sleep(0.5)  # room for a late duplicate
    assert shipper.proc is not None and shipper.proc.poll() is None, "the shipper exited"
    assert shipper.stop() == 0
    outcome = check(shipper.dsn, ledger)
    figures.update(outcome.figures())
    outcome.assert_exact()
    logs = shipper.logs()
    assert "Traceback" not in logs, logs[logs.index("Traceback") - 1000:][:4000]


def test_state_directory_on_a_full_file_system(shipper: Shipper, level: str, figures: dict[str, Any]) -> None:
    size = SIZES[level]
    ledger = Ledger()
    writer = SpoolWriter(ledger)
    with tmpfs(shipper.state):
        filler = fill(shipper.state)
        shipper.start()
        path = shipper.spool / "events.jsonl"
        deadline = time.monotonic() + size["state_seconds"]
        while time.monotonic() < deadline:
            writer.events(path, 200)
            time.sleep(0.05)
        wait_for(lambda: "cannot write the state file" in shipper.logs(), what="the state file's failure")
        assert not (shipper.state / "state.json").exists()
        filler.unlink()  # room again: the mirror comes back with the next commits

        def written_again() -> bool:
            writer.events(path, 50)  # (the state file is written after a commit, at most every 2 s)
            return (shipper.state / "state.json").exists()

        wait_for(written_again, timeout=30, interval=0.3, what="the state file")
        finish(shipper, ledger, figures)
    figures.update(scenario="state directory on a full file system", level=level,
                   state_write_failures=shipper.logs().count("cannot write the state file"))


def test_spool_on_a_full_file_system(shipper: Shipper, level: str, figures: dict[str, Any]) -> None:
    """A 1 MiB spool and a writer that needs many times that: only the shipper's housekeeping, deleting
    what is committed, makes room. A short write is cut back to its last line, as the plugin does."""
    size = SIZES[level]
    ledger = Ledger()
    writer = SpoolWriter(ledger)
    shipper.write_config(**{"spool.delete_grace": 0.3, "spool.rescan_interval": 0.2,
                            "buffer.flush_interval": 0.1})
    rng = random.Random(8)
    full_hits = 0
    longest_wait = 0.0
    with tmpfs(shipper.spool):
        shipper.start()
        file_no = 0
        written_here = 0
        while writer.bytes < size["spool_bytes"]:
            if written_here > 100 * 1024:
                file_no += 1
                written_here = 0
            path = shipper.spool / f"moodle-events-{file_no:06d}-web1.jsonl"
            first = ledger.take(rng.randint(20, 80))
            pending: list[tuple[bytes, Any]] = [(_line(i), i) for i in range(first, ledger.next_seq)]
            blocked_since = None
            while pending:
                before = writer.bytes
                pending = writer.append(path, pending)
                written_here += writer.bytes - before
                if pending:
                    full_hits += 1
                    blocked_since = blocked_since or time.monotonic()
                    if time.monotonic() - blocked_since > 60:
                        pytest.fail("the spool stayed full for 60 s: shipped files are not deleted")
                    time.sleep(0.02)
            if blocked_since:
                longest_wait = max(longest_wait, time.monotonic() - blocked_since)
        finish(shipper, ledger, figures)
    assert full_hits, "the spool never filled up: the test proves nothing"
    figures.update(scenario="spool on a full file system (1 MiB tmpfs)", level=level,
                   bytes_through=writer.bytes, files=file_no + 1, writes_refused=full_hits,
                   longest_recovery_s=round(longest_wait, 2),
                   housekeeping_deletions=shipper.logs().count("every line is committed"))


def _line(i: int) -> bytes:
    from conftest import event, line

    return line(event(i))


def test_descriptor_limit_far_below_the_number_of_files(shipper: Shipper, level: str,
                                                        figures: dict[str, Any]) -> None:
    if shutil.which("prlimit") is None:
        pytest.skip("prlimit (util-linux) is not installed")
    size = SIZES[level]
    ledger = Ledger()
    writer = SpoolWriter(ledger)
    # With more files than descriptors allowed, files are taken max_open_files at a time: shipped ones
    # are closed and the next ones opened at once, not at the next rescan.
    shipper.write_config(**{"spool.max_open_files": 32, "spool.delete_shipped": False,
                            "spool.rescan_interval": 0.2 if level == "short" else 0.5})
    for n in range(size["files"]):
        writer.events(shipper.spool / f"moodle-events-{n:06d}-web{n % 7}.jsonl", 3)
    start_as(shipper, ["prlimit", "--nofile=64:64", "--"])
    assert shipper.proc is not None
    peak = 0
    late = size["files"]
    deadline = time.monotonic() + (1 if level == "short" else 3)
    while time.monotonic() < deadline:  # more files while it works through the backlog
        writer.events(shipper.spool / f"moodle-events-{late:06d}-web9.jsonl", 3)
        late += 1
        peak = max(peak, len(fd_targets(shipper.proc.pid)))
        time.sleep(0.01)
    while count_rows(shipper.dsn) < len(ledger.seqs):
        peak = max(peak, len(fd_targets(shipper.proc.pid)))
        assert shipper.proc.poll() is None, "the shipper exited"
        time.sleep(0.3)
    finish(shipper, ledger, figures)
    logs = shipper.logs()
    assert "too many open files" not in logs.lower()
    figures.update(scenario="descriptor limit 64 with thousands of files", level=level, files=late,
                   nofile_limit=64, max_open_files=32, peak_descriptors_seen=peak)


def test_spool_directory_loses_and_regains_read_permission(shipper: Shipper, level: str,
                                                           figures: dict[str, Any]) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    probe = subprocess.run(["setpriv", "--inh-caps=-dac_override,-dac_read_search",
                            "--bounding-set=-dac_override,-dac_read_search", "true"], capture_output=True)
    if probe.returncode:
        pytest.skip(f"cannot drop CAP_DAC_OVERRIDE here: {probe.stderr.decode().strip()}")
    size = SIZES[level]
    ledger = Ledger()
    writer = SpoolWriter(ledger)
    path = shipper.spool / "events.jsonl"
    writer.events(path, 100)
    start_as(shipper, ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
                       "--bounding-set=-dac_override,-dac_read_search", "--"])
    wait_for(lambda: count_rows(shipper.dsn) >= 100, what="the first events")

    def write() -> None:
        writer.events(path, 50)
        time.sleep(0.1)

    steady = Background(write, "writer")
    steady.start()
    recoveries = []
    try:
        for cycle in range(size["perm_cycles"]):
            for mode in (0o300, 0o000):  # no listing; then not even a lookup
                shipper.spool.chmod(mode)
                newcomer = shipper.spool / f"moodle-events-{cycle:03d}-{mode:o}.jsonl"
                writer.events(newcomer, 40)  # (root with its capabilities can still write)
                locked = shipper.spool / f"locked-{cycle:03d}-{mode:o}.jsonl"
                writer.events(locked, 10)
                locked.chmod(0)
                time.sleep(0.6 if level == "short" else 1.0)
                assert shipper.proc is not None and shipper.proc.poll() is None, "the shipper exited"
                shipper.spool.chmod(0o755)
                time.sleep(0.5)  # the directory is back, this one file is not yet
                locked.chmod(0o644)
                back, target = time.monotonic(), len(ledger.seqs)
                wait_for(lambda: count_rows(shipper.dsn) >= target, timeout=60,  # noqa: B023
                         what="the files written while the directory was unreadable")
                recoveries.append(time.monotonic() - back)
    finally:
        shipper.spool.chmod(0o755)
        steady.stop()
    finish(shipper, ledger, figures)
    logs = shipper.logs()
    assert "cannot list spool directory" in logs and "permission denied" in logs.lower()
    figures.update(scenario="spool directory loses and regains read permission", level=level,
                   cycles=size["perm_cycles"] * 2, longest_recovery_s=round(max(recoveries), 2),
                   listing_errors=logs.count("cannot list spool directory"),
                   file_permission_errors=logs.count("cannot read spool file"))
