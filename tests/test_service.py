"""The daemon as a system service: sd_notify, SIGHUP reload, spool housekeeping, real logrotate."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import (
    Server,
    Shipper,
    append_events,
    count_rows,
    event,
    line,
    query,
    seqs,
    wait_for,
)


class NotifySocket:
    """The systemd side of sd_notify: a datagram socket collecting what the daemon says."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue

    def fields(self, key: str) -> list[str]:
        out = []
        for message in list(self.messages):
            for item in message.split("\n"):
                if item.startswith(key + "="):
                    out.append(item[len(key) + 1:])
        return out

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def test_sd_notify_ready_before_the_database_watchdog_status_and_stopping(
        shipper: Shipper, tmp_path: Path, pg_server: Server) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    try:
        # READY is not gated on the database: point the shipper at a port where nothing listens.
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dead_port = s.getsockname()[1]
        shipper.write_config(**{"database.dsn": f"postgresql://postgres@127.0.0.1:{dead_port}/x"})
        shipper.start(env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"})
        wait_for(lambda: notify.fields("READY") == ["1"], what="READY=1")
        wait_for(lambda: len(notify.fields("WATCHDOG")) >= 3, what="watchdog pings while failing")
        assert shipper.stop() == 0
        assert notify.fields("STOPPING") == ["1"]

        notify.messages.clear()
        shipper.write_config(**{"database.dsn": shipper.dsn})
        append_events(shipper.spool / "a.jsonl", 0, 100)
        shipper.start(env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"})
        wait_for(lambda: count_rows(shipper.dsn) == 100, what="100 events")
        wait_for(lambda: any(s.startswith("shipped 100 events, 0 bytes behind")
                             for s in notify.fields("STATUS")), timeout=15, what="STATUS with the lag")
        assert notify.fields("READY") == ["1"]
        assert notify.fields("WATCHDOG")
        assert shipper.stop() == 0
        assert notify.fields("STOPPING") == ["1"]
    finally:
        notify.close()


def test_sighup_applies_a_valid_config_and_keeps_the_old_one_when_invalid(shipper: Shipper) -> None:
    shipper.write_config(**{"buffer.flush_interval": 600.0, "buffer.batch_size": 10000})
    path = shipper.spool / "a.jsonl"
    shipper.start()
    wait_for(lambda: "offsets read" in shipper.logs(), what="start-up")
    append_events(path, 0, 50)
    time.sleep(1.5)
    assert count_rows(shipper.dsn) == 0, "neither the batch size nor the interval is reached"

    shipper.write_config(**{"buffer.batch_size": 20})
    assert shipper.proc is not None
    shipper.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: count_rows(shipper.dsn) >= 40, what="batches of 20 after the reload")
    assert "configuration reloaded" in shipper.logs()

    shipper.config.write_text(shipper.config.read_text().replace("batch_size = 20", 'batch_size = "lots"'))
    shipper.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "new configuration is refused" in shipper.logs(), what="the refusal")
    assert shipper.proc.poll() is None, "a bad config must not stop the shipper"
    assert "buffer.batch_size must be an integer" in shipper.logs()
    append_events(path, 50, 30)
    wait_for(lambda: count_rows(shipper.dsn) >= 80, what="the old batch size still in force")
    assert shipper.stop() == 0
    assert seqs(shipper.dsn) == list(range(80))


def open_spool_fds(pid: int, spool: Path) -> list[str]:
    fds = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(spool)):
            fds.append(target)
    return fds


def test_housekeeping_deletes_shipped_idle_files_but_never_the_newest_nor_uncommitted_ones(
        shipper: Shipper, pg_server: Server) -> None:
    shipper.write_config(**{"spool.delete_grace": 1.0, "spool.rescan_interval": 0.3})
    old = [shipper.spool / f"moodle-events-202612040{h}-web1.jsonl" for h in range(3)]
    newest = shipper.spool / "moodle-events-2026120403-web1.jsonl"
    for i, path in enumerate([*old, newest]):
        append_events(path, i * 100, 100)
    sizes = {str(p): p.stat().st_size for p in [*old, newest]}
    past = time.time() - 3600
    for path in old:
        os.utime(path, (past, past))
    shipper.start()
    wait_for(lambda: not any(p.exists() for p in old), what="the shipped hourly files to go")
    assert newest.exists(), "the newest file is where the writer appends: never deleted"
    assert count_rows(shipper.dsn) == 400
    committed = dict(query(shipper.dsn, "SELECT path, byte_offset FROM shipper_checkpoints"))
    assert committed == sizes
    assert shipper.proc is not None
    wait_for(lambda: open_spool_fds(shipper.proc.pid, shipper.spool) == [str(newest)],
             what="descriptors of deleted files released")

    if pg_server.temp is not None:  # while the database is away nothing may be deleted
        pg_server.temp.stop_server("fast")
        try:
            unshipped = shipper.spool / "moodle-events-2026120402-web2.jsonl"
            append_events(unshipped, 1000, 50)
            os.utime(unshipped, (past, past))
            time.sleep(3)
            assert unshipped.exists(), "deleted before its lines were committed"
        finally:
            pg_server.temp.start_server()
        wait_for(lambda: not unshipped.exists(), timeout=60, what="the file to ship, then go")
        assert count_rows(shipper.dsn) == 450

    # a file an operator deletes while it is open is closed once shipped
    before = count_rows(shipper.dsn)
    append_events(newest, 2000, 10)
    newer = shipper.spool / "moodle-events-2026120404-web1.jsonl"
    append_events(newer, 3000, 10)
    wait_for(lambda: count_rows(shipper.dsn) == before + 20, what="20 more events")
    newer.unlink()
    wait_for(lambda: str(newer) + " (deleted)" not in open_spool_fds(shipper.proc.pid, shipper.spool),
             what="the deleted file's descriptor to close")
    assert shipper.stop() == 0


LOGROTATE = shutil.which("logrotate") or ("/usr/sbin/logrotate" if os.path.exists("/usr/sbin/logrotate")
                                          else None)


@pytest.mark.parametrize("mode", ["create", "copytruncate"])
def test_real_logrotate_every_second_under_load(shipper: Shipper, tmp_path: Path, mode: str) -> None:
    if LOGROTATE is None:
        pytest.skip("logrotate is not installed (Debian package 'logrotate'; .ci/setup installs it)")
    shipper.write_config(**{"spool.delete_shipped": False})
    current = shipper.spool / "events.jsonl"
    conf = tmp_path / "logrotate.conf"
    conf.write_text(f"{current} {{\n  size 1\n  rotate 1000\n  {mode}\n  missingok\n  nocompress\n}}\n")
    total = int(os.environ.get("SHIPPER_LOGROTATE_EVENTS", "12000"))
    written = 0
    stop = threading.Event()
    failures: list[str] = []

    def rotate() -> None:
        while not stop.is_set():
            done = subprocess.run([LOGROTATE, "-s", str(tmp_path / "logrotate.state"), str(conf)],
                                  capture_output=True, text=True)
            if done.returncode:
                failures.append(done.stderr)
            stop.wait(1.0)

    shipper.start()
    rotator = threading.Thread(target=rotate, daemon=True)
    rotator.start()
    rng = random.Random(3)
    try:
        while written < total:
            burst = min(rng.randint(50, 300), total - written)
            with open(current, "ab") as fh:
                fh.write(b"".join(line(event(i)) for i in range(written, written + burst)))
            written += burst
            time.sleep(rng.uniform(0.03, 0.1))  # about 5 s of writing: several rotations
    finally:
        stop.set()
        rotator.join()
    assert not failures, failures[0]
    rotations = len(list(shipper.spool.glob("events.jsonl.*")))
    assert rotations >= 3, "logrotate should have rotated several times"
    # What the spool holds now: complete lines in every file.
    present: list[int] = []
    for path in shipper.spool.iterdir():
        for raw in path.read_bytes().split(b"\n")[:-1]:
            present.append(int(raw.split(b'"seq":')[1].split(b"}")[0]))
    if mode == "create":
        assert sorted(present) == list(range(total))
    wait_for(lambda: set(present) <= set(seqs(shipper.dsn)), timeout=60, what="the spool to ship")
    time.sleep(1)
    assert shipper.stop() == 0
    got = seqs(shipper.dsn)
    assert len(got) == len(set(got)), "duplicates"
    if mode == "create":
        assert got == list(range(total))
    else:
        # copytruncate loses, by its own design, lines written between its copy and its truncate,
        # unless the shipper read them from the original before the truncate. Everything that
        # survived in the spool arrived exactly once, and nothing that was never written.
        assert set(present) <= set(got) <= set(range(total))
        assert len(got) > total * 0.9
