"""`moodle-tsdb-shipper demo`: the whole product on one machine in a minute, with nothing to set up.

A throwaway PostgreSQL from the system's binaries, a spool of realistic events (plus two broken
lines, to show where bad input goes), the real daemon shipping them, and a summary from the database.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

import psycopg

from . import config, sample
from .daemon import Daemon
from .pgtemp import TempPostgres
from .sink import schema


def run_demo(count: int, keep: bool = False) -> int:
    work = Path(tempfile.mkdtemp(prefix="moodle-shipper-demo-"))
    work.chmod(0o755)  # as root the server runs as another user, who must reach its directory
    spool, state = work / "spool", work / "state"
    spool.mkdir()
    state.mkdir()
    print(f"starting a throwaway PostgreSQL in {work / 'pg'} ...")
    pg = TempPostgres(base=str(work / "pg"), keep=keep)
    pg.start()
    try:
        with psycopg.connect(pg.dsn(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE moodle_logs_tsdb")
        dsn = pg.dsn("moodle_logs_tsdb")
        with psycopg.connect(dsn, autocommit=True) as conn:
            report = schema.init_db(conn)
        for line in report.applied + [f"skipped: {s}" for s in report.skipped]:
            print(f"init-db: {line}")
        print(f"writing {count} sample Moodle events into {spool} ...")
        files = sample.write_spool(spool, count, per_second=count / (6 * 3600))  # six hours of a site
        with open(files[-1], "ab") as fh:  # two lines a real spool should never have
            fh.write(b'{"eventname": "\\\\core\\\\event\\\\course_viewed", "timecreated": "soon"}\n')
            fh.write(b"this is not JSON\n")
        spool_bytes = sum(f.stat().st_size for f in files)
        cfg = config.load(None, environ={}, overrides={
            "spool.dir": str(spool), "state.dir": str(state), "database.dsn": dsn,
            "metrics.listen": "off", "source_id": "demo", "spool.delete_shipped": "false"})
        cfg = dataclasses.replace(cfg, log=dataclasses.replace(cfg.log, level="warning"))
        print(f"shipping {len(files)} hourly files ({spool_bytes / 1e6:.1f} MB) ...")
        started = time.monotonic()
        Daemon(cfg, exit_when_caught_up=True).run()
        elapsed = time.monotonic() - started
        with psycopg.connect(dsn, autocommit=True) as conn:
            shipped = conn.execute("SELECT count(*) FROM moodle_events").fetchone()[0]
            dead = conn.execute("SELECT reason, count(*) FROM shipper_dead_letter GROUP BY 1 ORDER BY 1"
                                ).fetchall()
            top = conn.execute("SELECT eventname, count(*) FROM moodle_events GROUP BY 1 ORDER BY 2 DESC"
                               " LIMIT 8").fetchall()
        print()
        print(f"events written:  {count} (+2 broken lines)")
        print(f"events shipped:  {shipped} in {elapsed:.1f} s = {shipped / elapsed:,.0f} events/s "
              "(start-up included)")
        print("dead letters:    " + (", ".join(f"{n} {reason}" for reason, n in dead) or "none"))
        print("top event names:")
        for name, n in top:
            print(f"  {n:>9}  {name}")
        if keep:
            print(f"\nkept: spool and state in {work}; database {dsn}")
            print(f"stop the server with: pg_ctl -D {pg.data} stop")
        return 0 if shipped == count else 1
    finally:
        if not keep:
            pg.stop()
            shutil.rmtree(work, ignore_errors=True)
