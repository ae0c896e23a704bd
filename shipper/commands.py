"""The one-shot subcommands: init-db, check, status. Each prints for a person and returns an exit code."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from . import checkpoints
from .config import Config
from .errors import ShipperError
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


def init_db(cfg: Config, print_sql: bool = False) -> int:
    if print_sql:
        sys.stdout.write(schema.script())
        return 0
    with connect(cfg) as conn:
        report = schema.init_db(conn)
    for line in report.applied:
        print(f"applied: {line}")
    for line in report.skipped:
        print(f"skipped: {line}")
    if not report.applied:
        print(f"nothing to do: the schema is at version {report.version}")
    return 0


def check(cfg: Config) -> int:
    """Check everything ``run`` needs, print one line per check, exit 1 if any failed."""
    results: list[tuple[bool, str, str]] = [(True, "config", f"valid ({cfg.origin})")]
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
    except ShipperError as exc:
        results.append((False, "database", str(exc)))
    for ok, what, text in results:
        print(f"{'OK  ' if ok else 'FAIL'} {what:<9} {text}")
    return 0 if all(ok for ok, _, _ in results) else 1


def _privileges(conn: psycopg.Connection) -> tuple[bool, str, str]:
    needed = [("moodle_events", "INSERT"), ("shipper_checkpoints", "SELECT"),
              ("shipper_checkpoints", "INSERT"), ("shipper_checkpoints", "UPDATE"),
              ("shipper_dead_letter", "INSERT")]
    missing = [f"{priv} on {table}" for table, priv in needed
               if not conn.execute("SELECT has_table_privilege(%s, %s)", (table, priv)).fetchone()[0]]
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


def status(cfg: Config, as_json: bool = False) -> int:
    files = _spool_files(cfg)
    source = "database"
    dead: dict[str, int] = {}
    offsets: dict[str, int] = {}
    note = ""
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
    except ShipperError as exc:
        state = checkpoints.load(cfg.state.dir)
        source = "local state file"
        note = f"database unavailable ({exc}); offsets from the local state file"
        if state:
            offsets = {f["key"]: f["committed"] for f in state.get("files", []) if f.get("key")}
    for f in files:
        f["committed"] = offsets.get(f["key"], 0) if f["key"] else 0
        f["behind"] = max(0, f["size"] - f["committed"])
    total_behind = sum(f["behind"] for f in files)
    if as_json:
        json.dump({"source_id": cfg.source_id, "offsets_from": source, "note": note or None,
                   "files": files, "bytes_behind": total_behind, "dead_letters": dead},
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
    print(f"{len(files)} files, {total_behind} bytes behind")
    if dead:
        print("dead letters: " + ", ".join(f"{reason} {n}" for reason, n in dead.items()))
    else:
        print("dead letters: none")
    return 0
