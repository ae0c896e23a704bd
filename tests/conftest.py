"""Shared fixtures: a real PostgreSQL (started here, or SHIPPER_TEST_DSN), a fresh database per test, and
a shipper run as a real subprocess against real files.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psycopg
import psycopg.conninfo
import pytest

from shipper.pgtemp import TempPostgres
from shipper.sink import schema

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Server:
    dsn: str
    temp: TempPostgres | None  # None when SHIPPER_TEST_DSN names someone else's server

    def dsn_for(self, dbname: str) -> str:
        return psycopg.conninfo.make_conninfo(self.dsn, dbname=dbname)

    def has_timescaledb(self) -> bool:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone()
            preload = conn.execute("SHOW shared_preload_libraries").fetchone()
        return bool(row and row[0]) and "timescaledb" in (preload[0] if preload else "")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Server]:
    dsn = os.environ.get("SHIPPER_TEST_DSN")
    if dsn:
        yield Server(dsn, None)
        return
    pg = TempPostgres()
    pg.start()
    try:
        yield Server(pg.dsn(), pg)
    finally:
        pg.stop()


@pytest.fixture
def db(pg_server: Server) -> Iterator[str]:
    """DSN of a new, empty database, dropped after the test."""
    name = f"shipper_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield pg_server.dsn_for(name)
    finally:
        with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def initdb(db: str) -> str:
    """DSN of a new database with the shipper's schema."""
    with psycopg.connect(db, autocommit=True) as conn:
        schema.init_db(conn)
    return db


def query(dsn: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def count_rows(dsn: str, table: str = "moodle_events") -> int:
    return int(query(dsn, f"SELECT count(*) FROM {table}")[0][0])


def event(i: int, **fields: Any) -> dict[str, Any]:
    """A realistic Moodle event whose other.seq identifies the line it came from."""
    base: dict[str, Any] = {
        "eventname": "\\core\\event\\course_viewed", "component": "core", "action": "viewed",
        "target": "course", "objecttable": None, "objectid": None, "crud": "r", "edulevel": 2,
        "contextid": 1000 + i % 7, "contextlevel": 50, "contextinstanceid": 2 + i % 7,
        "userid": 10 + i % 100, "courseid": 2 + i % 7, "relateduserid": None, "anonymous": 0,
        "other": {"seq": i}, "timecreated": 1_764_000_000 + i // 10,
        "origin": "web", "ip": f"192.0.2.{i % 250}", "realuserid": None,
    }
    base["timecreated_us"] = base["timecreated"] * 1_000_000 + i % 10
    base.update(fields)
    return base


def line(obj: Any) -> bytes:
    return orjson.dumps(obj) + b"\n"


def append(path: Path, *chunks: bytes) -> None:
    with open(path, "ab") as fh:
        for chunk in chunks:
            fh.write(chunk)


def append_events(path: Path, start: int, count: int, **fields: Any) -> None:
    append(path, b"".join(line(event(i, **fields)) for i in range(start, start + count)))


def seqs(dsn: str) -> list[int]:
    return [r[0] for r in query(dsn, "SELECT (other->>'seq')::int FROM moodle_events ORDER BY 1")]


@contextlib.contextmanager
def login_role(dsn: str) -> Iterator[str]:
    """A new login role with no privileges (dropped afterwards, with what it was granted); its name."""
    role = f"shipper_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        yield role
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP OWNED BY "{role}"')
            conn.execute(f'DROP ROLE "{role}"')


@dataclass
class Shipper:
    """A shipper configured for one test: its spool, state dir and config file, run as a subprocess."""

    root: Path
    dsn: str
    settings: dict[str, Any] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.spool = self.root / "spool"
        self.state = self.root / "state"
        self.spool.mkdir(exist_ok=True)
        self.state.mkdir(exist_ok=True)
        self.config = self.root / "shipper.toml"
        self.log = self.root / "shipper.log"
        self.write_config()

    def write_config(self, **changes: Any) -> None:
        settings: dict[str, Any] = {
            "source_id": "test-node",
            "spool.dir": str(self.spool), "state.dir": str(self.state), "database.dsn": self.dsn,
            "metrics.listen": "off", "buffer.flush_interval": 0.2, "spool.poll_interval": 0.1,
            "spool.rescan_interval": 0.5, "retry.initial": 0.1, "retry.max": 1.0,
            "retry.other_errors": 1.0,
        }
        settings.update(self.settings)
        settings.update(changes)
        self.settings = settings
        sections: dict[str, dict[str, Any]] = {}
        top: dict[str, Any] = {}
        for dotted, value in settings.items():
            if "." in dotted:
                section, key = dotted.split(".", 1)
                sections.setdefault(section, {})[key] = value
            else:
                top[dotted] = value
        lines = [f"{k} = {_toml(v)}" for k, v in top.items()]
        for section, values in sections.items():
            lines.append(f"[{section}]")
            lines += [f"{k} = {_toml(v)}" for k, v in values.items()]
        self.config.write_text("\n".join(lines) + "\n")

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "shipper", *args, "--config", str(self.config)]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MOODLE_SHIPPER_")}
        env["PYTHONPATH"] = str(REPO)
        return env

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(*args), capture_output=True, text=True, timeout=timeout,
                              env=self.env(), cwd=self.root)

    def catch_up(self, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run until every complete line is shipped; fail the test on a non-zero exit."""
        done = self.run("run", "--exit-when-caught-up", timeout=timeout)
        assert done.returncode == 0, done.stderr
        return done

    def start(self, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        log = open(self.log, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        self.proc = subprocess.Popen(self.command("run"), stdout=log, stderr=log, cwd=self.root,
                                     env={**self.env(), **(env or {})})
        log.close()
        return self.proc

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


@pytest.fixture
def shipper(tmp_path: Path, initdb: str) -> Iterator[Shipper]:
    s = Shipper(tmp_path, initdb)
    try:
        yield s
    finally:
        s.kill()


def wait_for(predicate: Any, timeout: float = 30, interval: float = 0.1, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
