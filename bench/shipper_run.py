"""Run the real shipper as a subprocess, as an operator would: its command, a config file, its CPU and RSS."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shipper.pgtemp import free_port

from . import procstat

# Another checkout of the shipper to run instead of the installed one (bench/run --shipper-source),
# for before/after comparisons: "python -m shipper" run from that directory imports its package.
SOURCE: Path | None = None


def command() -> list[str]:
    """``moodle-tsdb-shipper`` next to this Python (the venv's console script), else ``python -m shipper``."""
    script = Path(sys.executable).parent / "moodle-tsdb-shipper"
    if SOURCE is None and script.exists():
        return [str(script)]
    return [sys.executable, "-m", "shipper"]


@dataclass
class ShipperSetup:
    """A config file for one run: default settings except where the benchmark must say where things are."""

    root: Path
    spool: Path
    dsn: str
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.state = self.root / "state"
        shutil.rmtree(self.state, ignore_errors=True)
        self.state.mkdir(parents=True)
        self.config = self.root / "shipper.toml"
        self.log = self.root / "shipper.log"
        values: dict[str, Any] = {
            "source_id": "bench", "spool.dir": str(self.spool), "state.dir": str(self.state),
            "database.dsn": self.dsn,
            # A free port rather than "off": the endpoint is part of the default set-up.
            "metrics.listen": f"127.0.0.1:{free_port()}",
            **self.settings,
        }
        sections: dict[str, list[str]] = {}
        top = []
        for dotted, value in values.items():
            text = _toml(value)
            if "." in dotted:
                section, key = dotted.split(".", 1)
                sections.setdefault(section, []).append(f"{key} = {text}")
            else:
                top.append(f"{dotted} = {text}")
        body = top + [line for section, lines in sections.items() for line in (f"[{section}]", *lines)]
        self.config.write_text("\n".join(body) + "\n")

    def argv(self, *args: str) -> list[str]:
        return [*command(), "run", *args, "--config", str(self.config)]

    def start(self, *args: str, prefix: list[str] | None = None) -> subprocess.Popen[bytes]:
        with open(self.log, "ab") as log:
            return subprocess.Popen([*(prefix or []), *self.argv(*args)], stdout=log, stderr=log,
                                    cwd=SOURCE)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class Finished:
    """How a process run ended: wall seconds, CPU seconds (user+system, all threads), peak RSS."""

    seconds: float
    cpu: float
    peak_rss_kib: int
    returncode: int
    rss_samples: list[tuple[float, int]] = field(default_factory=list)  # (seconds from start, KiB)


def wait(proc: subprocess.Popen[bytes], started: float, sample_rss: float = 0.0) -> Finished:
    """Wait for ``proc``: CPU from wait4()'s rusage, peak RSS from /proc (VmHWM, sampled).

    Not ru_maxrss: Linux carries the parent's high-water mark across fork and exec into the child's,
    so it would report the benchmark's own size for a small child. VmHWM belongs to the new image.
    """
    samples: list[tuple[float, int]] = []
    peak = [0]
    done = threading.Event()
    every = sample_rss or 0.1

    def sampler() -> None:
        next_sample = 0.0
        while not done.wait(0.05):
            try:
                rss, hwm = procstat.rss_kib(proc.pid)
            except (OSError, ValueError):
                return
            peak[0] = max(peak[0], hwm)
            now = time.monotonic() - started
            if sample_rss and now >= next_sample:
                samples.append((now, rss))
                next_sample = now + every

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - started
    done.set()
    thread.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Finished(seconds, usage.ru_utime + usage.ru_stime, peak[0], proc.returncode, samples)


def stop(proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
    """SIGTERM (finish the batch, commit, exit 0) and wait."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=timeout)
