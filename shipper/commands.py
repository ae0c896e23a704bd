"""The one-shot subcommands: init-db, check, status. Each prints for a person and returns an exit code."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from . import checkpoints
from .config import Config
from .errors import ShipperError
from .parse import Parser
from .sink import schema
from .spool.identity import fingerprint
from .spool.tail import Tailer


@contextmanager
def connect(cfg: Config) -> Iterator[psycopg.Connection]:
    """A connection, or a ShipperError naming the target (never the password) and libpq's reason."""
    try:
        conn = psycopg.connect(cfg.conninfo(), autocommit=True)
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ShipperError(f"cannot connect to the database ({cfg.redacted_dsn()}): {reason}") from None
    try:
        yield conn
    finally:
        conn.close()


def init_db(cfg: Config, print_sql: bool = False, grant_to: str | None = None) -> int:
    """Create or upgrade the schema (or print its SQL); say what was done and what was skipped, and why."""
    if print_sql:
        sys.stdout.write(schema.script(cfg.timescaledb, grant_to=grant_to))
        return 0
    with connect(cfg) as conn:
        report = schema.init_db(conn, cfg.timescaledb, grant_to=grant_to)
    print(f"mode: {report.mode}")
    for line in report.applied:
        print(f"applied: {line}")
    for line in report.skipped:
        print(f"skipped: {line}")
    if not report.applied:
        print(f"nothing to do: the schema is at version {report.version} and matches the settings")
    return 0


def stats(cfg: Config, since: str, top: int, as_json: bool = False) -> int:
    """Events per hour, top event names and top courses of the last ``since`` (see shipper/stats.py)."""
    from .config import parse_interval
    from .stats import print_stats

    try:
        seconds = parse_interval(since)
    except ValueError as exc:
        raise ShipperError(f"--since {since!r}: {exc}") from None
    if not seconds:
        raise ShipperError(f"--since {since!r}: must be a duration such as 24h or \"7 days\"")
    with connect(cfg) as conn:
        print_stats(conn, seconds, top, as_json)
    return 0


def check(cfg: Config) -> int:
    """Check everything ``run`` needs, print one line per check, exit 1 if any failed."""
    results: list[tuple[bool | None, str, str]] = [(True, "config", f"valid ({cfg.origin})")]
    tailer = Tailer(cfg.spool.dir, cfg.spool.pattern, cfg.spool.max_line_bytes, cfg.spool.read_bytes, {})
    try:
        tailer.check_directory()
        names = [n for n in os.listdir(cfg.spool.dir) if tailer.matches(n)]
        detail = f"{cfg.spool.dir} readable, {len(names)} spool files"
        if cfg.spool.delete_shipped and not os.access(cfg.spool.dir, os.W_OK | os.X_OK):
            results.append((False, "spool", f"{detail}, but not writable: shipped files cannot be "
                            "deleted (give the shipper's group write access or set "
                            "spool.delete_shipped = false)"))
        else:
            results.append((True, "spool", detail))
    except ShipperError as exc:
        results.append((False, "spool", str(exc)))
    problem = checkpoints.check_state_dir(cfg.state.dir)
    results.append((problem is None, "state", problem or f"{cfg.state.dir} writable"))
    try:
        with connect(cfg) as conn:
            version = conn.info.parameter_status("server_version")
            results.append((True, "database", f"{cfg.redacted_dsn()} reachable, PostgreSQL {version}"))
            problem = schema.check(conn)
            results.append((problem is None, "schema", problem or f"version {schema.SCHEMA_VERSION}"))
            if problem is None:
                results.append(_privileges(conn))
                usable, mode, pending = schema.describe(conn, cfg.timescaledb)
                results.append((usable, "storage", mode))
                if pending:  # the shipper runs as it is; init-db would bring the layout to the settings
                    results.append((None, "layout", "differs from the settings, init-db would apply: "
                                    + "; ".join(pending)))
    except ShipperError as exc:
        results.append((False, "database", str(exc)))
    for ok, what, text in results:
        print(f"{'WARN' if ok is None else 'OK  ' if ok else 'FAIL'} {what:<9} {text}")
    return 0 if all(ok is not False for ok, _, _ in results) else 1


def _privileges(conn: psycopg.Connection) -> tuple[bool, str, str]:
    needed = [("moodle_events", "INSERT"), ("shipper_checkpoints", "SELECT"),
              ("shipper_checkpoints", "INSERT"), ("shipper_checkpoints", "UPDATE"),
              ("shipper_dead_letter", "INSERT"), ("shipper_schema_version", "SELECT")]
    missing = [f"{priv} on {table}" for table, priv in needed
               if not conn.execute("SELECT has_table_privilege(%s, %s)", (table, priv)).fetchone()[0]]
    # A dead letter takes its id from this sequence: without USAGE the first bad line fails its batch.
    if not conn.execute("SELECT has_sequence_privilege('shipper_dead_letter_id_seq', 'USAGE')").fetchone()[0]:
        missing.append("USAGE on sequence shipper_dead_letter_id_seq")
    if missing:
        return False, "privilege", "this role lacks " + ", ".join(missing)
    return True, "privilege", "INSERT on moodle_events, read/write on the shipper tables"


def _spool_files(cfg: Config) -> list[dict[str, Any]]:
    tailer = Tailer(cfg.spool.dir, cfg.spool.pattern, cfg.spool.max_line_bytes, cfg.spool.read_bytes, {})
    tailer.check_directory()
    files = []
    for name in sorted(os.listdir(cfg.spool.dir)):
        if not tailer.matches(name):
            continue
        path = os.path.join(cfg.spool.dir, name)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            size = os.fstat(fd).st_size
            files.append({"path": path, "size": size, "key": fingerprint(fd, size)})
        finally:
            os.close(fd)
    return files


def _oldest_unshipped(files: list[dict[str, Any]], max_line_bytes: int) -> float | None:
    """Event time (Unix seconds) of the oldest first uncommitted line among the files, if any.

    The spool is written in time order, so a file's first uncommitted line is its oldest waiting
    event; parsed as the daemon parses it, so this is the lag in seconds the daemon would report.
    """
    parser = Parser()
    oldest: float | None = None
    for f in files:
        if f["behind"] <= 0:
            continue
        try:
            with open(f["path"], "rb") as fh:
                fh.seek(f["committed"])
                raw = fh.readline(max_line_bytes + 1)
        except OSError:
            continue
        if not raw.endswith(b"\n"):
            continue  # incomplete (not shipped until its newline arrives) or over-long
        seconds = parser.parse([raw[:-1]], [f["committed"]]).oldest
        if seconds is not None and (oldest is None or seconds < oldest):
            oldest = seconds
    return oldest


def _age(seconds: float) -> str:
    """A duration for people: "45 s", "12 min", "3.5 h", "2.0 days"."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _utc(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def status(cfg: Config, as_json: bool = False) -> int:
    """Files, offsets, lag and dead letters: from the database, or the state file when it is down."""
    files = _spool_files(cfg)
    source = "database"
    dead: dict[str, int] = {}
    offsets: dict[str, int] = {}
    last_commit: float | None = None
    note = ""
    state = checkpoints.load(cfg.state.dir)
    try:
        with connect(cfg) as conn:
            problem = schema.check(conn)
            if problem:
                raise ShipperError(problem)
            offsets = {k: int(o) for k, o in conn.execute(
                "SELECT file_key, byte_offset FROM shipper_checkpoints WHERE source_id = %s",
                (cfg.source_id,)).fetchall()}
            dead = {r: int(n) for r, n in conn.execute(
                "SELECT reason, count(*) FROM shipper_dead_letter WHERE source_id = %s GROUP BY reason"
                " ORDER BY reason", (cfg.source_id,)).fetchall()}
            row = conn.execute("SELECT extract(epoch FROM max(updated_at))::float8 FROM shipper_checkpoints"
                               " WHERE source_id = %s", (cfg.source_id,)).fetchone()
            last_commit = row[0] if row else None
    except ShipperError as exc:
        source = "local state file"
        note = f"database unavailable ({exc}); offsets from the local state file"
        if state:
            offsets = {f["key"]: f["committed"] for f in state.get("files", []) if f.get("key")}
            last_commit = state.get("last_commit_at")
    for f in files:
        f["committed"] = offsets.get(f["key"], 0) if f["key"] else 0
        f["behind"] = max(0, f["size"] - f["committed"])
    total_behind = sum(f["behind"] for f in files)
    now = time.time()
    oldest = _oldest_unshipped(files, cfg.spool.max_line_bytes)
    lag_seconds = max(0.0, now - oldest) if oldest is not None else 0.0
    # What the running shipper last wrote: its own view of its last error (it may be retrying now).
    daemon = None
    if state:
        daemon = {"state_written_at": state.get("written_at"), "last_error": state.get("last_error"),
                  "shipped_since_start": state.get("shipped")}
    if as_json:
        json.dump({"source_id": cfg.source_id, "offsets_from": source, "note": note or None,
                   "files": files, "bytes_behind": total_behind, "lag_seconds": round(lag_seconds, 3),
                   "last_commit": _utc(last_commit) if last_commit else None,
                   "last_commit_age_seconds": round(now - last_commit, 3) if last_commit else None,
                   "dead_letters": dead, "shipper": daemon},
                  sys.stdout, indent=1)
        print()
        return 0
    print(f"source_id {cfg.source_id}; spool {cfg.spool.dir}; offsets from the {source}")
    if note:
        print(f"note: {note}")
    width = max([len(f["path"]) for f in files] + [4])
    print(f"{'PATH':<{width}}  {'SIZE':>12}  {'COMMITTED':>12}  {'BEHIND':>12}")
    for f in files:
        print(f"{f['path']:<{width}}  {f['size']:>12}  {f['committed']:>12}  {f['behind']:>12}")
    behind = f"{len(files)} files, {total_behind} bytes behind"
    if oldest is not None:
        behind += f"; the oldest unshipped event is {_age(lag_seconds)} old ({_utc(oldest)})"
    print(behind)
    if last_commit:
        print(f"last commit: {_utc(last_commit)} ({_age(now - last_commit)} ago)")
    else:
        print("last commit: none yet")
    if daemon and daemon["last_error"]:
        written = daemon["state_written_at"]
        when = f", {_age(now - written)} ago" if written else ""
        print(f"shipper's last error (state file{when}): {daemon['last_error']}")
    if dead:
        print("dead letters: " + ", ".join(f"{reason} {n}" for reason, n in dead.items()))
    else:
        print("dead letters: none")
    return 0
