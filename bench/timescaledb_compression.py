#!/usr/bin/env python3
"""TimescaleDB figures for bench/TIMESCALEDB.md: compression ratio per segment-by/order-by layout, and the
time of the seed's two queries from the raw hypertable and from the continuous aggregates.

Needs a PostgreSQL server with the timescaledb extension preloaded (pass its DSN); it creates and drops
its own database there. The events come from shipper.sample (the demo's Moodle mix: ~60% views, quiz,
assignment and forum activity, logins, ``other`` mostly null or small with some kilobyte forum texts),
spread evenly over ``--days`` and written with COPY rows made by the shipper's own parser.

    .venv/bin/python bench/timescaledb_compression.py --dsn postgresql://postgres@HOST:PORT/postgres

Each query runs ``--repeat`` times after one warm-up; the median is reported (the data fits in RAM
here, so these are warm-cache figures). Results are printed as Markdown and written as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import psycopg
import psycopg.conninfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shipper import sample
from shipper.config import TimescaleConfig
from shipper.parse import COLUMNS, Parser
from shipper.sink import schema

# name -> (segment by, order by, sparse indexes: None lets TimescaleDB derive them from the btree indexes)
LAYOUTS: dict[str, tuple[str, str, str | None]] = {
    "seed": ("eventname, component", "time DESC", None),
    "eventname": ("eventname", "time DESC", None),
    "eventname/courseid": ("eventname", "courseid, time DESC", None),
    "eventname/courseid+userid": ("eventname", "courseid, userid, time DESC", None),
    "eventname/userid": ("eventname", "userid, time DESC", None),
    "component/eventname+courseid": ("component", "eventname, courseid, time DESC", None),
    "none/eventname+courseid": ("", "eventname, courseid, time DESC", None),
    "courseid": ("courseid", "time DESC", None),
    "seed, bloom(userid)": ("eventname, component", "time DESC", "bloom(userid)"),
    "eventname/courseid, bloom(userid)": ("eventname", "courseid, time DESC", "bloom(userid)"),
}

QUERIES: dict[str, str] = {
    "last 24 h, count (raw)":
        "SELECT count(*) FROM moodle_events WHERE time > now() - INTERVAL '24 hours'",
    "last 24 h, count (events_by_hour)":
        "SELECT sum(events) FROM events_by_hour WHERE bucket > now() - INTERVAL '24 hours'",
    "hourly over 7 days (raw)":
        "SELECT time_bucket(INTERVAL '1 hour', time) AS hour, count(*) FROM moodle_events"
        " WHERE time > now() - INTERVAL '7 days' GROUP BY 1 ORDER BY 1",
    "hourly over 7 days (events_by_hour)":
        "SELECT bucket, sum(events) FROM events_by_hour WHERE bucket > now() - INTERVAL '7 days'"
        " GROUP BY 1 ORDER BY 1",
    "hourly per event name over 7 days (raw)":
        "SELECT time_bucket(INTERVAL '1 hour', time) AS hour, eventname, count(*) FROM moodle_events"
        " WHERE time > now() - INTERVAL '7 days' GROUP BY 1, 2",
    "hourly per event name over 7 days (events_by_hour)":
        "SELECT bucket, eventname, events FROM events_by_hour WHERE bucket > now() - INTERVAL '7 days'",
}
COURSE_QUERIES: dict[str, str] = {
    "one course, 30 days: events and users (raw)":
        "SELECT count(*), count(DISTINCT userid) FROM moodle_events"
        " WHERE courseid = %(course)s AND time > now() - INTERVAL '30 days'",
    "one course, 30 days: events per day (events_by_day_course)":
        "SELECT day, sum(events) FROM events_by_day_course"
        " WHERE courseid = %(course)s AND day > now() - INTERVAL '30 days' GROUP BY 1",
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load(conn: psycopg.Connection, count: int, days: int, users: int, courses: int) -> float:
    """COPY ``count`` sample events spread over the last ``days`` days; return rows per second."""
    span = days * 86400
    parser = Parser()
    columns = ", ".join(COLUMNS)
    started = time.monotonic()
    events = sample.events(count, seed=7, start=time.time() - span, per_second=count / span,
                           users=users, courses=courses)
    done = 0
    while done < count:
        n = min(50_000, count - done)
        lines = [orjson.dumps(next(events)) for _ in range(n)]
        parsed = parser.parse(lines, list(range(n)))
        with conn.transaction(), conn.cursor().copy(f"COPY moodle_events ({columns}) FROM STDIN") as copy:
            for i in range(0, len(parsed.rows), 200):
                copy.write(b"".join(parsed.rows[i:i + 200]))
        done += n
        if done % 1_000_000 == 0:
            log(f"loaded {done} events ({done / (time.monotonic() - started):.0f}/s)")
    return count / (time.monotonic() - started)


def timed(conn: psycopg.Connection, sql: str, params: dict[str, Any] | None, repeat: int) -> float:
    """Median milliseconds of ``repeat`` runs after one warm-up."""
    conn.execute(sql, params).fetchall()
    runs = []
    for _ in range(repeat):
        t = time.perf_counter()
        conn.execute(sql, params).fetchall()
        runs.append((time.perf_counter() - t) * 1000)
    return statistics.median(runs)


def run_queries(conn: psycopg.Connection, course: int, repeat: int) -> dict[str, float]:
    out = {name: timed(conn, sql, None, repeat) for name, sql in QUERIES.items()}
    out.update({name: timed(conn, sql, {"course": course}, repeat) for name, sql in COURSE_QUERIES.items()})
    return out


def sizes(conn: psycopg.Connection) -> dict[str, int]:
    row = conn.execute(
        "SELECT sum(before_compression_table_bytes + before_compression_toast_bytes),"
        " sum(before_compression_index_bytes), sum(before_compression_total_bytes),"
        " sum(after_compression_table_bytes + after_compression_toast_bytes),"
        " sum(after_compression_index_bytes), sum(after_compression_total_bytes)"
        " FROM chunk_compression_stats('moodle_events') WHERE compression_status = 'Compressed'"
    ).fetchone()
    assert row is not None
    keys = ("before_data", "before_index", "before_total", "after_data", "after_index", "after_total")
    return {k: int(v or 0) for k, v in zip(keys, row, strict=True)}


def chunks(conn: psycopg.Connection, compressed: bool | None = None, older_than_days: int | None = None
           ) -> list[str]:
    sql = ("SELECT format('%I.%I', chunk_schema, chunk_name) FROM timescaledb_information.chunks"
           " WHERE hypertable_name = 'moodle_events'")
    if compressed is not None:
        sql += f" AND is_compressed = {'true' if compressed else 'false'}"
    if older_than_days is not None:
        sql += f" AND range_end < now() - INTERVAL '{older_than_days} days'"
    return [r[0] for r in conn.execute(sql + " ORDER BY range_start").fetchall()]


def column_bytes(conn: psycopg.Connection) -> dict[str, int]:
    """Bytes per column of the compressed chunks (compressed data and sparse-index metadata)."""
    tables = [r[0] for r in conn.execute(
        "SELECT format('%I.%I', c.schema_name, c.table_name) FROM _timescaledb_catalog.chunk ch"
        " JOIN _timescaledb_catalog.chunk c ON c.id = ch.compressed_chunk_id"
        " JOIN _timescaledb_catalog.hypertable h ON h.id = ch.hypertable_id"
        " WHERE h.table_name = 'moodle_events'").fetchall()]
    totals: dict[str, int] = {}
    for table in tables:
        cols = [r[0] for r in conn.execute("SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass"
                                           " AND attnum > 0 AND NOT attisdropped", (table,)).fetchall()]
        row = conn.execute("SELECT " + ", ".join(f'coalesce(sum(pg_column_size("{c}")), 0)' for c in cols)
                           + f" FROM {table}").fetchone()
        assert row is not None
        for c, n in zip(cols, row, strict=True):
            totals[c] = totals.get(c, 0) + int(n)
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def set_layout(conn: psycopg.Connection, segmentby: str, orderby: str, sparse: str | None) -> None:
    for chunk in chunks(conn, compressed=True):
        conn.execute("SELECT decompress_chunk(%s::regclass)", (chunk,))
    conn.execute(f"ALTER TABLE moodle_events SET (timescaledb.compress, timescaledb.compress_segmentby ="
                 f" '{segmentby}', timescaledb.compress_orderby = '{orderby}')")
    if sparse is None:
        conn.execute("ALTER TABLE moodle_events RESET (timescaledb.compress_index)")
    else:
        conn.execute(f"ALTER TABLE moodle_events SET (timescaledb.compress_index = '{sparse}')")


def compress(conn: psycopg.Connection, older_than_days: int | None = None) -> float:
    started = time.monotonic()
    for chunk in chunks(conn, compressed=False, older_than_days=older_than_days):
        conn.execute("SELECT compress_chunk(%s::regclass)", (chunk,))
    return time.monotonic() - started


def mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dsn", required=True, help="a TimescaleDB server (any database on it)")
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--courses", type=int, default=1_500)
    ap.add_argument("--layouts", default=";".join(LAYOUTS), help="names of LAYOUTS separated by ';'")
    ap.add_argument("--chosen", default="eventname/courseid, bloom(userid)",
                    help="layout for the production-like run")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--database", default="bench_timescaledb")
    ap.add_argument("--reuse", action="store_true", help="keep the loaded database from a previous run")
    ap.add_argument("--keep", action="store_true", help="do not drop the database at the end")
    ap.add_argument("--json", default="bench/timescaledb_results.json")
    ap.add_argument("--upgrade", type=int, metavar="N", help="instead: time init-db converting a version-1 "
                    "plain table of N events into a hypertable (migrate_data)")
    args = ap.parse_args()
    if args.upgrade:
        return measure_upgrade(args)

    results: dict[str, Any] = {"events": args.events, "days": args.days, "users": args.users,
                               "courses": args.courses, "layouts": {}}
    dsn = psycopg.conninfo.make_conninfo(args.dsn, dbname=args.database)
    if not args.reuse:
        with psycopg.connect(args.dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{args.database}"')
    with psycopg.connect(dsn, autocommit=True) as conn:
        results["server"] = conn.execute("SELECT version()").fetchone()[0]  # type: ignore[index]
        results["timescaledb"] = conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
        if not args.reuse:
            report = schema.init_db(conn, TimescaleConfig())
            log(f"init-db: {report.mode}, {len(report.applied)} steps")
            results["timescaledb"] = conn.execute(
                "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()[0]  # type: ignore[index]
            # The benchmark drives compression and refreshes itself: no background job may interfere.
            conn.execute("SELECT alter_job(job_id, scheduled => false) FROM timescaledb_information.jobs"
                         " WHERE hypertable_name IN ('moodle_events', 'events_by_hour',"
                         " 'events_by_day_course')")
            log(f"loading {args.events} events over {args.days} days")
            results["load_rows_per_s"] = load(conn, args.events, args.days, args.users, args.courses)
            log(f"loaded at {results['load_rows_per_s']:.0f} rows/s")
        conn.execute("VACUUM ANALYZE moodle_events")
        results["rows"] = conn.execute("SELECT count(*) FROM moodle_events").fetchone()[0]  # type: ignore[index]
        results["uncompressed_bytes"] = conn.execute(
            "SELECT hypertable_size('moodle_events')").fetchone()[0]  # type: ignore[index]
        # The baseline of every ratio: the chunks as loaded (a decompressed chunk's indexes differ).
        row = conn.execute("SELECT sum(table_bytes + toast_bytes), sum(index_bytes), sum(total_bytes)"
                           " FROM chunks_detailed_size('moodle_events')").fetchone()
        assert row is not None
        results["baseline"] = {"data": int(row[0]), "index": int(row[1]), "total": int(row[2])}
        results["mix"] = conn.execute(
            "SELECT avg((action = 'viewed')::int), avg((eventname LIKE '%%course_viewed'"
            " OR eventname LIKE '%%course_module_viewed')::int), avg((other IS NULL)::int),"
            " avg((pg_column_size(other) > 1024)::int), avg(pg_column_size(other)),"
            " count(DISTINCT eventname), count(DISTINCT courseid), count(DISTINCT userid)"
            " FROM moodle_events").fetchone()
        for name in ("events_by_hour", "events_by_day_course"):
            t = time.monotonic()
            conn.execute(f"CALL refresh_continuous_aggregate('{name}', NULL, NULL)")
            results[f"refresh_{name}_s"] = time.monotonic() - t
            log(f"refreshed {name} in {results[f'refresh_{name}_s']:.1f} s")
        course = conn.execute("SELECT courseid FROM moodle_events WHERE time > now() - INTERVAL '1 day'"
                              " AND courseid > 0 GROUP BY 1 ORDER BY count(*) DESC OFFSET 5 LIMIT 1"
                              ).fetchone()[0]  # type: ignore[index]
        results["course"] = course
        log("queries, nothing compressed")
        results["queries_uncompressed"] = run_queries(conn, course, args.repeat)

        # As in production, before any chunk was compressed and decompressed again (a decompressed
        # chunk's rows are no longer in time order): chunks older than compress_after (7 days) compressed.
        set_layout(conn, *LAYOUTS[args.chosen])
        compress(conn, older_than_days=7)
        conn.execute("ANALYZE moodle_events")
        results["chosen"] = args.chosen
        results["production_bytes"] = conn.execute(
            "SELECT hypertable_size('moodle_events')").fetchone()[0]  # type: ignore[index]
        log("queries, chunks older than 7 days compressed")
        results["queries_policy_state"] = run_queries(conn, course, args.repeat)
        results["compressed_columns"] = column_bytes(conn)

        for name in args.layouts.split(";"):
            segmentby, orderby, sparse = LAYOUTS[name]
            set_layout(conn, segmentby, orderby, sparse)
            seconds = compress(conn)
            conn.execute("ANALYZE moodle_events")
            entry: dict[str, Any] = {"segmentby": segmentby, "orderby": orderby, "sparse": sparse,
                                     "compress_s": seconds}
            entry.update(sizes(conn))
            base = results["baseline"]
            entry["before_data"], entry["before_total"] = base["data"], base["total"]
            entry["ratio_total"] = base["total"] / entry["after_total"]
            entry["ratio_data"] = base["data"] / entry["after_data"]
            entry["segments"] = conn.execute(
                "SELECT count(*) FROM (SELECT DISTINCT " + (segmentby or "1") + " FROM moodle_events) s"
            ).fetchone()[0] if segmentby else 1  # type: ignore[index]
            entry["queries_all_compressed"] = {
                q: timed(conn, sql, {"course": course}, args.repeat) for q, sql in {
                    **COURSE_QUERIES, "hourly over 7 days (raw)": QUERIES["hourly over 7 days (raw)"],
                    "last 24 h, count (raw)": QUERIES["last 24 h, count (raw)"]}.items()
                if "raw" in q}
            results["layouts"][name] = entry
            log(f"{name}: {entry['ratio_total']:.2f}x total, {entry['ratio_data']:.2f}x data, "
                f"compressed in {seconds:.0f} s")

        results["aggregate_bytes"] = {
            name: conn.execute(f"SELECT hypertable_size(format('%I.%I', materialization_hypertable_schema,"
                               f" materialization_hypertable_name)::regclass) FROM"
                               f" timescaledb_information.continuous_aggregates WHERE view_name = '{name}'"
                               ).fetchone()[0]  # type: ignore[index]
            for name in ("events_by_hour", "events_by_day_course")}

    Path(args.json).write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(render(results))
    if not args.keep:
        with psycopg.connect(args.dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')
    return 0


def measure_upgrade(args: argparse.Namespace) -> int:
    """Time the upgrade of a database built by the previous release (schema version 1, plain table)."""
    name = args.database + "_upgrade"
    with psycopg.connect(args.dsn, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    dsn = psycopg.conninfo.make_conninfo(args.dsn, dbname=name)
    v1 = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "schema_v1.sql"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(v1.read_text())
        rate = load(conn, args.upgrade, args.days, args.users, args.courses)
        size = conn.execute("SELECT pg_total_relation_size('moodle_events')").fetchone()[0]  # type: ignore[index]
        started = time.monotonic()
        report = schema.init_db(conn, TimescaleConfig())
        seconds = time.monotonic() - started
    print(f"version-1 table of {args.upgrade:,} events ({mib(size)}, loaded at {rate:,.0f} rows/s) "
          f"converted by init-db in {seconds:.1f} s:")
    for line in report.applied:
        print(f"  applied: {line}")
    if not args.keep:
        with psycopg.connect(args.dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return 0


def render(r: dict[str, Any]) -> str:
    out = [f"{r['rows']:,} events over {r['days']} days, {r['users']:,} users, {r['courses']:,} courses; "
           f"TimescaleDB {r['timescaledb']}; uncompressed hypertable {mib(r['uncompressed_bytes'])}", ""]
    m = r["mix"]
    out += [f"mix: {m[0]:.0%} action 'viewed' ({m[1]:.0%} course or module views), other NULL in {m[2]:.0%},"
            f" over 1 KiB in {m[3]:.1%}; {m[5]} event names, {m[6]} courses, {m[7]} users seen", ""]
    if "load_rows_per_s" in r:
        out += [f"load (generate + parse + COPY, one stream): {r['load_rows_per_s']:,.0f} rows/s", ""]
    out += ["| layout (segment by / order by / sparse indexes) | segments | data before -> after |"
            " total before -> after | ratio (data) | ratio (total) | compress time |",
            "|---|---|---|---|---|---|---|"]
    for name, e in r["layouts"].items():
        sparse = f" / `{e['sparse']}`" if e["sparse"] else " / (derived)"
        out.append(f"| {name}: `{e['segmentby'] or '-'}` / `{e['orderby']}`{sparse} | {e['segments']} | "
                   f"{mib(e['before_data'])} -> {mib(e['after_data'])} | {mib(e['before_total'])} -> "
                   f"{mib(e['after_total'])} | {e['ratio_data']:.1f}x | {e['ratio_total']:.1f}x | "
                   f"{e['compress_s']:.0f} s |")
    out += ["", "| query | nothing compressed | older than 7 days compressed (" + r["chosen"] + ") |",
            "|---|---|---|"]
    for q, ms in r["queries_uncompressed"].items():
        out.append(f"| {q} | {ms:.1f} ms | {r['queries_policy_state'][q]:.1f} ms |")
    out += ["", "| query, everything compressed | " + " | ".join(r["layouts"]) + " |",
            "|---|" + "---|" * len(r["layouts"])]
    first = next(iter(r["layouts"].values()))
    for q in first["queries_all_compressed"]:
        out.append(f"| {q} | " + " | ".join(f"{e['queries_all_compressed'][q]:.1f} ms"
                                              for e in r["layouts"].values()) + " |")
    agg = r["aggregate_bytes"]
    out += ["", "continuous aggregates, refresh of everything: events_by_hour "
            f"{r['refresh_events_by_hour_s']:.1f} s ({mib(agg['events_by_hour'])}), events_by_day_course "
            f"{r['refresh_events_by_day_course_s']:.1f} s ({mib(agg['events_by_day_course'])})",
            f"hypertable with chunks older than 7 days compressed: {mib(r['production_bytes'])}"]
    cols = r["compressed_columns"]
    total = sum(cols.values()) or 1
    out += ["", f"where the compressed bytes go ({r['chosen']}, chunks older than 7 days): "
            + ", ".join(f"{c} {n / total:.0%}" for c, n in list(cols.items())[:10])]
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
