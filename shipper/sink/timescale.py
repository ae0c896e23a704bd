"""Deliver batches: rows, dead letters and offsets in ONE transaction, so the database is the truth.

The fast path streams rows into an open COPY while the tail is still parsing (the server indexes one
piece while Python parses the next), then commits. When anything fails the transaction is rolled back
and the whole batch is replayed from memory: first asking the database whether the batch's offsets are
already there (a COMMIT whose answer was lost must not be applied twice), then copying it again under
savepoints that split it in halves until the rows the database rejects are isolated and dead-lettered.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence

import psycopg
from psycopg import sql

from ..buffer import Batch
from ..errors import SchemaError
from ..parse import COLUMNS, REJECTED_BY_DATABASE
from . import schema
from .retry import Action, classify

log = logging.getLogger(__name__)

COPY_SQL = sql.SQL("COPY moodle_events ({}) FROM STDIN").format(
    sql.SQL(", ").join(sql.Identifier(c) for c in COLUMNS)
)
COPY_PIECE_ROWS = 128

UPSERT_CHECKPOINTS = """
INSERT INTO shipper_checkpoints (source_id, file_key, path, byte_offset, updated_at)
SELECT %s, k, p, o, now() FROM unnest(%s::text[], %s::text[], %s::bigint[]) AS t(k, p, o)
ON CONFLICT (source_id, file_key) DO UPDATE
   SET path = EXCLUDED.path, byte_offset = EXCLUDED.byte_offset, updated_at = EXCLUDED.updated_at
"""
INSERT_DEAD_LETTER = """
INSERT INTO shipper_dead_letter (source_id, file_key, path, line_offset, line_length, reason, detail, raw)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
"""


class SourceBusy(SchemaError):
    """Another shipper with the same source_id holds this database's lock for it."""


class Sink:
    """One connection to the database and the batch transaction on it.

    :param conninfo: libpq connection string (with the password: never log it).
    :param source_id: the checkpoints this shipper owns.
    """

    def __init__(self, conninfo: str, source_id: str, statement_timeout: float, target: str) -> None:
        self.conninfo = conninfo
        self.source_id = source_id
        self.statement_timeout_ms = int(statement_timeout * 1000)
        self.target = target  # redacted, for messages
        self.conn: psycopg.Connection | None = None
        self._copy: contextlib.ExitStack | None = None
        self._copy_obj: psycopg.Copy | None = None

    # -- connection -------------------------------------------------------------------------

    def connect(self) -> psycopg.Connection:
        """Connect, check the schema, and take this source's lock; return the connection."""
        if self.conn is not None and not self.conn.closed:
            return self.conn
        self.close()
        conn = psycopg.connect(self.conninfo, autocommit=True)
        try:
            conn.execute(sql.SQL("SET statement_timeout = {}").format(self.statement_timeout_ms))
            problem = schema.check(conn)
            if problem:
                raise SchemaError(f"database {self.target}: {problem}")
            got = conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))",
                               (f"moodle-tsdb-shipper:{self.source_id}",)).fetchone()
            if not got or not got[0]:
                raise SourceBusy(
                    f"another shipper with source_id {self.source_id!r} is connected to {self.target}: "
                    "each shipper needs its own source_id (two with one id would ship files twice)"
                )
            conn.autocommit = False
        except BaseException:
            conn.close()
            raise
        self.conn = conn
        return conn

    def close(self) -> None:
        self._copy = None
        self._copy_obj = None
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
        self.conn = None

    @property
    def connected(self) -> bool:
        return self.conn is not None and not self.conn.closed and not self.conn.broken

    def load_checkpoints(self) -> dict[str, int]:
        """Committed offsets of this source, the authority on where each file continues."""
        conn = self.connect()
        with conn.transaction():
            rows = conn.execute(
                "SELECT file_key, byte_offset FROM shipper_checkpoints WHERE source_id = %s",
                (self.source_id,),
            ).fetchall()
        return {key: int(offset) for key, offset in rows}

    # -- the fast path: stream while parsing --------------------------------------------------

    @property
    def streaming(self) -> bool:
        return self._copy_obj is not None

    def stream(self, rows: Sequence[bytes]) -> None:
        """Send rows into the batch's COPY, opening transaction and COPY on the first call."""
        if self._copy_obj is None:
            conn = self.connect()
            stack = contextlib.ExitStack()
            self._copy_obj = stack.enter_context(conn.cursor().copy(COPY_SQL))
            self._copy = stack
        write = self._copy_obj.write
        for i in range(0, len(rows), COPY_PIECE_ROWS):
            write(b"".join(rows[i:i + COPY_PIECE_ROWS]))

    def commit(self, batch: Batch) -> None:
        """End the COPY begun by stream() and commit it with the batch's dead letters and offsets."""
        conn = self.connect()
        if self._copy is not None:
            stack, self._copy, self._copy_obj = self._copy, None, None
            stack.close()
        with conn.cursor() as cur:
            self._write_dead_letters(cur, batch, [])
            self._write_checkpoints(cur, batch)
        conn.commit()

    def abandon(self) -> None:
        """Roll back whatever the fast path had started; the batch stays in memory for replay."""
        stack, self._copy, self._copy_obj = self._copy, None, None
        if stack is not None:
            with contextlib.suppress(Exception):
                stack.__exit__(RuntimeError, RuntimeError("batch abandoned"), None)
        if self.conn is not None:
            try:
                self.conn.rollback()
            except Exception:
                self.close()

    # -- the careful path: replay after a failure --------------------------------------------

    def replay(self, batch: Batch) -> list[int]:
        """Ship the batch again, isolating rows the database rejects; return their indexes."""
        conn = self.connect()
        rejected: list[tuple[int, str]] = []
        with conn.cursor() as cur:
            if batch.rows:
                self._copy_isolating(cur, batch, list(range(len(batch.rows))), rejected)
            self._write_dead_letters(cur, batch, rejected)
            self._write_checkpoints(cur, batch)
        conn.commit()
        return [i for i, _ in rejected]

    def _copy_isolating(self, cur: psycopg.Cursor, batch: Batch, idx: list[int],
                        rejected: list[tuple[int, str]]) -> None:
        """COPY rows ``idx`` under a savepoint; on a data error split them until each bad row is alone."""
        cur.execute("SAVEPOINT shipper_rows")
        try:
            with cur.copy(COPY_SQL) as copy:
                for i in range(0, len(idx), COPY_PIECE_ROWS):
                    copy.write(b"".join(batch.rows[j] for j in idx[i:i + COPY_PIECE_ROWS]))
        except psycopg.Error as exc:
            if classify(exc) is not Action.DATA:
                raise
            cur.execute("ROLLBACK TO SAVEPOINT shipper_rows")
            if len(idx) == 1:
                diag = exc.diag
                detail = f"SQLSTATE {exc.sqlstate}: {diag.message_primary or exc}"
                if diag.message_detail:
                    detail += f" ({diag.message_detail})"
                rejected.append((idx[0], detail[:1000]))
                return
            half = len(idx) // 2
            self._copy_isolating(cur, batch, idx[:half], rejected)
            self._copy_isolating(cur, batch, idx[half:], rejected)
            return
        cur.execute("RELEASE SAVEPOINT shipper_rows")

    # -- the rest of the transaction ----------------------------------------------------------

    def _write_dead_letters(self, cur: psycopg.Cursor, batch: Batch,
                            rejected: list[tuple[int, str]]) -> None:
        params = []
        for src_index, dead in batch.dead:
            src = batch.sources[src_index]
            params.append((self.source_id, src.key, src.path, dead.offset, dead.length, dead.reason,
                           dead.detail, dead.raw))
        for row_index, detail in rejected:
            src = batch.sources[batch.row_sources[row_index]]
            raw = batch.raws[row_index]
            params.append((self.source_id, src.key, src.path, batch.offsets[row_index], len(raw),
                           REJECTED_BY_DATABASE, detail, raw))
        if params:
            cur.executemany(INSERT_DEAD_LETTER, params)

    def _write_checkpoints(self, cur: psycopg.Cursor, batch: Batch) -> None:
        sources = batch.sources
        cur.execute(UPSERT_CHECKPOINTS, (self.source_id, [s.key for s in sources],
                                         [s.path for s in sources], [s.end for s in sources]))
