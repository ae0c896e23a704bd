"""The TimescaleDB layer: detect the extension, then reconcile the hypertable, compression, retention and
continuous aggregates with the ``[timescaledb]`` settings.

The numbered migrations in schema.py run once each. This layer cannot work that way: settings change
over the years (a longer retention, compression turned off) and the extension may be installed after
the first init-db. So every init-db reads what the database has -- TimescaleDB's own catalogs, never a
copy of them -- and applies the difference as a list of steps. ``check`` computes the same list to say
what init-db would change, and ``init-db --print-sql`` prints the steps for an empty database.

Nothing here loads TimescaleDB's library by accident: on a server where it is not preloaded, calling
one of its functions ends the connection (FATAL), so detection reads only PostgreSQL's catalogs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import psycopg

from ..config import TimescaleConfig, parse_interval
from ..errors import SchemaError

EXTENSION = "timescaledb"
# by_range() and the generalized create_hypertable() arrived in 2.13 (November 2023).
MIN_VERSION = (2, 13)

# Compression layout, chosen by measurement (bench/TIMESCALEDB.md, 10M events over 30 days). Not
# settings: changing them needs a release that says so (docs/database.md).
# - Segment by eventname alone: the component is part of the event name (\mod_quiz\event\... is always
#   mod_quiz), so the seed's "eventname, component" makes exactly the same segments.
# - Order by courseid, then time DESC: each course's events lie together inside an event name, so the
#   id columns compress better and the per-batch min/max of courseid lets a per-course query over
#   compressed months skip most batches (3x faster than time order); time-range queries are as fast.
# - Sparse indexes (TimescaleDB 2.22+) named explicitly: derived from the btree indexes, 2.26+ adds
#   bloom filters on (time, courseid), (time, userid) and (time, component, action), which no query
#   can use (time is never compared for equality) and which cost 15% of the compressed size. Kept: a
#   bloom filter on userid, for "what did this user do" over compressed months.
SEGMENT_BY: tuple[str, ...] = ("eventname",)
ORDER_BY: tuple[tuple[str, bool], ...] = (("courseid", True), ("time", False))  # (column, ascending)
SPARSE_INDEX: tuple[tuple[str, str], ...] = (("bloom", "userid"),)  # (type, column)
SPARSE_INDEX_VERSION = (2, 22)  # ALTER TABLE ... SET (timescaledb.compress_index = ...) arrived

# Policies first run this long after init-db (their initial_start), not at once: init-db returns before
# the background workers start compressing or backfilling a converted table, and tests can drive the
# jobs with run_job without racing the scheduler (which starts a new job immediately otherwise).
FIRST_RUN_DELAY = 3600
# The newest hour is not materialised; real-time aggregation answers it from moodle_events.
AGGREGATE_END_OFFSET = 3600
# The daily aggregate's refresh window must hold two whole days (a TimescaleDB rule), plus end offset.
MIN_RETENTION_WITH_AGGREGATES = 3 * 86400

AGGREGATES: dict[str, tuple[str, str]] = {
    "events_by_hour": (
        "hourly event counts per event name",
        "SELECT time_bucket(INTERVAL '1 hour', time) AS bucket, eventname, count(*) AS events"
        " FROM moodle_events GROUP BY 1, 2",
    ),
    "events_by_day_course": (
        "daily event counts and distinct users per course and event name",
        "SELECT time_bucket(INTERVAL '1 day', time) AS day, courseid, eventname, count(*) AS events,"
        " count(DISTINCT userid) AS users FROM moodle_events GROUP BY 1, 2, 3",
    ),
}

OFF_HINT = 'or set timescaledb.enabled = "off" in the [timescaledb] section to use plain PostgreSQL'

_UNITS = ((86400, "day"), (3600, "hour"), (60, "minute"), (1, "second"))


def interval_text(seconds: int) -> str:
    """ "7 days", "30 minutes": the largest unit that divides exactly, as PostgreSQL reads it back."""
    for size, name in _UNITS:
        if seconds % size == 0:
            n = seconds // size
            return f"{n} {name}" if n == 1 else f"{n} {name}s"
    raise AssertionError("unreachable: every whole number of seconds divides by 1")


def _interval_sql(seconds: int | None) -> str:
    return "NULL" if seconds is None else f"INTERVAL '{interval_text(seconds)}'"


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


# -- detection ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Extension:
    """What this server and database offer, read from catalogs any role may read."""

    installed: str | None  # version created in this database (pg_extension)
    available: str | None  # version CREATE EXTENSION would install (pg_available_extensions)
    preloaded: bool  # in shared_preload_libraries, so the server can run it
    can_create: bool  # this role may CREATE EXTENSION timescaledb in this database
    role: str = ""
    database: str = ""


DETECT_SQL = """
SELECT (SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'),
       (SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'),
       (SELECT setting FROM pg_settings WHERE name = 'shared_preload_libraries'),
       current_setting('timescaledb.bgw_launcher_poll_time', true),
       coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = current_user), false),
       coalesce((SELECT v.trusted FROM pg_available_extension_versions v
                   JOIN pg_available_extensions a ON a.name = v.name AND a.default_version = v.version
                  WHERE v.name = 'timescaledb'), false),
       has_database_privilege(current_database(), 'CREATE'),
       current_user, current_database()
"""


def preload_listed(setting: str) -> bool:
    """True when a shared_preload_libraries value names timescaledb (also as '$libdir/timescaledb')."""
    names = [part.strip().strip('"').rsplit("/", 1)[-1] for part in setting.split(",")]
    return EXTENSION in names


def detect(conn: psycopg.Connection) -> Extension:
    """Read what the server offers, without loading TimescaleDB's library.

    shared_preload_libraries is hidden from roles without pg_read_all_settings (the row is simply
    absent from pg_settings); then a setting that only TimescaleDB's preloaded loader defines tells.
    """
    row = conn.execute(DETECT_SQL).fetchone()
    assert row is not None
    installed, available, preload, loader_setting, superuser, trusted, create_db, role, db = row
    preloaded = preload_listed(preload) if preload is not None else loader_setting is not None
    return Extension(installed=installed, available=available, preloaded=preloaded,
                     can_create=bool(superuser or (trusted and create_db)), role=role, database=db)


@dataclass(frozen=True)
class Mode:
    """What init-db does with the extension, decided from detection and timescaledb.enabled."""

    timescaledb: bool  # build the TimescaleDB layer
    text: str  # for the operator: "TimescaleDB 2.28.3", or "plain PostgreSQL: <why>"
    create_extension: bool = False
    error: str | None = None  # init-db refuses, saying what to do


def decide(ext: Extension, enabled: str) -> Mode:
    """The mode for ``enabled`` (auto, on, off) on a server offering ``ext``; pure, for tests.

    Never falls back silently: an extension that is there but unusable (not preloaded, too old, not
    creatable by this role) is an error with "auto" too, because the operator evidently meant to use it
    and a plain table built now would later need a locking conversion.
    """
    preload = ("set shared_preload_libraries = 'timescaledb' in postgresql.conf (added to any libraries "
               "already listed there, comma-separated) and restart PostgreSQL")
    if ext.installed and not ext.preloaded:
        # Whatever the setting: the hypertable's insert trigger needs the library, so writes would fail.
        return Mode(False, "TimescaleDB not preloaded", error=(
            f"the timescaledb extension is created in this database (version {ext.installed}) but not "
            f"preloaded, so PostgreSQL cannot use it and writes to its tables fail: {preload}"))
    if enabled == "off":
        return Mode(False, 'plain PostgreSQL: timescaledb.enabled = "off"')
    version = ext.installed or ext.available
    if version is None:
        why = "the timescaledb extension is not installed on this server (not in pg_available_extensions)"
        if enabled == "on":
            return Mode(False, f"plain PostgreSQL: {why}", error=(
                f'timescaledb.enabled = "on", but {why}: install TimescaleDB for this PostgreSQL '
                'server, or set timescaledb.enabled = "auto" or "off"'))
        return Mode(False, f"plain PostgreSQL: {why}")
    where = "created in this database" if ext.installed else "available on this server"
    if not ext.preloaded:
        return Mode(False, "TimescaleDB not preloaded", error=(
            f"the timescaledb extension is {where} (version {version}) but not preloaded, so PostgreSQL "
            f"cannot use it: {preload}, then run init-db again; {OFF_HINT}"))
    if _version_tuple(version) < MIN_VERSION:
        fix = ("install a newer TimescaleDB package, then run ALTER EXTENSION timescaledb UPDATE as "
               "the first command of a new session" if ext.installed
               else "install a newer TimescaleDB package")
        return Mode(False, f"TimescaleDB {version} too old", error=(
            f"TimescaleDB {version} is {where}, but this shipper needs "
            f"{'.'.join(map(str, MIN_VERSION))} or newer: {fix}; {OFF_HINT}"))
    if ext.installed:
        return Mode(True, f"TimescaleDB {ext.installed}")
    if not ext.can_create:
        return Mode(False, "TimescaleDB not created", error=(
            f"the timescaledb extension {version} is available but not created in database "
            f"{ext.database}, and role {ext.role} may not create it: have a superuser run "
            f"CREATE EXTENSION timescaledb; in database {ext.database} and run init-db again; {OFF_HINT}"))
    return Mode(True, f"TimescaleDB {version}", create_extension=True)


# -- what the settings ask for, and what the database has -------------------------------------------

@dataclass(frozen=True)
class Desired:
    """The [timescaledb] settings in seconds; None turns a policy off."""

    chunk_interval: int
    compress_after: int | None
    retain_for: int | None
    aggregate_refresh: int | None

    @classmethod
    def from_config(cls, cfg: TimescaleConfig) -> Desired:
        """:raises SchemaError: for combinations TimescaleDB would refuse halfway through init-db."""
        chunk = parse_interval(cfg.chunk_interval)
        if chunk is None:
            raise SchemaError('timescaledb.chunk_interval cannot be "off": use an interval such as "1 day"')
        desired = cls(chunk, parse_interval(cfg.compress_after), parse_interval(cfg.retain_for),
                      parse_interval(cfg.aggregate_refresh))
        if (desired.aggregate_refresh and desired.retain_for
                and desired.retain_for < MIN_RETENTION_WITH_AGGREGATES):
            raise SchemaError(
                f"timescaledb.retain_for = {cfg.retain_for!r} is too short for the continuous aggregates: "
                "their refresh window reaches back as far as the retention and must hold two whole "
                'days plus an hour; set retain_for to at least "3 days", or aggregate_refresh = "off"')
        return desired

    @property
    def aggregate_start_offset(self) -> int | None:
        """How far back a refresh looks for late events: the retention, so never into dropped chunks.

        A refresh over a range whose raw rows were dropped would empty the aggregates there; a chunk is
        dropped only when all of it is older than retain_for, and refreshes cover whole buckets inside
        the window, so a window as long as the retention is safe. Without retention: everything.
        """
        return self.retain_for


@dataclass
class Job:
    """One policy job as timescaledb_information.jobs shows it."""

    id: int
    schedule: int  # seconds
    config: dict[str, Any]
    seconds: dict[str, int | None]  # the config's intervals (compress_after, drop_after, ...) in seconds


@dataclass
class State:
    """The TimescaleDB objects of moodle_events found in the database."""

    hypertable: bool = False
    chunk_interval: int | None = None
    chunks: int = 0
    compressed_chunks: int = 0
    compression: bool = False
    segmentby: tuple[str, ...] = ()
    orderby: tuple[tuple[str, bool], ...] = ()
    sparse_index: tuple[tuple[str, str], ...] = ()  # configured explicitly (source "config")
    version: str = ""  # of the extension in this database; "" when unknown (--print-sql)
    has_rows: bool = False
    aggregates: set[str] = field(default_factory=set)
    conflicts: dict[str, str] = field(default_factory=dict)  # our aggregate names taken by others
    jobs: dict[str, Job] = field(default_factory=dict)  # "compression", "retention", aggregate name


STATE_HYPERTABLE = """
SELECT h.num_chunks, h.compression_enabled,
       (SELECT extract(epoch FROM d.time_interval)::bigint FROM timescaledb_information.dimensions d
         WHERE d.hypertable_schema = h.hypertable_schema AND d.hypertable_name = h.hypertable_name
           AND d.column_name = 'time'),
       (SELECT count(*) FROM timescaledb_information.chunks c
         WHERE c.hypertable_schema = h.hypertable_schema AND c.hypertable_name = h.hypertable_name
           AND c.is_compressed)
  FROM timescaledb_information.hypertables h
 WHERE h.hypertable_schema = %(schema)s AND h.hypertable_name = 'moodle_events'
"""
STATE_COMPRESSION = """
SELECT attname, segmentby_column_index, orderby_column_index, orderby_asc
  FROM timescaledb_information.compression_settings
 WHERE hypertable_schema = %(schema)s AND hypertable_name = 'moodle_events'
"""
STATE_AGGREGATES = """
SELECT view_name FROM timescaledb_information.continuous_aggregates
 WHERE hypertable_schema = %(schema)s AND hypertable_name = 'moodle_events' AND view_schema = %(schema)s
"""
STATE_JOBS = """
SELECT job_id, proc_name, hypertable_name, extract(epoch FROM schedule_interval)::bigint, config,
       extract(epoch FROM (config->>'compress_after')::interval)::bigint,
       extract(epoch FROM (config->>'drop_after')::interval)::bigint,
       extract(epoch FROM (config->>'start_offset')::interval)::bigint,
       extract(epoch FROM (config->>'end_offset')::interval)::bigint
  FROM timescaledb_information.jobs
 WHERE proc_name IN ('policy_compression', 'policy_retention', 'policy_refresh_continuous_aggregate')
   AND hypertable_schema = %(schema)s
   AND hypertable_name IN ('moodle_events', 'events_by_hour', 'events_by_day_course')
 ORDER BY job_id
"""


def events_schema(conn: psycopg.Connection) -> str | None:
    """The schema moodle_events lives in (the first of search_path when init-db made it)."""
    row = conn.execute("SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                       " WHERE c.oid = to_regclass('moodle_events')").fetchone()
    return row[0] if row else None


def read_state(conn: psycopg.Connection) -> State:
    """What the catalogs say; call only when the extension is created here and preloaded."""
    state = State()
    schema = events_schema(conn)
    if schema is None:
        return state
    params = {"schema": schema}
    row = conn.execute(STATE_HYPERTABLE, params).fetchone()
    if row:
        state.hypertable = True
        state.chunks, state.compression, state.chunk_interval, state.compressed_chunks = (
            int(row[0] or 0), bool(row[1]), row[2], int(row[3] or 0))
    segment: list[tuple[int, str]] = []
    order: list[tuple[int, str, bool]] = []
    for attname, seg_index, order_index, asc in conn.execute(STATE_COMPRESSION, params).fetchall():
        if seg_index is not None:
            segment.append((seg_index, attname))
        if order_index is not None:
            order.append((order_index, attname, bool(asc)))
    state.segmentby = tuple(name for _, name in sorted(segment))
    state.orderby = tuple((name, asc) for _, name, asc in sorted(order))
    row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    state.version = row[0] if row else ""
    if state.hypertable and _version_tuple(state.version) >= SPARSE_INDEX_VERSION:
        # to_jsonb: the view's columns have changed between releases; a missing one reads as NULL.
        row = conn.execute("SELECT to_jsonb(s)->'index' FROM timescaledb_information."
                           "hypertable_compression_settings s WHERE s.hypertable = to_regclass(%s)",
                           (f"{schema}.moodle_events",)).fetchone()
        entries = (row[0] if row else None) or []
        state.sparse_index = tuple(sorted(
            (e["type"], e["column"]) for e in entries
            if isinstance(e, dict) and e.get("source") == "config" and "type" in e and "column" in e))
    state.has_rows = bool(conn.execute("SELECT EXISTS (SELECT 1 FROM moodle_events)").fetchone()[0])  # type: ignore[index]
    state.aggregates = {r[0] for r in conn.execute(STATE_AGGREGATES, params).fetchall()}
    for name in AGGREGATES:
        if name not in state.aggregates:
            kind = conn.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)",
                                (f"{schema}.{name}",)).fetchone()
            if kind:
                state.conflicts[name] = {"r": "table", "v": "view", "m": "materialized view"}.get(
                    kind[0], "relation")
    for job_id, proc, target, schedule, config, compress, drop, start, end in conn.execute(
            STATE_JOBS, params).fetchall():
        key = {"policy_compression": "compression", "policy_retention": "retention"}.get(proc, target)
        if key in state.jobs:  # a second policy of one kind cannot be made by TimescaleDB's API
            continue
        state.jobs[key] = Job(int(job_id), int(schedule), dict(config or {}), {
            "compress_after": compress, "drop_after": drop, "start_offset": start, "end_offset": end})
    return state


# -- the steps from what is there to what is asked for -----------------------------------------------

@dataclass
class Step:
    """One change, described for the operator, with the SQL that makes it."""

    description: str
    sql: list[str]


def _segmentby_sql() -> str:
    return ", ".join(SEGMENT_BY)


def _sparse_sql(sparse: tuple[tuple[str, str], ...] = SPARSE_INDEX) -> str:
    return ", ".join(f"{kind}({column})" for kind, column in sparse)


SPARSE_INDEX_IF_SUPPORTED = (
    "DO $$ BEGIN IF (SELECT (regexp_match(extversion, '^(\\d+)\\.(\\d+)'))::int[] >= '{{{major},{minor}}}'"
    " FROM pg_extension WHERE extname = 'timescaledb') THEN ALTER TABLE moodle_events SET"
    " (timescaledb.compress_index = '{sparse}'); END IF; END $$")


def _orderby_sql(orderby: tuple[tuple[str, bool], ...] = ORDER_BY) -> str:
    return ", ".join(f"{name} {'ASC' if asc else 'DESC'}" for name, asc in orderby)


def _alter_job(job: Job, changes: dict[str, int | None], schedule: int | None = None) -> str:
    config = dict(job.config)
    for key, seconds in changes.items():
        config[key] = None if seconds is None else interval_text(seconds)
    literal = json.dumps(config, sort_keys=True).replace("'", "''")
    args = [str(job.id), f"config => '{literal}'::jsonb"]
    if schedule is not None:
        # A new schedule_interval would otherwise make the job due at once (next_start -infinity).
        args += [f"schedule_interval => {_interval_sql(schedule)}",
                 f"next_start => now() + {_interval_sql(FIRST_RUN_DELAY)}"]
    return f"SELECT alter_job({', '.join(args)})"


def _first_run() -> str:
    return f"initial_start => now() + {_interval_sql(FIRST_RUN_DELAY)}"


def _was(old: int | None) -> str:
    return "off" if old is None else interval_text(old)


def plan(desired: Desired, state: State, create_extension: bool = False,
         version: str = "", community: bool = True) -> list[Step]:
    """The steps that turn ``state`` into what ``desired`` asks for; empty when nothing differs.

    :param community: False for TimescaleDB's Apache-2 edition, which has hypertables only: no
        compression, no policies, no continuous aggregates (see :func:`apache_skipped`).
    """
    steps: list[Step] = []
    if create_extension:
        steps.append(Step(f"timescaledb extension {version} created in this database".replace("  ", " "),
                          ["CREATE EXTENSION IF NOT EXISTS timescaledb"]))
    chunk = _interval_sql(desired.chunk_interval)
    if not state.hypertable:
        moved = " (its rows were moved into chunks, the table locked meanwhile)" if state.has_rows else ""
        steps.append(Step(
            "hypertable: moodle_events partitioned on time, chunks of "
            f"{interval_text(desired.chunk_interval)}{moved}",
            [f"SELECT create_hypertable('moodle_events', by_range('time', {chunk}),"
             " create_default_indexes => false, if_not_exists => true, migrate_data => true)"]))
    elif state.chunk_interval != desired.chunk_interval:
        steps.append(Step(
            f"chunk interval: {_was(state.chunk_interval)} -> {interval_text(desired.chunk_interval)} "
            "(for chunks created from now on; existing chunks keep theirs)",
            [f"SELECT set_chunk_time_interval('moodle_events', {chunk})"]))
    if not community:
        return steps
    # Unknown version (--print-sql): decided by the server when the script runs.
    sparse = (None if not state.version
              else _version_tuple(state.version) >= SPARSE_INDEX_VERSION)
    if (not state.compression or state.segmentby != SEGMENT_BY or state.orderby != ORDER_BY
            or (sparse and state.sparse_index != tuple(sorted(SPARSE_INDEX)))):
        was = ""
        if state.compression:
            was = (f" (was segment by {', '.join(state.segmentby) or 'nothing'}; order by "
                   f"{_orderby_sql(state.orderby)}; sparse indexes "
                   f"{_sparse_sql(state.sparse_index) or 'derived'}; chunks compressed before keep theirs)")
        sql = [f"ALTER TABLE moodle_events SET (timescaledb.compress, timescaledb.compress_segmentby = "
               f"'{_segmentby_sql()}', timescaledb.compress_orderby = '{_orderby_sql()}'"
               + (f", timescaledb.compress_index = '{_sparse_sql()}')" if sparse else ")")]
        if sparse is None:
            sql.append(SPARSE_INDEX_IF_SUPPORTED.format(
                major=SPARSE_INDEX_VERSION[0], minor=SPARSE_INDEX_VERSION[1], sparse=_sparse_sql()))
        index = f"; sparse index {_sparse_sql()}" if sparse is not False else ""
        steps.append(Step(
            f"compression: segment by {_segmentby_sql()}; order by {_orderby_sql()}{index}{was}", sql))
    steps += _table_policy(
        "compression policy", "compress chunks older than", "compress_after", desired.compress_after,
        state.jobs.get("compression"), "add_compression_policy", "remove_compression_policy")
    steps += _table_policy(
        "retention policy", "drop chunks older than", "drop_after", desired.retain_for,
        state.jobs.get("retention"), "add_retention_policy", "remove_retention_policy")
    for name, (what, query) in AGGREGATES.items():
        if name in state.conflicts:
            raise SchemaError(
                f"a {state.conflicts[name]} named {name} exists and is not this shipper's continuous "
                f"aggregate: rename or drop it, then run init-db again")
        if name not in state.aggregates:
            steps.append(Step(
                f"continuous aggregate {name}: {what}",
                [f"CREATE MATERIALIZED VIEW IF NOT EXISTS {name} WITH (timescaledb.continuous,"
                 f" timescaledb.materialized_only = false) AS {query} WITH NO DATA"]))
        steps += _aggregate_policy(name, desired, state.jobs.get(name))
    return steps


def _table_policy(label: str, verb: str, key: str, want: int | None, job: Job | None,
                  add: str, remove: str) -> list[Step]:
    if want is None:
        if job is None:
            return []
        return [Step(f"{label} removed (was {_was(job.seconds[key])}; the setting is off)",
                     [f"SELECT {remove}('moodle_events', if_exists => true)"])]
    if job is None:
        return [Step(f"{label}: {verb} {interval_text(want)}",
                     [f"SELECT {add}('moodle_events', {_interval_sql(want)}, if_not_exists => true, "
                      f"{_first_run()})"])]
    if job.seconds[key] != want:
        return [Step(f"{label}: {verb} {_was(job.seconds[key])} -> {interval_text(want)}",
                     [_alter_job(job, {key: want})])]
    return []


def _aggregate_policy(name: str, desired: Desired, job: Job | None) -> list[Step]:
    every, start = desired.aggregate_refresh, desired.aggregate_start_offset
    window = (f"the last {interval_text(start)}" if start is not None else "all time") + \
        f" up to {interval_text(AGGREGATE_END_OFFSET)} ago"
    if every is None:
        if job is None:
            return []
        return [Step(f"refresh policy of {name} removed (the setting is off; queries still see new "
                     "events through real-time aggregation, more slowly)",
                     [f"SELECT remove_continuous_aggregate_policy('{name}', if_exists => true)"])]
    if job is None:
        return [Step(f"refresh policy of {name}: every {interval_text(every)}, window {window}",
                     [f"SELECT add_continuous_aggregate_policy('{name}', start_offset => "
                      f"{_interval_sql(start)}, end_offset => {_interval_sql(AGGREGATE_END_OFFSET)}, "
                      f"schedule_interval => {_interval_sql(every)}, if_not_exists => true, "
                      f"{_first_run()})"])]
    want = {"start_offset": start, "end_offset": AGGREGATE_END_OFFSET}
    changed = {k: v for k, v in want.items() if job.seconds[k] != v}
    if not changed and job.schedule == every:
        return []
    was = f"every {_was(job.schedule)}, window {_was(job.seconds['start_offset'])}"
    return [Step(f"refresh policy of {name}: {was} -> every {interval_text(every)}, window {window}",
                 [_alter_job(job, want, every if job.schedule != every else None)])]


APACHE = ("TimescaleDB's Apache-2 edition is loaded (timescaledb.license = 'apache'), which has no "
          "compression, policies or continuous aggregates; the Community edition has them")


def license_of(conn: psycopg.Connection) -> str | None:
    """ "timescale" (Community) or "apache", once the extension is loaded in this session."""
    row = conn.execute("SELECT current_setting('timescaledb.license', true)").fetchone()
    return row[0] if row else None


def apache_skipped(desired: Desired) -> list[str]:
    """What the Apache-2 edition goes without, for init-db's report."""
    return skipped(desired, APACHE)[1:]


def skipped(desired: Desired, reason: str) -> list[str]:
    """Every feature plain PostgreSQL goes without, each with ``reason``, for init-db's report."""
    out = [f"hypertable ({interval_text(desired.chunk_interval)} chunks): {reason}"]
    if desired.compress_after:
        out.append(f"compression of chunks older than {interval_text(desired.compress_after)}: {reason}")
    if desired.retain_for:
        out.append(f"retention of {interval_text(desired.retain_for)}: {reason}; moodle_events keeps "
                   "every row until you delete old ones yourself (see docs/database.md)")
    out.append(f"continuous aggregates {', '.join(AGGREGATES)}: {reason}; "
               "'moodle-tsdb-shipper stats' reads moodle_events instead")
    return out


def policies_off(desired: Desired) -> list[str]:
    """The policies the settings turn off, for init-db's report in TimescaleDB mode."""
    out = []
    if desired.compress_after is None:
        out.append("compression policy: timescaledb.compress_after is off (chunks can still be "
                   "compressed by hand with compress_chunk)")
    if desired.retain_for is None:
        out.append("retention policy: timescaledb.retain_for is off (moodle_events keeps every row)")
    if desired.aggregate_refresh is None:
        out.append("refresh policies of the continuous aggregates: timescaledb.aggregate_refresh is off "
                   "(they answer from moodle_events through real-time aggregation, more slowly)")
    return out


def summary(version: str, state: State) -> str:
    """One line for ``check``: what the database has."""
    parts = [f"TimescaleDB {version}"]
    if not state.hypertable:
        return parts[0] + ": moodle_events is not a hypertable yet"
    parts.append(f"hypertable, chunks of {_was(state.chunk_interval)} ({state.chunks} chunks, "
                 f"{state.compressed_chunks} compressed)")
    for key, label, conf in (("compression", "compression after", "compress_after"),
                             ("retention", "retention", "drop_after")):
        job = state.jobs.get(key)
        parts.append(f"{label} {_was(job.seconds[conf])}" if job else f"no {key} policy")
    aggs = [f"{name} (refresh every {_was(state.jobs[name].schedule)})" if name in state.jobs
            else f"{name} (no refresh policy)" for name in AGGREGATES if name in state.aggregates]
    parts.append("continuous aggregates " + ", ".join(aggs) if aggs else "no continuous aggregates")
    return "; ".join(parts)
