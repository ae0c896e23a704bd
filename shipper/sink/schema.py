"""The database schema: moodle_events, its indexes, the shipper's own tables, and their versions.

``init-db`` applies numbered migrations, each once, then reconciles the TimescaleDB layer (tsdb.py) with
the settings, all inside one transaction under an advisory lock, so running it twice or from two hosts
at once is safe and a failure changes nothing. The shipper itself never changes the schema: it only
checks, at start and for /readyz, that the version it needs is there.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from ..config import TimescaleConfig
from ..errors import SchemaError
from . import tsdb

SCHEMA_VERSION = 1
# pg_advisory_xact_lock key: "mdlship" in ASCII, so a DBA can recognise it in pg_locks.
INIT_LOCK_KEY = 0x6D646C73686970

EVENT_COLUMNS_DDL = """
    time              TIMESTAMPTZ NOT NULL,
    eventname         TEXT NOT NULL,
    component         TEXT,
    action            TEXT,
    target            TEXT,
    crud              CHAR(1),
    edulevel          SMALLINT,
    anonymous         SMALLINT,
    courseid          BIGINT,
    contextid         BIGINT,
    contextlevel      INTEGER,
    contextinstanceid BIGINT,
    userid            BIGINT,
    relateduserid     BIGINT,
    realuserid        BIGINT,
    objectid          BIGINT,
    objecttable       TEXT,
    ip                INET,
    origin            TEXT,
    other             JSONB
"""

# Leading with time ASC, not the seed's DESC: events arrive in time order, so every insert lands on
# the right-most b-tree page, which PostgreSQL fills to 90% and appends to without a descent; DESC
# splits the left-most page in halves. Measured in BENCHMARKS.md; backward scans serve "latest first".
EVENT_INDEXES: tuple[tuple[str, str], ...] = (
    ("moodle_events_time_eventname_idx", "(time, eventname)"),
    ("moodle_events_time_courseid_idx", "(time, courseid) WHERE courseid > 0"),
    ("moodle_events_time_userid_idx", "(time, userid)"),
    ("moodle_events_time_component_action_idx", "(time, component, action)"),
)

SHIPPER_TABLES_DDL = """
CREATE TABLE IF NOT EXISTS shipper_checkpoints (
    source_id   TEXT NOT NULL,
    file_key    TEXT NOT NULL,
    path        TEXT NOT NULL,
    byte_offset BIGINT NOT NULL CHECK (byte_offset >= 0),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (source_id, file_key)
);
CREATE TABLE IF NOT EXISTS shipper_dead_letter (
    id          BIGSERIAL PRIMARY KEY,
    source_id   TEXT NOT NULL,
    file_key    TEXT,
    path        TEXT NOT NULL,
    line_offset BIGINT NOT NULL,
    line_length BIGINT NOT NULL,
    reason      TEXT NOT NULL,
    detail      TEXT,
    raw         BYTEA NOT NULL,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS shipper_dead_letter_received_at_idx ON shipper_dead_letter (received_at);
COMMENT ON COLUMN shipper_dead_letter.raw IS
    'the line as read (first 64 KiB when longer); BYTEA because it may not be UTF-8';
"""


@dataclass
class Report:
    """What init-db did and did not do, in words for the operator."""

    applied: list[str]
    skipped: list[str]
    version: int
    mode: str = ""  # "TimescaleDB 2.28.3" or "plain PostgreSQL: <why>"


MIGRATIONS: dict[int, tuple[str, list[str]]] = {
    1: (
        "moodle_events with its four indexes; shipper_checkpoints; shipper_dead_letter",
        [f"CREATE TABLE IF NOT EXISTS moodle_events ({EVENT_COLUMNS_DDL})"]
        + [f"CREATE INDEX IF NOT EXISTS {name} ON moodle_events {definition}"
           for name, definition in EVENT_INDEXES]
        + [SHIPPER_TABLES_DDL],
    ),
}
VERSION_TABLE_DDL = (
    "CREATE TABLE IF NOT EXISTS shipper_schema_version ("
    " version INTEGER PRIMARY KEY,"
    " applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),"
    " description TEXT NOT NULL)"
)
RECORD_VERSION = "INSERT INTO shipper_schema_version (version, description) VALUES (%s, %s)"


def grant_statements(role: str, aggregates: bool) -> list[str]:
    """What ``run``, ``status`` and ``stats`` need and nothing more, for ``role``.

    pg_try_advisory_lock (one shipper per source_id) needs no privilege. On a hypertable, TimescaleDB
    passes grants on moodle_events on to every chunk, present and future, compressed or not.
    """
    who = quote_ident(role)
    out = [
        f"GRANT SELECT, INSERT ON moodle_events TO {who}",
        f"GRANT SELECT, INSERT, UPDATE ON shipper_checkpoints TO {who}",
        f"GRANT SELECT, INSERT ON shipper_dead_letter TO {who}",
        f"GRANT USAGE ON SEQUENCE shipper_dead_letter_id_seq TO {who}",
        f"GRANT SELECT ON shipper_schema_version TO {who}",
    ]
    if aggregates:
        out.append(f"GRANT SELECT ON {', '.join(tsdb.AGGREGATES)} TO {who}")
    return out


def quote_ident(name: str) -> str:
    """A role name as an SQL identifier, always quoted (a role may be called "user"), as printed and run."""
    return '"' + name.replace('"', '""') + '"'


def _sql(statement: str) -> str:
    return statement.strip().rstrip(";") + ";"


def script(settings: TimescaleConfig | None = None, grant_to: str | None = None,
           from_version: int = 0) -> str:
    """The SQL init-db runs on a new database (at ``from_version``), as one transaction a DBA can apply.

    Without a connection the mode cannot be detected, so the TimescaleDB part follows the settings:
    included unless timescaledb.enabled = "off". For an existing database init-db computes the changes
    itself (or ``check`` lists them); re-applying this script leaves existing policies as they are.
    """
    settings = settings or TimescaleConfig()
    use_tsdb = settings.enabled != "off"
    desired = tsdb.Desired.from_config(settings)
    lines = [f"-- moodle-tsdb-shipper: schema version {SCHEMA_VERSION} for a new database.",
             "-- Run as the role that will own the tables (init-db's role); CREATE EXTENSION may need a "
             "superuser."]
    if use_tsdb:
        lines.append("-- TimescaleDB part per the [timescaledb] settings: chunks "
                     f"{settings.chunk_interval}, compress_after {settings.compress_after}, retain_for "
                     f"{settings.retain_for}, aggregate_refresh {settings.aggregate_refresh}. For a server "
                     'without TimescaleDB: --set timescaledb.enabled=off')
    else:
        lines.append('-- timescaledb.enabled = "off": plain PostgreSQL, no TimescaleDB objects.')
    lines += ["BEGIN;", f"SELECT pg_advisory_xact_lock({INIT_LOCK_KEY});"]
    if use_tsdb:
        lines.append("CREATE EXTENSION IF NOT EXISTS timescaledb;")
    lines.append(_sql(VERSION_TABLE_DDL))
    for version in range(from_version + 1, SCHEMA_VERSION + 1):
        description, statements = MIGRATIONS[version]
        lines += [_sql(s) for s in statements]
        lines.append(RECORD_VERSION.replace("%s", "{}").format(
            version, "'" + description.replace("'", "''") + "'") + " ON CONFLICT (version) DO NOTHING;")
    if use_tsdb:
        for step in tsdb.plan(desired, tsdb.State()):
            lines.append(f"-- {step.description}")
            lines += [_sql(s) for s in step.sql]
    if grant_to:
        lines.append(f"-- what 'moodle-tsdb-shipper run' needs, for role {grant_to}")
        lines += [_sql(s) for s in grant_statements(grant_to, aggregates=use_tsdb)]
    lines.append("COMMIT;")
    return "\n".join(lines) + "\n"


def current_version(conn: psycopg.Connection) -> int:
    """The schema version recorded in the database; 0 when init-db never ran."""
    exists = conn.execute("SELECT to_regclass('shipper_schema_version') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return 0
    row = conn.execute("SELECT max(version) FROM shipper_schema_version").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def init_db(conn: psycopg.Connection, settings: TimescaleConfig | None = None,
            grant_to: str | None = None) -> Report:
    """Create or upgrade the schema in place; idempotent and safe to run concurrently.

    Everything happens in one transaction under an advisory lock: a second init-db waits for the first
    and then finds nothing to do, and a failure anywhere leaves the database as it was.

    :param settings: the [timescaledb] section (defaults when None).
    :param grant_to: a role to grant what ``run`` needs.
    :raises SchemaError: with what to do, when the extension is unusable or a statement fails.
    """
    settings = settings or TimescaleConfig()
    desired = tsdb.Desired.from_config(settings)
    applied: list[str] = []
    skipped: list[str] = []
    mode_text = ""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (INIT_LOCK_KEY,))
        # Decided before anything is created: an unusable extension must not leave a plain table
        # behind that a later init-db would have to convert under a lock.
        ext = tsdb.detect(conn)
        mode = tsdb.decide(ext, settings.enabled)
        if mode.error:
            raise SchemaError(mode.error)
        mode_text = mode.text
        if mode.create_extension:
            _execute(conn, "CREATE EXTENSION IF NOT EXISTS timescaledb", "CREATE EXTENSION timescaledb")
            applied.append(f"timescaledb extension {ext.available} created in this database")
        conn.execute(VERSION_TABLE_DDL)
        have = current_version(conn)
        if have > SCHEMA_VERSION:
            raise SchemaError(
                f"the database has schema version {have}, newer than this shipper's "
                f"{SCHEMA_VERSION}: upgrade moodle-tsdb-shipper"
            )
        for version in range(have + 1, SCHEMA_VERSION + 1):
            description, statements = MIGRATIONS[version]
            for statement in statements:
                _execute(conn, statement, f"schema version {version}")
            conn.execute(RECORD_VERSION, (version, description))
            applied.append(f"schema version {version}: {description}")
        if mode.timescaledb:
            community = tsdb.license_of(conn) != "apache"
            for step in tsdb.plan(desired, tsdb.read_state(conn), community=community):
                for statement in step.sql:
                    _execute(conn, statement, step.description)
                applied.append(step.description)
            skipped += tsdb.policies_off(desired) if community else tsdb.apache_skipped(desired)
            if not community:
                mode_text += " (Apache-2 edition: the hypertable only)"
        else:
            if ext.installed and ext.preloaded and tsdb.read_state(conn).hypertable:
                mode_text = f'TimescaleDB {ext.installed}, left as it is (timescaledb.enabled = "off")'
                skipped.append(
                    'TimescaleDB layer: timescaledb.enabled = "off", so the hypertable, its policies and '
                    "the continuous aggregates already in this database are left exactly as they are")
            else:
                skipped += tsdb.skipped(desired, mode.text.removeprefix("plain PostgreSQL: "))
        if grant_to:
            for statement in grant_statements(grant_to, aggregates=_has_aggregates(conn)):
                _execute(conn, statement, f"grants to {grant_to}")
            applied.append(f"grants: role {grant_to} may run the shipper (INSERT and SELECT on "
                           "moodle_events, read/write on the shipper tables)")
    return Report(applied=applied, skipped=skipped, version=SCHEMA_VERSION, mode=mode_text)


def _has_aggregates(conn: psycopg.Connection) -> bool:
    return all(conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0]  # type: ignore[index]
               for name in tsdb.AGGREGATES)


def _execute(conn: psycopg.Connection, statement: str, doing: str) -> None:
    """Run one statement; a failure becomes a SchemaError saying which step and that nothing changed."""
    try:
        conn.execute(statement)
    except psycopg.Error as exc:
        diag = exc.diag
        message = diag.message_primary or str(exc).strip()
        hint = ""
        if exc.sqlstate == "42501":
            hint = (" (init-db needs a role that owns the tables and may create them, and a superuser "
                    "for CREATE EXTENSION; or have a DBA apply 'init-db --print-sql')")
        elif exc.sqlstate == "42704" and "role" in doing:
            hint = " (create the role first: CREATE ROLE name LOGIN)"
        raise SchemaError(f"init-db failed at {doing!r}: {message} [SQLSTATE {exc.sqlstate}]{hint}; "
                          "nothing was changed") from None


def describe(conn: psycopg.Connection, settings: TimescaleConfig) -> tuple[bool, str, list[str]]:
    """For ``check``: (usable as configured, the storage mode in words, what init-db would change)."""
    ext = tsdb.detect(conn)
    mode = tsdb.decide(ext, settings.enabled)
    if mode.error:
        return False, mode.error, []
    try:
        desired = tsdb.Desired.from_config(settings)
    except SchemaError as exc:
        return False, str(exc), []
    if ext.installed and ext.preloaded and tsdb.events_schema(conn) is not None:
        state = tsdb.read_state(conn)
        if not mode.timescaledb:
            if state.hypertable:
                return True, (tsdb.summary(ext.installed, state) + '; timescaledb.enabled = "off": '
                              "init-db leaves these as they are"), []
            return True, mode.text, []
        community = tsdb.license_of(conn) != "apache"
        pending = [s.description for s in tsdb.plan(desired, state, community=community)]
        text = tsdb.summary(ext.installed, state) + ("" if community else f" ({tsdb.APACHE})")
        return True, text, pending
    if mode.timescaledb and not ext.installed:
        return True, (f"plain PostgreSQL so far: TimescaleDB {ext.available} is available and init-db "
                      "will create the extension"), [
            s.description for s in tsdb.plan(desired, tsdb.State(), True, ext.available or "")]
    return True, mode.text if not mode.timescaledb else f"{mode.text} (schema not created yet)", []


def check(conn: psycopg.Connection) -> str | None:
    """None when the schema is usable by ``run``; otherwise the reason, with what to do."""
    try:
        version = current_version(conn)
    except psycopg.Error as exc:
        return f"cannot read the schema version: {exc.diag.message_primary or exc}"
    if version == 0:
        return "the schema is missing: run 'moodle-tsdb-shipper init-db'"
    if version < SCHEMA_VERSION:
        return (f"the schema is version {version}, this shipper needs {SCHEMA_VERSION}: "
                "run 'moodle-tsdb-shipper init-db' to upgrade it")
    if version > SCHEMA_VERSION:
        return f"the schema is version {version}, newer than this shipper: upgrade the shipper"
    return None
