"""init-db on TimescaleDB: exactly the configured objects, idempotent, policies updated in place, an
older database upgraded, jobs that do their work, and a shipper writing while old chunks are compressed.

Needs a server with timescaledb available and preloaded: SHIPPER_TEST_DSN=postgresql://... naming one.
Without it every test here is skipped with that reason (CI tests the plain-PostgreSQL path).

Policies are created with their first run an hour away (tsdb.FIRST_RUN_DELAY), so the background
scheduler never races these tests: they run the jobs themselves with CALL run_job.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import psycopg.conninfo
import pytest
from test_schema import build_version_1, connect, copy_events, init_db_twice_at_once

from conftest import Server, Shipper, append, count_rows, event, line, login_role, query, seqs, wait_for
from shipper.config import TimescaleConfig
from shipper.sink import schema, tsdb
from shipper.stats import collect

pytestmark = pytest.mark.timescaledb
DEFAULTS = TimescaleConfig()


@pytest.fixture(scope="session")
def timescale_server(pg_server: Server) -> Server:
    if not pg_server.has_timescaledb():
        pytest.skip("needs a PostgreSQL server with the timescaledb extension available and preloaded: "
                    "set SHIPPER_TEST_DSN to one (the suite's own server has no TimescaleDB)")
    return pg_server


@pytest.fixture
def tdb(timescale_server: Server, db: str) -> str:
    """A new, empty database on the TimescaleDB server."""
    return db


@pytest.fixture
def tinit(tdb: str) -> str:
    """A new database after init-db with the default settings."""
    with connect(tdb) as conn:
        schema.init_db(conn, DEFAULTS)
    return tdb


def jobs(dsn: str) -> list[tuple[Any, ...]]:
    """The shipper's policy jobs: (name, proc, schedule, config without ids, id, next_start)."""
    return query(dsn, "SELECT hypertable_name, proc_name, schedule_interval::text,"
                      " config - 'hypertable_id' - 'mat_hypertable_id', job_id, next_start"
                      " FROM timescaledb_information.jobs WHERE hypertable_name IS NOT NULL ORDER BY 1, 2")


def job_id(dsn: str, name: str, proc: str) -> int:
    return next(j[4] for j in jobs(dsn) if j[0] == name and j[1] == proc)


def layout(dsn: str) -> dict[str, Any]:
    """Everything TimescaleDB's information views show about the shipper's objects."""
    return {
        "hypertables": query(dsn, "SELECT hypertable_schema, hypertable_name, compression_enabled"
                                  " FROM timescaledb_information.hypertables"),
        "dimensions": query(dsn, "SELECT column_name, time_interval::text"
                                 " FROM timescaledb_information.dimensions"
                                 " WHERE hypertable_name = 'moodle_events'"),
        "compression": query(dsn, "SELECT attname, segmentby_column_index, orderby_column_index, orderby_asc"
                                  " FROM timescaledb_information.compression_settings"
                                  " WHERE hypertable_name = 'moodle_events' ORDER BY 1"),
        "sparse_index": query(dsn, "SELECT to_jsonb(s)->'index' FROM"
                                   " timescaledb_information.hypertable_compression_settings s"
                                   " WHERE hypertable = 'moodle_events'::regclass"),
        "aggregates": query(dsn, "SELECT view_name, materialized_only"
                                 " FROM timescaledb_information.continuous_aggregates ORDER BY 1"),
        "jobs": jobs(dsn),
        "indexes": sorted(r[0] for r in query(dsn, "SELECT indexname FROM pg_indexes"
                                                   " WHERE tablename = 'moodle_events'")),
    }


def materialized(dsn: str, view: str) -> int:
    """Events in the aggregate's materialisation only (not the real-time part read from moodle_events)."""
    schema_name, table = query(dsn, "SELECT materialization_hypertable_schema,"
                                    " materialization_hypertable_name FROM"
                                    " timescaledb_information.continuous_aggregates WHERE view_name = %s",
                               (view,))[0]
    return int(query(dsn, f'SELECT coalesce(sum(events), 0) FROM "{schema_name}"."{table}"')[0][0])


def at(i: int, t: float, **fields: Any) -> dict[str, Any]:
    """Event ``i`` (other.seq = i) at Unix time ``t``."""
    return event(i, timecreated=int(t), timecreated_us=int(t * 1_000_000), **fields)


def test_init_db_creates_exactly_the_configured_objects(tdb: str) -> None:
    with connect(tdb) as conn:
        report = schema.init_db(conn, DEFAULTS)
        version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
                               ).fetchone()[0]  # type: ignore[index]
    assert report.mode == f"TimescaleDB {version}" and report.skipped == []
    assert report.applied[0] == f"timescaledb extension {version} created in this database"
    got = layout(tdb)
    assert got["hypertables"] == [("public", "moodle_events", True)]
    assert got["dimensions"] == [("time", "1 day")]
    segment = {name: i + 1 for i, name in enumerate(tsdb.SEGMENT_BY)}
    order = {name: (i + 1, asc) for i, (name, asc) in enumerate(tsdb.ORDER_BY)}
    assert got["compression"] == sorted([(n, i, None, None) for n, i in segment.items()]
                                        + [(n, None, i, asc) for n, (i, asc) in order.items()])
    configured = [e for e in got["sparse_index"][0][0] if e["source"] == "config"]
    assert configured == [{"type": "bloom", "column": "userid", "source": "config"}]
    assert got["aggregates"] == [("events_by_day_course", False), ("events_by_hour", False)]
    assert [j[:4] for j in got["jobs"]] == [
        ("events_by_day_course", "policy_refresh_continuous_aggregate", "00:30:00",
         {"start_offset": "365 days", "end_offset": "01:00:00"}),
        ("events_by_hour", "policy_refresh_continuous_aggregate", "00:30:00",
         {"start_offset": "365 days", "end_offset": "01:00:00"}),
        ("moodle_events", "policy_compression", "12:00:00", {"compress_after": "7 days"}),
        ("moodle_events", "policy_retention", "1 day", {"drop_after": "365 days"}),
    ]
    # no job is due before an hour from now: the scheduler stays out of the tests' way
    assert all(j[5] > query(tdb, "SELECT now() + INTERVAL '55 minutes'")[0][0] for j in got["jobs"])
    # the four indexes of plain PostgreSQL and no default one of create_hypertable
    assert got["indexes"] == sorted(name for name, _ in schema.EVENT_INDEXES)
    with connect(tdb) as conn:
        usable, text, pending = schema.describe(conn, DEFAULTS)
    assert usable and pending == []
    assert text.startswith(f"TimescaleDB {version}; hypertable, chunks of 1 day (0 chunks, 0 compressed); "
                           "compression after 7 days; retention 365 days; continuous aggregates")


def test_init_db_again_changes_nothing(tinit: str) -> None:
    before = layout(tinit)
    with connect(tinit) as conn:
        report = schema.init_db(conn, DEFAULTS)
    assert report.applied == [] and report.skipped == []
    assert layout(tinit) == before  # same job ids, configs and next runs


def test_changed_settings_update_the_policies_in_place(tinit: str) -> None:
    ids = {(j[0], j[1]): j[4] for j in jobs(tinit)}
    changed = TimescaleConfig(chunk_interval="2 days", compress_after="14 days", retain_for="180 days",
                              aggregate_refresh="1 hour")
    with connect(tinit) as conn:
        report = schema.init_db(conn, changed)
        assert len(report.applied) == 5, report.applied
        assert schema.describe(conn, changed)[2] == []
    got = layout(tinit)
    assert got["dimensions"] == [("time", "2 days")]
    assert {(j[0], j[1]): j[4] for j in got["jobs"]} == ids  # altered, not replaced
    assert [j[2:4] for j in got["jobs"]] == [
        ("01:00:00", {"start_offset": "180 days", "end_offset": "1 hour"}),  # as alter_job got it
        ("01:00:00", {"start_offset": "180 days", "end_offset": "1 hour"}),
        ("12:00:00", {"compress_after": "14 days"}),
        ("1 day", {"drop_after": "180 days"}),
    ]
    # a new schedule does not make a job due at once (alter_job would set next_start to -infinity)
    assert all(j[5] > query(tinit, "SELECT now() + INTERVAL '55 minutes'")[0][0] for j in got["jobs"])

    off = TimescaleConfig(compress_after="off", aggregate_refresh="off", retain_for="180 days",
                          chunk_interval="2 days")
    with connect(tinit) as conn:
        report = schema.init_db(conn, off)
    assert report.applied == [
        "compression policy removed (was 14 days; the setting is off)",
        "refresh policy of events_by_hour removed (the setting is off; queries still see new events "
        "through real-time aggregation, more slowly)",
        "refresh policy of events_by_day_course removed (the setting is off; queries still see new events "
        "through real-time aggregation, more slowly)",
    ]
    assert len(report.skipped) == 2
    assert [(j[0], j[1]) for j in jobs(tinit)] == [("moodle_events", "policy_retention")]
    assert len(layout(tinit)["aggregates"]) == 2  # the aggregates stay; only their policy went

    with connect(tinit) as conn:
        schema.init_db(conn, DEFAULTS)
        assert schema.init_db(conn, DEFAULTS).applied == []
    assert [j[:4] for j in jobs(tinit)] == [j[:4] for j in layout(tinit)["jobs"]]
    assert len(jobs(tinit)) == 4


def test_a_version_1_database_becomes_a_hypertable_with_its_rows(tdb: str) -> None:
    build_version_1(tdb)
    now = time.time()
    copy_events(tdb, [now - 3600 * 4 * i for i in range(60)])  # ten days, every four hours
    with connect(tdb) as conn:
        report = schema.init_db(conn, DEFAULTS)
    assert report.applied[0].startswith("timescaledb extension ")
    assert ("hypertable: moodle_events partitioned on time, chunks of 1 day (its rows were moved into "
            "chunks, the table locked meanwhile)") in report.applied
    assert not any(a.startswith("schema version") for a in report.applied)
    assert count_rows(tdb) == 60
    assert query(tdb, "SELECT count(*) FROM show_chunks('moodle_events')")[0][0] >= 10
    assert query(tdb, "SELECT count(*) FROM ONLY moodle_events")[0][0] == 0  # all moved into chunks
    assert layout(tdb)["indexes"] == sorted(name for name, _ in schema.EVENT_INDEXES)
    with connect(tdb) as conn:
        conn.execute("CALL refresh_continuous_aggregate('events_by_hour', NULL, NULL)")
    assert materialized(tdb, "events_by_hour") == 60


def test_two_init_db_at_once_on_timescaledb(tdb: str) -> None:
    reports = init_db_twice_at_once(tdb, DEFAULTS, timeout=120)
    assert sorted(len(r.applied) for r in reports)[0] == 0
    got = layout(tdb)
    assert len(got["jobs"]) == 4 and len(got["aggregates"]) == 2 and len(got["hypertables"]) == 1


def test_shipped_rows_reach_the_aggregates_after_a_refresh(tinit: str, tmp_path: Path) -> None:
    shipper = Shipper(tmp_path, tinit)
    midnight = (int(time.time()) // 86400) * 86400
    start = midnight - 6 * 3600  # yesterday (UTC), so every bucket is complete and over an hour old
    append(shipper.spool / "a.jsonl", *(line(at(i, start + 10 * i, courseid=2 + i % 3, userid=10 + i % 7))
                                         for i in range(600)))
    shipper.catch_up()
    assert materialized(tinit, "events_by_hour") == 0
    with connect(tinit) as conn:
        refresh = job_id(tinit, "events_by_hour", "policy_refresh_continuous_aggregate")
        conn.execute(f"CALL run_job({refresh})")
        conn.execute("CALL refresh_continuous_aggregate('events_by_day_course', NULL, NULL)")
    assert materialized(tinit, "events_by_hour") == 600
    assert materialized(tinit, "events_by_day_course") == 600
    assert query(tinit, "SELECT courseid, events, users FROM events_by_day_course ORDER BY 1") == [
        (2, 200, 7), (3, 200, 7), (4, 200, 7)]
    with connect(tinit) as conn:
        week = collect(conn, 7 * 86400)
    assert week.total == 600 and week.sources == {
        "per_period": "events_by_hour", "top_events": "events_by_hour", "top_courses": "events_by_day_course"}
    assert week.top_courses == [(2, 200), (3, 200), (4, 200)]


def test_compress_an_old_chunk_while_the_shipper_writes(tinit: str, tmp_path: Path) -> None:
    shipper = Shipper(tmp_path, tinit)
    old = time.time() - 10 * 86400
    append(shipper.spool / "old.jsonl", *(line(at(i, old + i)) for i in range(200)))
    shipper.start()
    wait_for(lambda: count_rows(tinit) == 200, what="the old events")
    stop = threading.Event()
    written: list[int] = []

    def write_new() -> None:
        i = 1000
        while not stop.is_set():
            append(shipper.spool / "new.jsonl", *(line(at(n, time.time())) for n in range(i, i + 50)))
            written.extend(range(i, i + 50))
            i += 50
            time.sleep(0.05)

    writer = threading.Thread(target=write_new)
    writer.start()
    try:
        wait_for(lambda: count_rows(tinit) > 400, what="new events arriving")
        with connect(tinit) as conn:
            compressed = [r[0] for r in conn.execute(
                "SELECT compress_chunk(c)"
                " FROM show_chunks('moodle_events', older_than => INTERVAL '7 days') c").fetchall()]
        assert len(compressed) >= 1
        # a late event for the compressed range goes into the compressed chunk
        append(shipper.spool / "old.jsonl", *(line(at(i, old + i)) for i in range(200, 250)))
        time.sleep(1)
    finally:
        stop.set()
        writer.join(30)
    expected = list(range(250)) + written
    wait_for(lambda: count_rows(tinit) == len(expected), what="every event")
    assert shipper.stop() == 0
    assert seqs(tinit) == sorted(expected)
    assert count_rows(tinit, "shipper_dead_letter") == 0
    assert query(tinit, "SELECT bool_and(is_compressed) FROM timescaledb_information.chunks"
                        " WHERE range_end < now() - INTERVAL '7 days'") == [(True,)]


def test_compression_and_retention_jobs_do_their_work(tdb: str) -> None:
    short = TimescaleConfig(retain_for="20 days")
    with connect(tdb) as conn:
        schema.init_db(conn, short)
    now = time.time()
    copy_events(tdb, [now - 30 * 86400 + i for i in range(10)])
    copy_events(tdb, [now - 10 * 86400 + i for i in range(10)])
    copy_events(tdb, [now - 3600 + i for i in range(10)])
    with connect(tdb) as conn:
        conn.execute(f"CALL run_job({job_id(tdb, 'moodle_events', 'policy_retention')})")
        assert count_rows(tdb) == 20
        conn.execute(f"CALL run_job({job_id(tdb, 'moodle_events', 'policy_compression')})")
    chunks = query(tdb, "SELECT range_end < now() - INTERVAL '7 days', is_compressed"
                        " FROM timescaledb_information.chunks WHERE hypertable_name = 'moodle_events'")
    assert sorted(chunks) == [(False, False), (True, True)]
    assert count_rows(tdb) == 20


@pytest.fixture
def role(tinit: str) -> Iterator[str]:
    with login_role(tinit) as name:
        yield name


def test_the_least_privileged_role_ships_into_new_and_compressed_chunks(tinit: str, role: str,
                                                                       tmp_path: Path) -> None:
    now = time.time()
    copy_events(tinit, [now - 10 * 86400])
    with connect(tinit) as conn:
        report = schema.init_db(conn, DEFAULTS, grant_to=role)
        assert report.applied == [f"grants: role {role} may run the shipper (INSERT and SELECT on "
                                  "moodle_events, read/write on the shipper tables)"]
        conn.execute("SELECT compress_chunk(c) FROM show_chunks('moodle_events', older_than => "
                     "INTERVAL '7 days') c")
    shipper = Shipper(tmp_path, psycopg.conninfo.make_conninfo(tinit, user=role))
    append(shipper.spool / "a.jsonl", line(at(0, now - 10 * 86400 + 5)), line(at(1, now + 3 * 86400)),
           b"not json\n", *(line(at(i, now - 60 + i)) for i in range(2, 50)))
    shipper.catch_up()
    assert count_rows(tinit) == 51 and count_rows(tinit, "shipper_dead_letter") == 1
    checked = shipper.run("check")
    assert checked.returncode == 0 and "FAIL" not in checked.stdout, checked.stdout
    assert "OK   storage   TimescaleDB " in checked.stdout
    stats = shipper.run("stats", "--since", "3 days")
    assert stats.returncode == 0, stats.stderr
    assert "(from events_by_hour)" in stats.stdout and "(from events_by_day_course)" in stats.stdout


def test_check_warns_when_the_database_differs_from_the_settings(tinit: str, tmp_path: Path) -> None:
    shipper = Shipper(tmp_path, tinit, settings={"timescaledb.retain_for": "90 days"})
    checked = shipper.run("check")
    assert checked.returncode == 0, checked.stdout
    assert ("WARN layout    differs from the settings, init-db would apply: retention policy: drop chunks "
            "older than 365 days -> 90 days") in checked.stdout
    done = shipper.run("init-db")
    assert done.returncode == 0 and "applied: retention policy" in done.stdout
    assert "WARN" not in shipper.run("check").stdout


def test_enabled_off_leaves_the_timescaledb_objects_alone(tinit: str) -> None:
    before = layout(tinit)
    off = TimescaleConfig(enabled="off", retain_for="30 days")
    with connect(tinit) as conn:
        report = schema.init_db(conn, off)
        usable, text, pending = schema.describe(conn, off)
    assert report.applied == [] and len(report.skipped) == 1
    assert "left exactly as they are" in report.skipped[0]
    assert report.mode.startswith("TimescaleDB ")
    assert report.mode.endswith('left as it is (timescaledb.enabled = "off")')
    assert layout(tinit) == before
    assert usable and pending == []
    assert text.endswith('timescaledb.enabled = "off": init-db leaves these as they are')


def test_print_sql_applied_by_hand_matches_init_db(tdb: str, tmp_path: Path) -> None:
    with connect(tdb) as conn:
        conn.execute(schema.script(DEFAULTS))
        report = schema.init_db(conn, DEFAULTS)
    assert report.applied == [], report.applied
    assert len(layout(tdb)["jobs"]) == 4
