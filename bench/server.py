"""The PostgreSQL the benchmark loads: a throwaway one (durable by default) or BENCH_DSN's, and its CPU.

Every method loads the same table with the same indexes: ``reset()`` empties it (TRUNCATE) and
checkpoints between runs, so no run pays for the dirty pages of the one before.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import psycopg.conninfo

from shipper.config import TimescaleConfig
from shipper.pgtemp import TempPostgres
from shipper.sink import schema

from . import procstat

BENCH_DB = "moodle_shipper_bench"
# The seed's four indexes: the same columns as ours with time DESC first.
SEED_INDEXES = tuple((name, definition.replace("(time,", "(time DESC,"))
                     for name, definition in schema.EVENT_INDEXES)
SHOWN_SETTINGS = ("server_version", "fsync", "synchronous_commit", "full_page_writes", "wal_level",
                  "shared_buffers", "max_wal_size", "track_commit_timestamp")


@dataclass
class Server:
    dsn: str  # the benchmark database
    admin_dsn: str
    temp: TempPostgres | None
    postmaster: int | None  # None when the server's processes cannot be seen from here
    settings: dict[str, str] = field(default_factory=dict)
    storage: str = ""

    def cpu(self) -> float | None:
        """CPU seconds the whole server has used so far (None when not on this machine)."""
        if self.postmaster is None:
            return None
        try:
            return procstat.tree_cpu(self.postmaster)
        except OSError:
            return None

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn, autocommit=True)

    def reset(self) -> None:
        """Empty the events and the shipper's tables, and write every dirty page out now."""
        with self.connect() as conn:
            conn.execute("TRUNCATE moodle_events, shipper_checkpoints, shipper_dead_letter")
            conn.execute("CHECKPOINT")

    def count(self) -> int:
        with self.connect() as conn:
            return int(conn.execute("SELECT count(*) FROM moodle_events").fetchone()[0])  # type: ignore[index]

    def checksum(self) -> int:
        """An order-independent checksum of every row: the methods must load the same rows."""
        with self.connect() as conn:
            row = conn.execute("SELECT coalesce(sum(hashtext(m::text)::bigint), 0) FROM moodle_events m"
                               ).fetchone()
        return int(row[0])  # type: ignore[index]

    def set_indexes(self, seed_order: bool) -> None:
        """Rebuild the four indexes on time ASC (ours) or time DESC (the seed's), on an empty table."""
        wanted = SEED_INDEXES if seed_order else schema.EVENT_INDEXES
        with self.connect() as conn:
            conn.execute("TRUNCATE moodle_events")
            for name, definition in wanted:
                conn.execute(f"DROP INDEX IF EXISTS {name}")
                conn.execute(f"CREATE INDEX {name} ON moodle_events {definition}")

    def index_sizes(self) -> dict[str, int]:
        """Bytes of each of the four indexes (summed over chunks on a hypertable)."""
        out = {}
        with self.connect() as conn:
            hyper = conn.execute("SELECT to_regproc('hypertable_index_size') IS NOT NULL").fetchone()[0]  # type: ignore[index]
            for name, _ in schema.EVENT_INDEXES:
                if hyper and self.storage.startswith("TimescaleDB"):
                    size = conn.execute("SELECT hypertable_index_size(%s)", (name,)).fetchone()[0]  # type: ignore[index]
                else:
                    size = conn.execute("SELECT pg_relation_size(%s)", (name,)).fetchone()[0]  # type: ignore[index]
                out[name] = int(size or 0)
        return out

    def stop(self) -> None:
        if self.temp is not None:
            self.temp.stop()
        else:
            with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")


def start(work: Path, dsn: str | None, durable: bool) -> Server:
    """Start a throwaway server in ``work`` (or use ``dsn``), create the benchmark database and schema."""
    temp = None
    if dsn is None:
        temp = TempPostgres(base=str(work / "pg"), durable=durable)
        temp.start()
        # Commit timestamps give each event's exact commit time for the live-tail latency.
        with open(temp.data / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("track_commit_timestamp = on\n")
        temp.stop_server()
        temp.start_server()
        dsn = temp.dsn()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {BENCH_DB}")
    bench_dsn = psycopg.conninfo.make_conninfo(dsn, dbname=BENCH_DB)
    with psycopg.connect(bench_dsn, autocommit=True) as conn:
        # Policies would run in the background in the middle of a measurement: off here.
        report = schema.init_db(conn, TimescaleConfig(compress_after="off", retain_for="off",
                                                      aggregate_refresh="off"))
        settings = {name: str(conn.execute(f"SHOW {name}").fetchone()[0])  # type: ignore[index]
                    for name in SHOWN_SETTINGS}
        backend = int(conn.execute("SELECT pg_backend_pid()").fetchone()[0])  # type: ignore[index]
    postmaster = _local_postmaster(temp, backend)
    return Server(bench_dsn, dsn, temp, postmaster, settings, report.mode)


def _local_postmaster(temp: TempPostgres | None, backend: int) -> int | None:
    if temp is not None:
        return int((temp.data / "postmaster.pid").read_text().split()[0])
    parent = procstat.postmaster_of(backend)
    if parent is None:
        return None
    try:  # the same pid could be another process when the server is elsewhere or in a container
        with open(f"/proc/{parent}/comm", encoding="ascii") as fh:
            return parent if fh.read().strip() in ("postgres", "postmaster") else None
    except OSError:
        return None


def psql() -> str:
    """psql of the server binaries' version (falls back to the one on PATH)."""
    from shipper.pgtemp import find_bindir

    try:
        candidate = find_bindir() / "psql"
        if candidate.exists():
            return str(candidate)
    except Exception:
        pass
    return "psql"


def pg_env() -> dict[str, str]:
    return {**os.environ, "PGAPPNAME": "bench", "PSQLRC": "/dev/null"}
