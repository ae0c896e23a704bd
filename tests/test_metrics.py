"""/metrics, /healthz and /readyz of a running shipper (a real subprocess, a real PostgreSQL).

The values must move as the operator expects: shipped equals the rows in the table, lag rises while the
database is down and returns to 0, failures are counted by class, dead letters by reason.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import (
    Server,
    Shipper,
    append,
    append_events,
    count_rows,
    event,
    line,
    login_role,
    query,
    wait_for,
)
from shipper import __version__
from shipper.pgtemp import free_port
from shipper.sink import schema

CONTRIB = Path(__file__).resolve().parent.parent / "contrib"


class Endpoint:
    """The HTTP side of one running shipper."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def text(self) -> str:
        code, body = self.get("/metrics")
        assert code == 200, body
        return body

    def scrape(self) -> Scrape:
        return Scrape(self.text())

    def value(self, name: str, **labels: str) -> float:
        """One sample now; -1 while the endpoint is not up yet (for wait_for)."""
        try:
            return self.scrape()(name, **labels)
        except (urllib.error.URLError, ConnectionError):
            return -1


class Scrape:
    """Samples of one scrape by (name, labels)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                self.samples[(s.name, frozenset(s.labels.items()))] = s.value

    def __call__(self, name: str, **labels: str) -> float:
        return self.samples[(name, frozenset(labels.items()))]

    def names(self) -> set[str]:
        return {name for name, _ in self.samples}

    def by_label(self, name: str, label: str) -> dict[str, float]:
        return {dict(labels)[label]: v for (n, labels), v in self.samples.items() if n == name}


def execute(dsn: str, sql: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql)


def metered(shipper: Shipper, **settings: object) -> Endpoint:
    port = free_port()
    shipper.write_config(**{"metrics.listen": f"127.0.0.1:{port}"}, **settings)
    return Endpoint(port)


def test_counters_match_what_the_database_holds(shipper: Shipper) -> None:
    execute(shipper.dsn, "ALTER TABLE moodle_events ADD CONSTRAINT no_course_666 CHECK (courseid <> 666)")
    http = metered(shipper, **{"spool.max_line_bytes": 4096})
    path = shipper.spool / "events.jsonl"
    append_events(path, 0, 300)
    append(path,
           line(event(300, ip="not-an-ip")),  # ships, with ip NULL
           line(event(301, courseid=666)),  # the database rejects it: dead letter
           b"\n",
           b"{not json\n",
           line({"eventname": "\\core\\event\\x"}),  # no timecreated
           b'{"eventname": "' + b"x" * 5000 + b'"}\n')  # longer than spool.max_line_bytes
    shipper.start()
    wait_for(lambda: http.value("moodle_shipper_lag_bytes") == 0
             and http.value("moodle_shipper_events_shipped_total") == 301, what="everything shipped")
    m = http.scrape()
    rows = count_rows(shipper.dsn)
    assert m("moodle_shipper_events_shipped_total") == rows == 301
    assert m("moodle_shipper_events_read_total") == 302
    assert m("moodle_shipper_bytes_read_total") == path.stat().st_size
    assert m("moodle_shipper_blank_lines_total") == 1
    dead = {k: v for k, v in m.by_label("moodle_shipper_dead_letters_total", "reason").items() if v}
    assert dead == {"rejected_by_database": 1, "invalid_json": 1, "missing_timecreated": 1,
                    "line_too_long": 1}
    in_table = dict(query(shipper.dsn, "SELECT reason, count(*) FROM shipper_dead_letter GROUP BY 1"))
    assert dead == in_table
    assert {k: v for k, v in m.by_label("moodle_shipper_fields_nulled_total", "field").items() if v} == {
        "ip": 1}
    assert m("moodle_shipper_flush_failures_total", sqlstate_class="23") >= 1  # the CHECK violation
    # every event read went through one committed batch
    assert m("moodle_shipper_batch_size_events_sum") == 302
    batches = m("moodle_shipper_batch_size_events_count")
    assert batches == m("moodle_shipper_flush_duration_seconds_count") >= 1
    for gauge in ("lag_bytes", "lag_seconds", "buffer_events", "buffer_bytes"):
        assert m(f"moodle_shipper_{gauge}") == 0, gauge
    assert (m("moodle_shipper_files_tracked"), m("moodle_shipper_files_open")) == (1, 1)
    assert (m("moodle_shipper_buffer_max_events"), m("moodle_shipper_buffer_max_bytes")) == (50000, 64 << 20)
    assert m("moodle_shipper_database_up") == m("moodle_shipper_up") == m("moodle_shipper_ready") == 1
    assert abs(m("moodle_shipper_last_commit_timestamp_seconds") - time.time()) < 30
    assert 0 <= m("moodle_shipper_last_commit_age_seconds") < 30
    assert m("moodle_shipper_build_info", version=__version__) == 1
    assert m("process_resident_memory_bytes") > 0
    assert http.get("/healthz")[0] == 200
    assert http.get("/readyz") == (200, "ready\n")
    assert shipper.stop() == 0


def test_lag_rises_while_the_database_is_down_and_returns_to_zero(shipper: Shipper,
                                                                  pg_server: Server) -> None:
    if pg_server.temp is None:
        pytest.skip("SHIPPER_TEST_DSN names an external server: this test needs to stop its own server")
    http = metered(shipper)
    path = shipper.spool / "events.jsonl"
    append_events(path, 0, 100)
    shipper.start()
    wait_for(lambda: http.value("moodle_shipper_events_shipped_total") == 100, what="100 events")
    assert http.get("/readyz")[0] == 200
    shipped_size = path.stat().st_size
    pg_server.temp.stop_server("fast")
    try:
        append_events(path, 100, 200)
        first = path.stat().st_size - shipped_size
        wait_for(lambda: http.value("moodle_shipper_lag_bytes") == first, what="lag of 200 events")
        wait_for(lambda: http.get("/readyz")[0] == 503, what="/readyz to turn unready")
        append_events(path, 300, 100)  # written during the outage: the lag keeps growing
        second = path.stat().st_size - shipped_size
        wait_for(lambda: http.value("moodle_shipper_lag_bytes") == second, what="lag of 300 events")
        # The first failure is usually the server ending the session (class 57); the refused connections
        # come with the retries after it, the first one a backoff later.
        wait_for(lambda: http.value("moodle_shipper_flush_failures_total", sqlstate_class="connection") >= 1,
                 what="a refused connection counted")
        m = http.scrape()
        assert m("moodle_shipper_lag_seconds") > 0  # the oldest event waiting, by its timecreated
        assert m("moodle_shipper_database_up") == 0 and m("moodle_shipper_ready") == 0
        assert m("moodle_shipper_retries_total") >= 1
        assert m("moodle_shipper_events_shipped_total") == 100
        code, reason = http.get("/readyz")
        assert code == 503 and reason.startswith("the last database operation failed: "), reason
        assert http.get("/healthz")[0] == 200 and m("moodle_shipper_up") == 1  # waiting is not stuck
        assert shipper.proc is not None and shipper.proc.poll() is None
    finally:
        pg_server.temp.start_server()
    wait_for(lambda: http.value("moodle_shipper_lag_bytes") == 0, timeout=60, what="the lag back to 0")
    wait_for(lambda: http.get("/readyz")[0] == 200, what="/readyz ready again")
    m = http.scrape()
    assert m("moodle_shipper_events_shipped_total") == count_rows(shipper.dsn) == 400
    assert m("moodle_shipper_lag_seconds") == 0 and m("moodle_shipper_database_up") == 1
    assert shipper.stop() == 0


def test_a_missing_schema_is_counted_and_readyz_says_what_to_do(tmp_path: Path, db: str) -> None:
    shipper = Shipper(tmp_path, db)  # a database where init-db never ran
    http = metered(shipper)
    append_events(shipper.spool / "events.jsonl", 0, 50)
    shipper.start()
    try:
        wait_for(lambda: http.value("moodle_shipper_flush_failures_total", sqlstate_class="schema") >= 1,
                 what="a failure of class schema")
        code, reason = http.get("/readyz")
        assert code == 503
        assert reason.startswith("cannot read the committed offsets from the database: ")
        assert "run 'moodle-tsdb-shipper init-db'" in reason
        assert http.get("/healthz")[0] == 200
        assert shipper.run("init-db").returncode == 0
        wait_for(lambda: count_rows(db) == 50, what="50 events once the schema exists")
        wait_for(lambda: http.get("/readyz")[0] == 200, what="/readyz ready")
        assert http.value("moodle_shipper_events_shipped_total") == 50
        assert shipper.stop() == 0
    finally:
        shipper.kill()


@pytest.fixture
def role(pg_server: Server, initdb: str) -> Iterator[str]:
    """A role that may read and write the shipper's tables but not insert into moodle_events."""
    with login_role(initdb) as name:
        execute(initdb, f"GRANT SELECT ON moodle_events, shipper_schema_version TO {name}")
        execute(initdb, f"GRANT SELECT, INSERT, UPDATE ON shipper_checkpoints, shipper_dead_letter TO {name}")
        execute(initdb, f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {name}")
        yield name


def test_a_missing_privilege_is_counted_by_sqlstate_class(tmp_path: Path, initdb: str, role: str) -> None:
    shipper = Shipper(tmp_path, psycopg.conninfo.make_conninfo(initdb, user=role))
    http = metered(shipper)
    append_events(shipper.spool / "events.jsonl", 0, 50)
    shipper.start()
    try:
        wait_for(lambda: http.value("moodle_shipper_flush_failures_total", sqlstate_class="42") >= 2,
                 what="failures of class 42 (insufficient_privilege), retried")
        code, reason = http.get("/readyz")
        assert code == 503 and "permission denied for table moodle_events" in reason, reason
        assert count_rows(initdb) == 0
        execute(initdb, f"GRANT INSERT ON moodle_events TO {role}")
        wait_for(lambda: http.value("moodle_shipper_events_shipped_total") == 50, what="50 events shipped")
        assert count_rows(initdb) == 50
        wait_for(lambda: http.get("/readyz")[0] == 200, what="/readyz ready")
        assert shipper.stop() == 0
    finally:
        shipper.kill()


def test_a_metrics_port_in_use_stops_the_start_with_a_clear_error(shipper: Shipper) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        shipper.write_config(**{"metrics.listen": listen})
        done = shipper.run("run")
    assert done.returncode == 1
    assert f"metrics.listen = '{listen}': cannot listen: the address is already in use" in done.stderr
    assert "Traceback" not in done.stderr


# -- the exposition format, the dashboard and the alert rules --------------------------------------------

@pytest.fixture(scope="module")
def real_scrape(pg_server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scrape]:
    """A real scrape after some shipping, a dead letter and a nulled field (one shipper run per module)."""
    name = f"shipper_test_{uuid.uuid4().hex[:12]}"
    execute(pg_server.dsn, f'CREATE DATABASE "{name}"')
    dsn = pg_server.dsn_for(name)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            schema.init_db(conn)
        shipper = Shipper(tmp_path_factory.mktemp("scrape"), dsn)
        http = metered(shipper)
        path = shipper.spool / "events.jsonl"
        append_events(path, 0, 100)
        append(path, b"{oops\n", line(event(100, ip="nope")))
        shipper.start()
        try:
            wait_for(lambda: http.value("moodle_shipper_events_shipped_total") == 101, what="101 events")
            scrape = http.scrape()
            assert shipper.stop() == 0
        finally:
            shipper.kill()
        yield scrape
    finally:
        execute(pg_server.dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not installed (Debian: apt-get install prometheus)")
    return path


def test_promtool_accepts_a_real_scrape(real_scrape: Scrape) -> None:
    done = subprocess.run([promtool(), "check", "metrics"], input=real_scrape.text, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), (
        done.stdout + done.stderr)


def test_metric_names_follow_the_conventions(real_scrape: Scrape) -> None:
    families = {f.name: f.type for f in text_string_to_metric_families(real_scrape.text)}
    ours = {name: kind for name, kind in families.items() if name.startswith("moodle_shipper_")}
    assert len(ours) >= 25
    for name, kind in ours.items():
        if kind == "counter":
            assert f"{name}_total" in real_scrape.names(), name
        else:
            assert not name.endswith("_total"), name
    # low cardinality: no label takes a path, a user or anything else open-ended
    labels = {k for (name, labelset) in real_scrape.samples for k, _ in labelset
              if name.startswith("moodle_shipper_")}
    assert labels == {"reason", "field", "sqlstate_class", "le", "version"}


def test_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    tool = promtool()
    rules = CONTRIB / "prometheus" / "alerts.yml"
    done = subprocess.run([tool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    tests = CONTRIB / "prometheus" / "alerts_test.yml"
    done = subprocess.run([tool, "test", "rules", tests.name], capture_output=True, text=True, timeout=60,
                          cwd=tests.parent)
    assert done.returncode == 0, done.stdout + done.stderr


def test_alert_rules_name_metrics_that_exist(real_scrape: Scrape) -> None:
    # every expr in alerts.yml is on one line (PyYAML is not a dependency of the project)
    exprs = re.findall(r"^\s*expr: (.+)$", (CONTRIB / "prometheus" / "alerts.yml").read_text(), re.M)
    assert len(exprs) == 7
    for expr in exprs:
        names = promql_metric_names(expr)
        assert names, expr
        names.discard("up")  # Prometheus's own, per target
        assert names <= real_scrape.names(), (expr, names - real_scrape.names())


# -- the Grafana dashboard ------------------------------------------------------------------------------

DASHBOARD = CONTRIB / "grafana" / "moodle-tsdb-shipper.json"
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
                "bool", "offset", "inf", "nan"}


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (label matchers, ranges, functions and keywords removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    tokens = re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*(?!\s*\()\b(?!\s*\()", text)
    return {t for t in tokens if t.lower() not in PROMQL_WORDS}


def dashboard_panels() -> list[dict[str, Any]]:
    data = json.loads(DASHBOARD.read_text())
    panels = []
    for panel in data["panels"]:
        panels.append(panel)
        panels += panel.get("panels", [])  # a collapsed row holds its panels
    return panels


def targets(kind: str) -> list[tuple[str, dict[str, Any]]]:
    return [(p["title"], t) for p in dashboard_panels() for t in p.get("targets", [])
            if (t.get("datasource") or p["datasource"])["type"] == kind]


def test_dashboard_is_valid_json_with_a_query_in_every_panel() -> None:
    data = json.loads(DASHBOARD.read_text())
    assert data["uid"] == "moodle-tsdb-shipper" and data["title"]
    ids = [p["id"] for p in dashboard_panels()]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in data["templating"]["list"]}
    for panel in dashboard_panels():
        if panel["type"] == "row":
            continue
        assert panel.get("targets"), panel["title"]
        for target in panel["targets"]:
            uid = (target.get("datasource") or panel["datasource"])["uid"]
            assert uid.startswith("${") and uid[2:-1] in variables, (panel["title"], uid)
    assert targets("prometheus") and targets("postgres")


def test_dashboard_prometheus_queries_name_metrics_of_a_real_scrape(real_scrape: Scrape) -> None:
    data = json.loads(DASHBOARD.read_text())
    exprs = [(title, t["expr"]) for title, t in targets("prometheus")]
    exprs += [("variable " + v["name"], v["query"]["query"]) for v in data["templating"]["list"]
              if v["type"] == "query"]
    seen: set[str] = set()
    for title, expr in exprs:
        names = promql_metric_names(expr.replace("label_values(", "(").replace(", instance)", ")"))
        assert names, (title, expr)
        assert names <= real_scrape.names(), (title, names - real_scrape.names())
        seen |= names
    for family in ("events_shipped_total", "lag_bytes", "lag_seconds", "flush_failures_total",
                   "dead_letters_total", "database_up", "flush_duration_seconds_bucket"):
        assert f"moodle_shipper_{family}" in seen, family


def test_dashboard_prometheus_queries_parse(tmp_path: Path) -> None:
    """promtool parses each panel query, as a recording rule (Grafana's variables filled in)."""
    tool = promtool()
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}",
         "expr": t["expr"].replace("$__rate_interval", "5m").replace("$instance", ".*")}
        for i, (_, t) in enumerate(targets("prometheus"))]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    done = subprocess.run([tool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def grafana_sql(raw: str) -> str:
    """A panel's SQL with Grafana's macros expanded for a 30-day range."""
    return re.sub(r"\$__timeFilter\((\w+)\)", r"\1 BETWEEN now() - INTERVAL '30 days' AND now()", raw)


def test_dashboard_sql_runs_against_the_schema(pg_server: Server, initdb: str) -> None:
    """Every PostgreSQL panel runs against a database made by init-db.

    Without the timescaledb extension the continuous aggregates are stood in for by plain views built
    from the same definitions (time_bucket swapped for date_trunc), so column names are still checked.
    """
    from shipper.sink import tsdb

    with psycopg.connect(initdb, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass('events_by_hour') IS NOT NULL").fetchone()
        if not (exists and exists[0]):
            for view, (_, select) in tsdb.AGGREGATES.items():
                select = re.sub(r"time_bucket\(INTERVAL '1 (\w+)', time\)", r"date_trunc('\1', time)", select)
                conn.execute(f"CREATE VIEW {view} AS {select}")
    append_events_rows(initdb)
    relations = set()
    with psycopg.connect(initdb, autocommit=True) as conn:
        for title, target in targets("postgres"):
            raw = target["rawSql"]
            assert "$__timeFilter(" in raw or "shipper_checkpoints" in raw, title
            relations |= set(re.findall(r"\bFROM\s+([a-z_]+)", raw))
            rows = conn.execute(grafana_sql(raw)).fetchall()
            assert rows, title
            if target["format"] == "time_series":
                names = [c.name for c in conn.execute(grafana_sql(raw)).description or []]
                assert names[0] == "time", (title, names)
    assert {"events_by_hour", "events_by_day_course"} <= relations


def append_events_rows(dsn: str) -> None:
    """A few rows in every table the panels read, inside the panels' time range."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO moodle_events (time, eventname, component, courseid, userid) "
                     "SELECT now() - i * INTERVAL '1 hour', 'course_viewed', 'core', 2 + i % 3, i "
                     "FROM generate_series(1, 48) AS i")
        conn.execute("INSERT INTO shipper_checkpoints (source_id, file_key, path, byte_offset) "
                     "VALUES ('web1', 'k', '/spool/a.jsonl', 100)")
        conn.execute("INSERT INTO shipper_dead_letter (source_id, path, line_offset, line_length, reason,"
                     " raw) VALUES ('web1', '/spool/a.jsonl', 0, 5, 'invalid_json', 'oops')")
        timescale = conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
        if timescale != (0,):
            for view in ("events_by_hour", "events_by_day_course"):
                conn.execute(f"CALL refresh_continuous_aggregate('{view}', NULL, NULL)")
