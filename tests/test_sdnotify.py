"""sd_notify: messages arrive on a real datagram socket owned by the test, like systemd's."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shipper import sdnotify

# sun_path holds 108 bytes; keep well below it even on CI hosts with a long $TMPDIR.
_MAX_SOCKET_PATH = 100


class Receiver:
    """The service manager's end: a bound AF_UNIX datagram socket."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.name = name  # the value for $NOTIFY_SOCKET

    def recv(self, timeout: float = 2.0) -> str:
        self.sock.settimeout(timeout)
        return self.sock.recv(65536).decode()

    def fields(self, timeout: float = 2.0) -> dict[str, str]:
        return dict(line.split("=", 1) for line in self.recv(timeout).split("\n"))

    def assert_empty(self) -> None:
        self.sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            self.sock.recv(65536)


@pytest.fixture
def path_receiver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    directory = tmp_path
    short_dir = None
    if len(str(tmp_path / "notify.sock")) > _MAX_SOCKET_PATH:
        short_dir = directory = Path(tempfile.mkdtemp(prefix="sdn", dir="/tmp"))
    path = str(directory / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    try:
        yield Receiver(sock, path)
    finally:
        sock.close()
        if short_dir is not None:
            shutil.rmtree(short_dir)


@pytest.fixture
def abstract_receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    name = f"moodle-tsdb-shipper-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    try:
        yield Receiver(sock, "@" + name)
    finally:
        sock.close()


@pytest.fixture(params=["path", "abstract"])
def receiver(request: pytest.FixtureRequest) -> Receiver:
    return request.getfixturevalue(f"{request.param}_receiver")


def test_lifecycle_messages(receiver: Receiver) -> None:
    assert sdnotify.ready()
    assert receiver.recv() == "READY=1"
    assert sdnotify.status("shipped 1200 events, lag 4 KiB / 2 s")
    assert receiver.recv() == "STATUS=shipped 1200 events, lag 4 KiB / 2 s"
    assert sdnotify.watchdog()
    assert receiver.recv() == "WATCHDOG=1"
    assert sdnotify.stopping()
    assert receiver.recv() == "STOPPING=1"
    receiver.assert_empty()


def test_ready_and_stopping_carry_status_in_the_same_datagram(receiver: Receiver) -> None:
    assert sdnotify.ready("waiting for the database")
    assert receiver.recv() == "READY=1\nSTATUS=waiting for the database"
    assert sdnotify.stopping("flushing the last batch")
    assert receiver.recv() == "STOPPING=1\nSTATUS=flushing the last batch"


def test_reloading_sends_monotonic_usec(receiver: Receiver) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert sdnotify.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    fields = receiver.fields()
    assert list(fields) == ["RELOADING", "MONOTONIC_USEC"]
    assert fields["RELOADING"] == "1"
    assert before <= int(fields["MONOTONIC_USEC"]) <= after


def test_notify_fields_and_raw_state(path_receiver: Receiver) -> None:
    assert sdnotify.notify("READY=1", STATUS="up", ERRNO=0)
    assert path_receiver.recv() == "READY=1\nSTATUS=up\nERRNO=0"
    assert sdnotify.notify(MAINPID=os.getpid())
    assert path_receiver.recv() == f"MAINPID={os.getpid()}"
    assert sdnotify.extend_timeout(90)
    assert path_receiver.recv() == "EXTEND_TIMEOUT_USEC=90000000"


def test_newline_in_a_value_cannot_forge_another_field(path_receiver: Receiver) -> None:
    assert sdnotify.status("database down\nREADY=1\r\n")
    assert path_receiver.recv() == "STATUS=database down READY=1  "


def test_bad_field_name_is_a_programming_error(path_receiver: Receiver) -> None:
    with pytest.raises(ValueError, match="status"):
        sdnotify.notify(status="lower case")
    path_receiver.assert_empty()


def test_notifier_reads_the_given_environment(path_receiver: Receiver) -> None:
    notifier = sdnotify.Notifier({"NOTIFY_SOCKET": path_receiver.name})
    assert notifier.enabled
    assert notifier.socket_name == path_receiver.name
    assert notifier.watchdog()
    assert path_receiver.recv() == "WATCHDOG=1"


def test_no_op_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not sdnotify.Notifier().enabled
    assert sdnotify.ready() is False
    assert sdnotify.watchdog() is False
    assert sdnotify.reloading() is False
    assert sdnotify.Notifier({"NOTIFY_SOCKET": ""}).ready() is False


@pytest.mark.parametrize("value", ["relative/notify.sock", "@", "vsock:2:1234"])
def test_unusable_address_is_a_no_op(value: str) -> None:
    notifier = sdnotify.Notifier({"NOTIFY_SOCKET": value})
    assert not notifier.enabled
    assert notifier.ready() is False


def test_send_failure_is_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    notifier = sdnotify.Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    with caplog.at_level(logging.DEBUG, logger="shipper.sdnotify"):
        assert notifier.ready() is False
    assert "nobody-listens" in caplog.text
    assert all(record.levelno == logging.DEBUG for record in caplog.records)


def test_full_receiver_queue_does_not_hang_the_sender(path_receiver: Receiver) -> None:
    # A manager that stops reading fills its queue (net.unix.max_dgram_qlen); sends then time out and
    # are dropped instead of blocking the working loop for ever.
    notifier = sdnotify.Notifier({"NOTIFY_SOCKET": path_receiver.name}, timeout=0.05)
    started = time.monotonic()
    results = [notifier.watchdog() for _ in range(40)]
    assert time.monotonic() - started < 30
    assert results[0] is True
    assert False in results
    assert path_receiver.recv() == "WATCHDOG=1"


def test_datagram_carries_our_pid_for_notify_access_main(path_receiver: Receiver) -> None:
    # systemd accepts a message under NotifyAccess=main only if the kernel-stamped sender PID is the
    # main PID: the message must come from this process, not a helper such as systemd-notify(1).
    path_receiver.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    assert sdnotify.ready()
    path_receiver.sock.settimeout(2.0)
    data, ancillary, _flags, _addr = path_receiver.sock.recvmsg(4096, socket.CMSG_SPACE(12))
    assert data == b"READY=1"
    creds = [
        d for level, kind, d in ancillary if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
    ]
    assert creds
    assert int.from_bytes(creds[0][:4], "little") == os.getpid()


# --- watchdog_interval ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "1500000"}, 1.5),
        ({"WATCHDOG_USEC": ""}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "thirty"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "not-a-pid"}, None),
    ],
)
def test_watchdog_interval(environ: dict[str, str], expected: float | None) -> None:
    assert sdnotify.watchdog_interval(environ) == expected


def test_watchdog_interval_for_this_pid() -> None:
    env = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    assert sdnotify.watchdog_interval(env) == 30.0


def test_watchdog_interval_meant_for_another_pid() -> None:
    # Inherited from a parent that was the watched process: not ours to ping.
    env = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert sdnotify.watchdog_interval(env) is None


def test_watchdog_interval_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 20.0
    monkeypatch.delenv("WATCHDOG_USEC")
    assert sdnotify.watchdog_interval() is None
