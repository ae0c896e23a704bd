"""The database schema: moodle_events, its indexes, the shipper's own tables, and their versions.

``init-db`` applies numbered migrations, each once, inside one transaction under an advisory lock, so
running it twice or from two hosts at once is safe. The shipper itself never changes the schema: it
only checks, at start and for /readyz, that the version it needs is there.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from ..errors import SchemaError

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


def script(from_version: int = 0) -> str:
    """The SQL init-db runs on a database at ``from_version``, as one transaction a DBA can apply."""
    lines = ["BEGIN;", f"SELECT pg_advisory_xact_lock({INIT_LOCK_KEY});", VERSION_TABLE_DDL + ";"]
    for version in range(from_version + 1, SCHEMA_VERSION + 1):
        description, statements = MIGRATIONS[version]
        lines += [s.strip().rstrip(";") + ";" for s in statements]
        lines.append(RECORD_VERSION.replace("%s", "{}").format(
            version, "'" + description.replace("'", "''") + "'") + ";")
    lines.append("COMMIT;")
    return "\n".join(lines) + "\n"


def current_version(conn: psycopg.Connection) -> int:
    """The schema version recorded in the database; 0 when init-db never ran."""
    exists = conn.execute("SELECT to_regclass('shipper_schema_version') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return 0
    row = conn.execute("SELECT max(version) FROM shipper_schema_version").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def init_db(conn: psycopg.Connection) -> Report:
    """Create or upgrade the schema in place; idempotent and safe to run concurrently."""
    applied: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (INIT_LOCK_KEY,))
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
                conn.execute(statement)
            conn.execute(RECORD_VERSION, (version, description))
            applied.append(f"schema version {version}: {description}")
    return Report(applied=applied, skipped=[], version=SCHEMA_VERSION)


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
