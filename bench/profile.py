"""Profile one catch-up with py-spy and say where the shipper's time goes, by function and by stage."""

from __future__ import annotations

import shutil
import sys
from collections import Counter
from pathlib import Path

from . import catchup
from .data import Spool
from .server import Server

# Stage of a main-thread sample: the first of these marks found from the leaf up names it.
STAGES = (
    ("parse: msgspec decode, fields, COPY text (parse.py)", ("(shipper/parse.py)",)),
    ("split lines (lines.py)", ("(shipper/spool/lines.py)",)),
    ("read files: pread, fstat (tail.py)", ("(shipper/spool/tail.py)",)),
    ("send rows into the open COPY (Sink.stream, psycopg, socket)", ("Sink.stream ",)),
    ("commit: end COPY, offsets, COMMIT, waiting for the server (Sink.commit)", ("Sink.commit ",)),
    ("batch bookkeeping and metrics (buffer.py, _after_commit)", ("(shipper/buffer.py)", "_after_commit ")),
    ("waiting for data or a timer (the loop's Event.wait)", ("Event.wait ",)),
)


def py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def record(server: Server, spool: Spool, work: Path, out: Path, rate: int = 250) -> tuple[Path, str]:
    """One catch-up under py-spy (which slows it a little); returns the raw profile and its summary.

    Sampled with --idle, so the main thread's samples are its wall-clock time, waits included.
    """
    spy = py_spy()
    if spy is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    raw = out / "profile.raw"
    prefix = [spy, "record", "--nolineno", "--idle", "-r", str(rate), "-f", "raw", "-o", str(raw), "--"]
    catchup.shipper(server, spool, work, method="shipper under py-spy", prefix=prefix)
    text = summarize(raw)
    (out / "profile.txt").write_text(text)
    return raw, text


def summarize(raw: Path, top: int = 15) -> str:
    """Main thread only (the other threads, inotify and HTTP, sleep): by stage, self and inclusive."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    stages: Counter[str] = Counter()
    total = others = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        frames = [f for f in stack.split(";") if "(" in f]
        if not frames:
            continue
        count = int(count_text)
        if not frames[0].startswith("<module> "):
            others += count
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
        stages[_stage(frames)] += count
    if not total:
        return "no samples\n"
    lines = [f"{total} samples of the main thread (wall clock, waits included); other threads: {others}",
             "", "by stage:"]
    lines += [f"  {n / total * 100:5.1f}%  {name}" for name, n in stages.most_common()]
    lines += ["", "self time (the function itself):"]
    lines += [f"  {n / total * 100:5.1f}%  {name}" for name, n in own.most_common(top)]
    lines += ["", "inclusive time (the function and what it calls):"]
    lines += [f"  {n / total * 100:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines) + "\n"


# Anywhere in the stack: the sample belongs to start-up or exit, whatever it waits for.
EDGES = ("Daemon._shutdown ", "_find_and_load ", "load_config ", "Sink.connect ", "load_checkpoints ")


def _stage(frames: list[str]) -> str:
    if any(edge in frame for frame in frames for edge in EDGES):
        return "start-up (imports, config, connection) and exit"
    for frame in reversed(frames):
        for name, marks in STAGES:
            if any(mark in frame for mark in marks):
                return name
    return "the main loop itself"
