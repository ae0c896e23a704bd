"""init-db on plain PostgreSQL, the decisions about TimescaleDB, and the SQL a DBA can apply by hand.

These run on every server: tests that need plain PostgreSQL force it with timescaledb.enabled = "off"
(so they also mean something when SHIPPER_TEST_DSN names a TimescaleDB server). What needs the
extension itself is in test_timescaledb.py.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import psycopg.conninfo
import pytest

from conftest import Server, Shipper, append, append_events, count_rows, event, line, login_role, query
from shipper.cli import main
from shipper.config import TimescaleConfig
from shipper.errors import SchemaError
from shipper.sink import schema, tsdb
from shipper.stats import collect, render

PLAIN = TimescaleConfig(enabled="off")
FIXTURES = Path(__file__).parent / "fixtures"


def connect(dsn: str) -> psycopg.Connection:
    return psycopg.connect(dsn, autocommit=True)


def index_definitions(dsn: str) -> dict[str, str]:
    return dict(query(dsn, "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'moodle_events'"))


def build_version_1(dsn: str) -> None:
    """The database as the previous release's init-db left it (tests/fixtures/schema_v1.sql)."""
    with connect(dsn) as conn:
        conn.execute((FIXTURES / "schema_v1.sql").read_text())


def copy_events(dsn: str, times: list[float], eventname: str = "\\core\\event\\course_viewed",
                courseid: int = 2, userid: int = 10) -> None:
    with connect(dsn) as conn, conn.cursor().copy(
            "COPY moodle_events (time, eventname, component, courseid, userid) FROM STDIN") as copy:
        for t in times:
            copy.write_row((f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(t))}+00", eventname, "core",
                            courseid, userid))


# -- decisions, without a server ---------------------------------------------------------------------

NOTHING = tsdb.Extension(installed=None, available=None, preloaded=False, can_create=False)
AVAILABLE = tsdb.Extension(installed=None, available="2.28.3", preloaded=True, can_create=True,
                           role="moodle", database="moodle_logs_tsdb")


@pytest.mark.parametrize("enabled", ["auto", "on", "off"])
def test_available_but_not_preloaded_is_never_a_silent_fallback(enabled: str) -> None:
    ext = tsdb.Extension(installed=None, available="2.28.3", preloaded=False, can_create=True)
    mode = tsdb.decide(ext, enabled)
    if enabled == "off":
        assert mode.error is None and not mode.timescaledb
        assert mode.text == 'plain PostgreSQL: timescaledb.enabled = "off"'
        return
    assert mode.error is not None and not mode.timescaledb
    assert "available on this server (version 2.28.3) but not preloaded" in mode.error
    assert "shared_preload_libraries = 'timescaledb'" in mode.error
    assert "restart PostgreSQL" in mode.error
    assert 'timescaledb.enabled = "off"' in mode.error


def test_created_in_the_database_but_not_preloaded_is_an_error() -> None:
    ext = tsdb.Extension(installed="2.28.3", available="2.28.3", preloaded=False, can_create=True)
    for enabled in ("auto", "on", "off"):  # "off" cannot help: the hypertable needs the library
        mode = tsdb.decide(ext, enabled)
        assert mode.error and "created in this database (version 2.28.3) but not preloaded" in mode.error
        assert "writes to its tables fail" in mode.error and "restart PostgreSQL" in mode.error


def test_not_on_the_server_is_plain_with_auto_and_an_error_with_on() -> None:
    auto = tsdb.decide(NOTHING, "auto")
    assert not auto.timescaledb and auto.error is None
    assert auto.text == ("plain PostgreSQL: the timescaledb extension is not installed on this server "
                         "(not in pg_available_extensions)")
    on = tsdb.decide(NOTHING, "on")
    assert on.error
    assert 'timescaledb.enabled = "on", but the timescaledb extension is not installed' in on.error


def test_available_and_preloaded_is_created_when_the_role_may() -> None:
    mode = tsdb.decide(AVAILABLE, "auto")
    assert mode.timescaledb and mode.create_extension and mode.error is None
    assert mode.text == "TimescaleDB 2.28.3"
    denied = tsdb.decide(tsdb.Extension(**{**AVAILABLE.__dict__, "can_create": False}), "auto")
    assert denied.error and "role moodle may not create it" in denied.error
    assert "CREATE EXTENSION timescaledb; in database moodle_logs_tsdb" in denied.error


def test_too_old_a_timescaledb_is_refused_with_the_way_out() -> None:
    mode = tsdb.decide(tsdb.Extension(installed="2.11.2", available="2.11.2", preloaded=True,
                                      can_create=True), "auto")
    assert mode.error and "needs 2.13 or newer" in mode.error
    assert "ALTER EXTENSION timescaledb UPDATE" in mode.error


@pytest.mark.parametrize(("setting", "listed"), [
    ("timescaledb", True), ("pg_stat_statements, timescaledb", True), ("$libdir/timescaledb", True),
    ('"timescaledb"', True), ("timescaledb_toolkit", False), ("", False),
])
def test_preload_list_parsing(setting: str, listed: bool) -> None:
    assert tsdb.preload_listed(setting) is listed


def test_interval_text_reads_back_as_written() -> None:
    assert [tsdb.interval_text(s) for s in (86400, 7 * 86400, 1800, 3600, 90, 93600)] == [
        "1 day", "7 days", "30 minutes", "1 hour", "90 seconds", "26 hours"]


def test_settings_timescaledb_would_refuse_are_refused_first() -> None:
    with pytest.raises(SchemaError, match='chunk_interval cannot be "off"'):
        tsdb.Desired.from_config(TimescaleConfig(chunk_interval="off"))
    with pytest.raises(SchemaError, match='retain_for to at least "3 days"'):
        tsdb.Desired.from_config(TimescaleConfig(retain_for="1 day"))
    ok = tsdb.Desired.from_config(TimescaleConfig(retain_for="1 day", aggregate_refresh="off"))
    assert ok.retain_for == 86400 and ok.aggregate_refresh is None


def test_plan_for_an_empty_database_builds_everything_deterministically() -> None:
    steps = tsdb.plan(tsdb.Desired.from_config(TimescaleConfig()), tsdb.State())
    sql = "\n".join(s for step in steps for s in step.sql)
    assert ("create_hypertable('moodle_events', by_range('time', INTERVAL '1 day'), "
            "create_default_indexes => false, if_not_exists => true, migrate_data => true)") in sql
    assert "timescaledb.compress_segmentby" in sql
    assert "add_compression_policy('moodle_events', INTERVAL '7 days'" in sql
    assert "add_retention_policy('moodle_events', INTERVAL '365 days'" in sql
    assert sql.count("CREATE MATERIALIZED VIEW IF NOT EXISTS") == 2
    assert sql.count("add_continuous_aggregate_policy") == 2
    # every policy waits before its first run, so the scheduler never races a test's run_job
    assert sql.count("initial_start => now() + INTERVAL '1 hour'") == 4


def test_sparse_indexes_are_named_where_timescaledb_can_take_them() -> None:
    desired = tsdb.Desired.from_config(TimescaleConfig())

    def compression_sql(version: str) -> list[str]:
        step = next(s for s in tsdb.plan(desired, tsdb.State(version=version))
                    if s.description.startswith("compression:"))
        return step.sql

    assert compression_sql("2.28.3")[0].endswith("timescaledb.compress_index = 'bloom(userid)')")
    assert len(compression_sql("2.28.3")) == 1
    assert compression_sql("2.21.1") == [  # older: TimescaleDB derives them, as before
        "ALTER TABLE moodle_events SET (timescaledb.compress, timescaledb.compress_segmentby = 'eventname',"
        " timescaledb.compress_orderby = 'courseid ASC, time DESC')"]
    unknown = compression_sql("")  # --print-sql: the server decides when the script runs
    assert len(unknown) == 2 and unknown[1].startswith("DO $$") and ">= '{2,22}'" in unknown[1]


def test_apache_edition_gets_the_hypertable_only() -> None:
    desired = tsdb.Desired.from_config(TimescaleConfig())
    steps = tsdb.plan(desired, tsdb.State(), community=False)
    assert [s.description for s in steps] == [
        "hypertable: moodle_events partitioned on time, chunks of 1 day"]
    skipped = tsdb.apache_skipped(desired)
    assert len(skipped) == 3 and all("timescaledb.license = 'apache'" in s for s in skipped)


def test_plan_updates_policies_in_place_and_removes_those_turned_off() -> None:
    defaults = tsdb.Desired.from_config(TimescaleConfig())
    have = tsdb.State(
        hypertable=True, chunk_interval=86400, compression=True, segmentby=tsdb.SEGMENT_BY,
        orderby=tsdb.ORDER_BY, aggregates=set(tsdb.AGGREGATES), jobs={
            "compression": tsdb.Job(1000, 43200, {"hypertable_id": 1, "compress_after": "7 days"},
                                    {"compress_after": 7 * 86400}),
            "retention": tsdb.Job(1001, 86400, {"hypertable_id": 1, "drop_after": "365 days"},
                                  {"drop_after": 365 * 86400}),
            **{name: tsdb.Job(1002 + i, 1800, {"mat_hypertable_id": 3 + i, "start_offset": "365 days",
                                               "end_offset": "01:00:00"},
                              {"start_offset": 365 * 86400, "end_offset": 3600})
               for i, name in enumerate(tsdb.AGGREGATES)}})
    assert tsdb.plan(defaults, have) == []
    changed = tsdb.plan(tsdb.Desired.from_config(TimescaleConfig(
        retain_for="180 days", compress_after="off", aggregate_refresh="1 hour",
        chunk_interval="2 days")), have)
    text = [step.description for step in changed]
    assert text[0].startswith("chunk interval: 1 day -> 2 days")
    assert "compression policy removed (was 7 days; the setting is off)" in text
    assert "retention policy: drop chunks older than 365 days -> 180 days" in text
    sql = "\n".join(s for step in changed for s in step.sql)
    assert "set_chunk_time_interval('moodle_events', INTERVAL '2 days')" in sql
    assert "remove_compression_policy('moodle_events', if_exists => true)" in sql
    assert ("alter_job(1001, config => '{\"drop_after\": \"180 days\", \"hypertable_id\": 1}'::jsonb)"
            in sql)
    assert "schedule_interval => INTERVAL '1 hour', next_start => now() + INTERVAL '1 hour'" in sql
    assert '"start_offset": "180 days"' in sql


# -- plain PostgreSQL ------------------------------------------------------------------------------

def test_plain_init_db_says_what_it_skipped_and_why(db: str) -> None:
    with connect(db) as conn:
        report = schema.init_db(conn, PLAIN)
    assert report.mode == 'plain PostgreSQL: timescaledb.enabled = "off"'
    assert report.applied == [f"schema version 1: {schema.MIGRATIONS[1][0]}"]
    why = 'timescaledb.enabled = "off"'
    assert report.skipped == [
        f"hypertable (1 day chunks): {why}",
        f"compression of chunks older than 7 days: {why}",
        f"retention of 365 days: {why}; moodle_events keeps every row until you delete old ones yourself "
        "(see docs/database.md)",
        f"continuous aggregates events_by_hour, events_by_day_course: {why}; "
        "'moodle-tsdb-shipper stats' reads moodle_events instead",
    ]
    indexes = index_definitions(db)
    assert set(indexes) == {name for name, _ in schema.EVENT_INDEXES}
    assert "(\"time\", courseid) WHERE (courseid > 0)" in indexes["moodle_events_time_courseid_idx"]
    assert not any("DESC" in d for d in indexes.values())
    with connect(db) as conn:
        again = schema.init_db(conn, PLAIN)
        assert again.applied == [] and schema.check(conn) is None
        assert schema.describe(conn, PLAIN) == (True, 'plain PostgreSQL: timescaledb.enabled = "off"', [])


def test_auto_on_a_server_without_the_extension_names_the_reason(pg_server: Server, db: str) -> None:
    with connect(pg_server.dsn) as conn:
        if conn.execute("SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'"
                        ).fetchone()[0]:  # type: ignore[index]
            pytest.skip("this test server offers timescaledb; test_timescaledb.py covers it")
    with connect(db) as conn:
        report = schema.init_db(conn, TimescaleConfig())
        assert report.mode.endswith("the timescaledb extension is not installed on this server "
                                    "(not in pg_available_extensions)")
        assert all("not installed on this server" in s for s in report.skipped)
        with pytest.raises(SchemaError, match=r'timescaledb\.enabled = "on", but'):
            schema.init_db(conn, TimescaleConfig(enabled="on"))


def test_unusable_extension_fails_before_creating_anything(db: str, monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """Available but not preloaded: init-db and check say what to set, and nothing is half-built."""
    monkeypatch.setattr(tsdb, "detect", lambda conn: tsdb.Extension(
        installed=None, available="2.28.3", preloaded=False, can_create=True))
    with connect(db) as conn:
        with pytest.raises(SchemaError, match="shared_preload_libraries = 'timescaledb'"):
            schema.init_db(conn, TimescaleConfig())
        assert conn.execute("SELECT to_regclass('moodle_events')").fetchone()[0] is None  # type: ignore[index]
        schema.init_db(conn, PLAIN)
        usable, text, _ = schema.describe(conn, TimescaleConfig())
        assert not usable and "but not preloaded" in text and "restart PostgreSQL" in text
        assert schema.describe(conn, PLAIN)[0]


def test_a_real_server_with_timescaledb_not_preloaded(pg_server: Server, db: str) -> None:
    with connect(pg_server.dsn) as conn:
        ext = tsdb.detect(conn)
    if not ext.available or ext.preloaded:
        pytest.skip("needs a server offering timescaledb without preloading it (the suite's own server "
                    "started from a TimescaleDB-enabled SHIPPER_PG_BINDIR); the monkeypatched test above "
                    "covers the decision")
    with connect(db) as conn:
        with pytest.raises(SchemaError, match="but not preloaded") as caught:
            schema.init_db(conn, TimescaleConfig())
        assert "restart PostgreSQL" in str(caught.value)
        assert conn.execute("SELECT to_regclass('moodle_events')").fetchone()[0] is None  # type: ignore[index]
        report = schema.init_db(conn, PLAIN)
        assert report.mode.startswith("plain PostgreSQL")


def test_a_newer_schema_is_refused(db: str) -> None:
    with connect(db) as conn:
        schema.init_db(conn, PLAIN)
        conn.execute("INSERT INTO shipper_schema_version (version, description) VALUES (99, 'future')")
        with pytest.raises(SchemaError, match="newer than this shipper's 1: upgrade moodle-tsdb-shipper"):
            schema.init_db(conn, PLAIN)
        assert "newer than this shipper" in (schema.check(conn) or "")


def test_a_version_1_database_is_upgraded_in_place(db: str) -> None:
    build_version_1(db)
    copy_events(db, [time.time() - 3600 * i for i in range(50)])
    with connect(db) as conn:
        report = schema.init_db(conn, PLAIN)
        assert report.applied == [] and schema.check(conn) is None
    assert count_rows(db) == 50
    assert query(db, "SELECT version FROM shipper_schema_version") == [(1,)]


def init_db_twice_at_once(dsn: str, settings: TimescaleConfig, timeout: float) -> list[schema.Report]:
    """Run two init-db on ``dsn`` released at the same instant; fail on any error either raised."""
    reports: list[schema.Report] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run() -> None:
        try:
            with connect(dsn) as conn:
                barrier.wait()
                reports.append(schema.init_db(conn, settings))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert errors == []
    return reports


def test_two_init_db_at_once_both_succeed_and_apply_once(db: str) -> None:
    reports = init_db_twice_at_once(db, PLAIN, timeout=60)
    assert sorted(len(r.applied) for r in reports) == [0, 1]
    assert query(db, "SELECT version FROM shipper_schema_version") == [(1,)]


# -- the SQL for a DBA, and the least-privilege role ------------------------------------------------

def test_print_sql_applied_by_hand_leaves_init_db_nothing_to_do(db: str) -> None:
    role = f"shipper_{uuid.uuid4().hex[:8]}"
    text = schema.script(PLAIN, grant_to=role)
    statements = "\n".join(x for x in text.splitlines() if not x.startswith("--"))
    assert "timescaledb" not in statements
    assert f'GRANT SELECT, INSERT ON moodle_events TO "{role}";' in text
    with connect(db) as conn:
        conn.execute(f'CREATE ROLE "{role}"')
        try:
            conn.execute(text)
            conn.execute(text)  # applying it twice is harmless
            assert schema.init_db(conn, PLAIN).applied == []
        finally:
            conn.execute(f'DROP OWNED BY "{role}"')
            conn.execute(f'DROP ROLE "{role}"')


def test_print_sql_includes_the_timescaledb_part_unless_off(capsys: pytest.CaptureFixture[str],
                                                            tmp_path: Path) -> None:
    common = ["--spool-dir", str(tmp_path), "--state-dir", str(tmp_path), "--dsn", "host=nowhere"]
    assert main(["init-db", "--print-sql", "--grant-to", "moodle_shipper",
                 "--set", "timescaledb.retain_for=90 days", *common]) == 0
    out = capsys.readouterr().out
    assert out.startswith("-- moodle-tsdb-shipper: schema version 1")
    assert "CREATE EXTENSION IF NOT EXISTS timescaledb;" in out
    assert "add_retention_policy('moodle_events', INTERVAL '90 days'" in out
    assert 'GRANT SELECT ON events_by_hour, events_by_day_course TO "moodle_shipper";' in out
    assert out.rstrip().endswith("COMMIT;")


@pytest.fixture
def runner_role(db: str) -> Iterator[str]:
    """A login role with nothing but what init-db --grant-to gives it."""
    with login_role(db) as role:
        yield role


def test_the_shipper_runs_with_only_the_granted_privileges(db: str, runner_role: str, tmp_path: Path) -> None:
    with connect(db) as conn:
        report = schema.init_db(conn, PLAIN, grant_to=runner_role)
    assert report.applied[-1].startswith(f"grants: role {runner_role} may run the shipper")
    as_role = psycopg.conninfo.make_conninfo(db, user=runner_role)
    shipper = Shipper(tmp_path, as_role, settings={"timescaledb.enabled": "off"})
    path = shipper.spool / "a.jsonl"
    append_events(path, 0, 300)
    append(path, b"not json\n")  # a dead letter needs the id sequence too
    append_events(path, 300, 10)
    shipper.catch_up()
    assert count_rows(db) == 310 and count_rows(db, "shipper_dead_letter") == 1
    checked = shipper.run("check")
    assert "FAIL" not in checked.stdout, checked.stdout
    assert "OK   privilege" in checked.stdout
    with connect(as_role) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("DELETE FROM moodle_events")


def test_init_db_names_a_missing_role(db: str) -> None:
    with connect(db) as conn, pytest.raises(SchemaError, match="create the role first"):
        schema.init_db(conn, PLAIN, grant_to="no_such_role_here")


# -- the command line and stats on plain PostgreSQL ------------------------------------------------

def test_cli_init_db_check_and_stats_on_plain_postgresql(db: str, tmp_path: Path) -> None:
    shipper = Shipper(tmp_path, db, settings={"timescaledb.enabled": "off"})
    done = shipper.run("init-db")
    assert done.returncode == 0, done.stderr
    assert 'mode: plain PostgreSQL: timescaledb.enabled = "off"' in done.stdout
    assert done.stdout.count("skipped: ") == 4
    now = int(time.time())
    append(shipper.spool / "a.jsonl", *(line(event(i, timecreated=now - 7200 + i, courseid=2 + i % 3,
                                                   timecreated_us=(now - 7200 + i) * 1_000_000))
                                         for i in range(90)))
    shipper.catch_up()
    checked = shipper.run("check")
    assert checked.returncode == 0, checked.stdout
    assert 'OK   storage   plain PostgreSQL: timescaledb.enabled = "off"' in checked.stdout
    stats = shipper.run("stats", "--since", "24h")
    assert stats.returncode == 0, stats.stderr
    assert "events since" in stats.stdout and ": 90\n" in stats.stdout
    assert "top event names (from moodle_events)" in stats.stdout
    assert "course 2" in stats.stdout
    bad = shipper.run("stats", "--since", "soon")
    assert bad.returncode == 1 and "--since 'soon'" in bad.stderr


def test_stats_counts_from_the_table(db: str) -> None:
    with connect(db) as conn:
        schema.init_db(conn, PLAIN)
    now = time.time()
    copy_events(db, [now - 60 * i for i in range(120)], courseid=7)  # the last two hours
    copy_events(db, [now - 3 * 86400], courseid=8)  # outside 24 h, inside 7 days
    copy_events(db, [now - 600], eventname="\\core\\event\\user_loggedin", courseid=0)
    with connect(db) as conn:
        day = collect(conn, 86400, top=5)
        week = collect(conn, 7 * 86400, top=5)
    assert day.total == 121 and day.period == "hour"
    assert day.top_events == [("\\core\\event\\course_viewed", 120), ("\\core\\event\\user_loggedin", 1)]
    assert day.top_courses == [(7, 120)]  # courseid 0 is no course
    assert set(day.sources.values()) == {"moodle_events"}
    assert week.total == 122 and week.period == "day" and week.top_courses == [(7, 120), (8, 1)]
    assert "per day (UTC, from moodle_events)" in render(week)
