"""CPU and memory of processes from /proc (Linux): the shipper, the PostgreSQL server, the whole machine.

The server's CPU is that of the postmaster and all its children. A backend that exits during a run
(psql's, for instance) moves its time into the postmaster's cutime/cstime when it is reaped, so
"own + reaped children + live children" only ever grows and its difference over a run is exact.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass

TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name (which may contain spaces)."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
        text = fh.read()
    return text[text.rindex(")") + 2:].split()


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) used so far by a live process."""
    f = _stat_fields(pid)
    return (int(f[11]) + int(f[12])) / TICK


def _children(parent: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if int(_stat_fields(int(name))[1]) == parent:
                out.append(int(name))
        except (OSError, ValueError, IndexError):
            continue  # exited while we looked
    return out


def tree_cpu(root: int) -> float:
    """CPU seconds of ``root``, its reaped children and its live children (one level: PostgreSQL's)."""
    f = _stat_fields(root)
    total = sum(int(x) for x in f[11:15]) / TICK
    for child in _children(root):
        # A child that exits between the listing and the read is counted in cutime at the next look.
        with contextlib.suppress(OSError):
            total += process_cpu(child)
    return total


def rss_kib(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS) of a live process in KiB, from /proc/PID/status."""
    now = peak = 0
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                now = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1])
    return now, peak


def context_switches(pid: int) -> int:
    """Voluntary + involuntary context switches of all threads of a process: how often it woke."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/status", encoding="ascii") as fh:
                for line in fh:
                    if "ctxt_switches:" in line:
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


@dataclass(frozen=True)
class MachineCpu:
    """/proc/stat's first line: busy and total CPU seconds of the whole machine (all cores)."""

    busy: float
    total: float

    @classmethod
    def now(cls) -> MachineCpu:
        with open("/proc/stat", encoding="ascii") as fh:
            values = [int(x) for x in fh.readline().split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        total = sum(values[:8])  # guest time is already inside user
        return cls((total - idle) / TICK, total / TICK)

    def __sub__(self, other: MachineCpu) -> MachineCpu:
        return MachineCpu(self.busy - other.busy, self.total - other.total)


def wait_quiet(limit: float, busy_below: float = 0.3, window: float = 1.0) -> float:
    """Wait up to ``limit`` seconds for the machine to be quiet (under ``busy_below`` cores busy over
    ``window`` seconds); return the busy cores of the last window."""
    deadline = time.monotonic() + limit
    while True:
        before = MachineCpu.now()
        time.sleep(window)
        used = MachineCpu.now() - before
        busy = used.busy / window
        if busy < busy_below or time.monotonic() >= deadline:
            return busy


def load_average() -> str:
    with open("/proc/loadavg", encoding="ascii") as fh:
        return " ".join(fh.read().split()[:3])


def postmaster_of(backend_pid: int) -> int | None:
    """The postmaster's pid from one of its backends' pid, when the server runs on this machine."""
    try:
        return int(_stat_fields(backend_pid)[1])
    except (OSError, ValueError, IndexError):
        return None
