"""The benchmark's data: a deterministic spool (shipper.sample's Moodle mix) and the same rows pre-converted.

The spool is cached under the output directory by (count, seed, start day): generating 1M events takes
about a minute. The rows for ``psql \\copy`` and for the seed's INSERTs come from the shipper's own
parser run over the spool, so every method loads exactly the same rows.
"""

from __future__ import annotations

import calendar
import json
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from shipper import sample
from shipper.parse import COLUMNS, Parser
from shipper.spool.lines import LineSplitter

PER_SECOND = 200.0  # a busy site: 1M events span 83 minutes, so two hourly files
HOST = "web1"
Log = Callable[[str], None]
_UNESCAPE = re.compile(r"\\(.)")
_UNESCAPED = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}


@dataclass(frozen=True)
class Spool:
    """A generated spool directory and what is in it."""

    dir: Path
    count: int
    files: list[Path]
    nbytes: int

    @property
    def root(self) -> Path:
        return self.dir.parent


def day_start(day: str | None) -> int:
    """Unix time of 00:00 UTC of ``day`` (YYYY-MM-DD), by default of yesterday: recent events, as live."""
    if day:
        return calendar.timegm(time.strptime(day, "%Y-%m-%d"))
    return (int(time.time()) // 86400 - 1) * 86400


def spool(out: Path, count: int, seed: int, start: int, log: Log) -> Spool:
    """The cached spool of ``count`` events, generated when missing."""
    root = out / f"data-{count}-seed{seed}-{time.strftime('%Y%m%d', time.gmtime(start))}"
    directory = root / "spool"
    marker = root / "spool.json"
    if marker.exists():
        info = json.loads(marker.read_text())
        files = [directory / name for name in info["files"]]
        if all(f.exists() for f in files):
            return Spool(directory, count, files, info["bytes"])
    shutil.rmtree(root, ignore_errors=True)
    directory.mkdir(parents=True)
    log(f"generating a spool of {count:,} events in {directory} (cached for later runs) ...")
    began = time.monotonic()
    files = sample.write_spool(directory, count, host=HOST, seed=seed, start=start, per_second=PER_SECOND)
    nbytes = sum(f.stat().st_size for f in files)
    marker.write_text(json.dumps({"files": [f.name for f in files], "bytes": nbytes, "count": count}))
    log(f"  {len(files)} files, {nbytes / 1e6:.0f} MB in {time.monotonic() - began:.0f} s")
    return Spool(directory, count, files, nbytes)


def copy_rows(sp: Spool) -> Iterator[bytes]:
    """The COPY text rows the shipper makes of the spool, file by file, in order."""
    parser = Parser()
    for path in sp.files:
        splitter = LineSplitter(0, 1 << 20)
        with open(path, "rb") as fh:
            while data := fh.read(1 << 20):
                split = splitter.feed(data)
                parsed = parser.parse(split.lines, split.offsets)
                assert not parsed.dead, f"{path}: the sample has a bad line"
                yield from parsed.rows


def _csv_field(text: str) -> str:
    if text == "\\N":
        return ""  # unquoted empty: NULL in CSV format
    if "\\" in text:
        text = _UNESCAPE.sub(lambda m: _UNESCAPED[m.group(1)], text)
    return '"' + text.replace('"', '""') + '"'


def converted(sp: Spool, log: Log) -> tuple[Path, Path]:
    """(CSV file, COPY text file) holding the spool's rows, made once and cached."""
    csv_path, text_path = sp.root / "rows.csv", sp.root / "rows.txt"
    done = sp.root / "rows.done"
    if done.exists():
        return csv_path, text_path
    log("converting the spool to CSV and COPY text (once) ...")
    with open(csv_path, "w", encoding="utf-8") as csv_out, open(text_path, "wb") as text_out:
        for row in copy_rows(sp):
            text_out.write(row)
            fields = row[:-1].decode().split("\t")
            csv_out.write(",".join(_csv_field(f) for f in fields) + "\n")
    done.touch()
    return csv_path, text_path


def insert_params(text_path: Path, count: int) -> list[tuple[str | None, ...]]:
    """The first ``count`` rows as INSERT parameters: text values (None for NULL), as PHP sends them."""
    out: list[tuple[str | None, ...]] = []
    with open(text_path, encoding="utf-8") as fh:
        for line in fh:
            if len(out) >= count:
                break
            fields = line[:-1].split("\t")
            out.append(tuple(None if f == "\\N" else _UNESCAPE.sub(lambda m: _UNESCAPED[m.group(1)], f)
                             for f in fields))
    assert all(len(p) == len(COLUMNS) for p in out)
    return out
