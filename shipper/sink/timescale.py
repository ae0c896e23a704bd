"""Deliver batches: rows, dead letters and offsets in ONE transaction, so the database is the truth.

The fast path streams rows into an open COPY while the tail is still parsing (the server indexes one
piece while Python parses the next), then commits. When anything fails the transaction is rolled back
and the whole batch is replayed from memory: first asking the database whether the batch's offsets are
already there (a COMMIT whose answer was lost must not be applied twice), then copying it again under
savepoints that split it in halves until the rows the database rejects are isolated and dead-lettered.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence

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


# How long past statement_timeout a call may wait for the server's answer before the connection is
# taken for dead. A live server cancels a statement at statement_timeout and says so at once.
REPLY_GRACE = 5.0


class SourceBusy(SchemaError):
    """Another shipper with the same source_id holds this database's lock for it."""


class ReplyGuard:
    """Shuts a connection's socket down when a call waits longer than ``timeout`` for the server.

    libpq has no read timeout of its own. statement_timeout is enforced by the server, keepalives and
    tcp_user_timeout by the peer's kernel; a path that takes the bytes and never answers (a hung proxy
    or pooler, a stopped backend, a middlebox that still acknowledges) leaves a call waiting forever.
    Shutting the socket down from this thread makes the blocked call fail as a lost connection
    (OperationalError, transient), and the batch is replayed on a new one.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.fired = 0
        self._cond = threading.Condition()
        self._fd: int | None = None
        self._deadline = 0.0
        self._thread: threading.Thread | None = None
        self._parked = False  # the watcher waits for a call to guard, with no deadline

    @contextlib.contextmanager
    def armed(self, conn: psycopg.Connection) -> Iterator[None]:
        """Guard the calls made on ``conn`` inside the block (the deadline restarts with touch())."""
        with self._cond:
            self._fd = conn.pgconn.socket
            self._deadline = time.monotonic() + self.timeout
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="reply-guard", daemon=True)
                self._thread.start()
            # Only a parked watcher needs waking. One waiting for an earlier deadline wakes by itself
            # and sees the later one (deadlines only move later: the timeout is fixed). Waking it on
            # every call cost the parsing thread a GIL hand-over per COPY write.
            if self._parked:
                self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._fd = None

    def touch(self) -> None:
        """A new statement begins: it gets the whole timeout again."""
        with self._cond:
            self._deadline = time.monotonic() + self.timeout

    def _watch(self) -> None:
        with self._cond:
            while True:
                if self._fd is None:
                    self._parked = True
                    self._cond.wait()
                    self._parked = False
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                # Still under the lock: the caller cannot have closed this descriptor meanwhile.
                log.warning("no answer from the database for %.0f s (statement_timeout + %.0f s): "
                            "taking the connection for dead", self.timeout, REPLY_GRACE)
                with contextlib.suppress(OSError):
                    sock = socket.socket(fileno=os.dup(self._fd))
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    finally:
                        sock.close()
                self.fired += 1
                self._fd = None


class Sink:
    """One connection to the database and the batch transaction on it.

    :param conninfo: libpq connection string (with the password: never log it).
    :param source_id: the checkpoints this shipper owns.
    :param session_file: where the server session in use is noted (in the state directory), so that
        the next process can end it if it outlives this one (see _evict_abandoned).
    """

    def __init__(self, conninfo: str, source_id: str, statement_timeout: float, target: str,
                 session_file: str | None = None) -> None:
        self.conninfo = conninfo
        self.source_id = source_id
        self.statement_timeout_ms = int(statement_timeout * 1000)
        self.target = target  # redacted, for messages
        self.conn: psycopg.Connection | None = None
        self._copy: contextlib.ExitStack | None = None
        self._copy_obj: psycopg.Copy | None = None
        self.guard = ReplyGuard(statement_timeout + REPLY_GRACE)
        # Our earlier sessions, as (pid, backend_start), that may outlive their dropped connection:
        # this process's, and the one the previous process noted before it died.
        self.session_file = session_file
        self._abandoned: list[tuple[int, str]] = []
        self._backend: tuple[int, str] | None = None
        previous = self._read_session_file()
        if previous is not None:
            self._abandoned.append(previous)

    # -- connection -------------------------------------------------------------------------

    def connect(self) -> psycopg.Connection:
        """Connect, check the schema, and take this source's lock; return the connection."""
        if self.conn is not None and not self.conn.closed:
            return self.conn
        self.close()
        conn = psycopg.connect(self.conninfo, autocommit=True)
        try:
            with self.guard.armed(conn):
                conn.execute(sql.SQL("SET statement_timeout = {}").format(self.statement_timeout_ms))
                problem = schema.check(conn)
                if problem:
                    raise SchemaError(f"database {self.target}: {problem}")
                self._evict_abandoned(conn)
                got = conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))",
                                   (f"moodle-tsdb-shipper:{self.source_id}",)).fetchone()
                if not got or not got[0]:
                    raise SourceBusy(
                        f"another shipper with source_id {self.source_id!r} is connected to {self.target}: "
                        "each shipper needs its own source_id (two with one id would ship files twice)"
                    )
                row = conn.execute("SELECT pid, backend_start FROM pg_stat_activity"
                                   " WHERE pid = pg_backend_pid()").fetchone()
                self._backend = (int(row[0]), row[1].isoformat()) if row else None
                self._write_session_file()
            conn.autocommit = False
        except BaseException:
            conn.close()
            raise
        self.conn = conn
        return conn

    def _evict_abandoned(self, conn: psycopg.Connection) -> None:
        """End our own earlier sessions that the server still keeps.

        A connection dropped on our side (the reply guard, a reset through a proxy) can live on in the
        server behind a path that lost it, holding this source's lock and an open transaction: the
        next connection would wait for it for hours (until the server's keepalives, if ever). So can
        the session of a previous process killed while stuck (systemd's watchdog fires long before
        statement_timeout): it is noted in the state directory. Only these sessions are ended,
        matched by pid and start time; never another shipper's. The lock is taken only once they
        are gone, so their transactions have ended, committed or not, before the offsets are read.
        """
        if not self._abandoned:
            return
        pids = [pid for pid, _ in self._abandoned]
        starts = [start for _, start in self._abandoned]
        query = ("SELECT pid FROM pg_stat_activity JOIN unnest(%s::int[], %s::timestamptz[]) AS a(p, s)"
                 " ON pid = a.p AND backend_start = a.s")
        try:
            alive = [r[0] for r in conn.execute(query, (pids, starts)).fetchall()]
            if alive:
                log.warning("ending %d earlier session(s) of this shipper the server still keeps "
                            "(connection lost on our side): pid %s", len(alive),
                            ", ".join(map(str, alive)))
                conn.execute("SELECT pg_terminate_backend(p) FROM unnest(%s::int[]) AS p", (alive,))
                deadline = time.monotonic() + 5.0
                while conn.execute(query, (pids, starts)).fetchall() and time.monotonic() < deadline:
                    time.sleep(0.05)
        except psycopg.errors.InsufficientPrivilege as exc:
            log.warning("cannot end an earlier session of this shipper: %s", exc.diag.message_primary)
        self._abandoned.clear()

    def _read_session_file(self) -> tuple[int, str] | None:
        if not self.session_file:
            return None
        try:
            with open(self.session_file, encoding="utf-8") as fh:
                noted = json.load(fh)
            if noted.get("source_id") == self.source_id:
                return int(noted["pid"]), str(noted["backend_start"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
        return None

    def _write_session_file(self) -> None:
        if not self.session_file or self._backend is None:
            return
        pid, start = self._backend
        directory = os.path.dirname(self.session_file) or "."
        try:
            fd, tmp = tempfile.mkstemp(prefix=".session-", dir=directory)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    json.dump({"source_id": self.source_id, "pid": pid, "backend_start": start}, fh)
                os.replace(tmp, self.session_file)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:  # a full or read-only state directory costs only this safety net
            log.warning("cannot note the database session in %s: %s", directory, exc.strerror)

    def close(self) -> None:
        self._copy = None
        self._copy_obj = None
        if self._backend is not None:
            self._abandoned.append(self._backend)
            self._backend = None
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
        with self.guard.armed(conn), conn.transaction():
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
            with self.guard.armed(conn):
                stack = contextlib.ExitStack()
                self._copy_obj = stack.enter_context(conn.cursor().copy(COPY_SQL))
                self._copy = stack
        assert self.conn is not None
        write = self._copy_obj.write
        with self.guard.armed(self.conn):
            for i in range(0, len(rows), COPY_PIECE_ROWS):
                write(b"".join(rows[i:i + COPY_PIECE_ROWS]))

    def commit(self, batch: Batch) -> None:
        """End the COPY begun by stream() and commit it with the batch's dead letters and offsets."""
        if batch.rows and (self._copy is None or self.conn is None or self.conn.closed):
            # The rows went into a COPY on a connection that is gone: never commit the offsets
            # without them on a new one. The batch is replayed whole.
            raise psycopg.OperationalError("the connection that carried the batch's COPY is gone")
        conn = self.connect()
        with self.guard.armed(conn):
            if self._copy is not None:
                stack, self._copy, self._copy_obj = self._copy, None, None
                stack.close()
            with conn.cursor() as cur:
                self.guard.touch()
                self._write_dead_letters(cur, batch, [])
                self.guard.touch()
                self._write_checkpoints(cur, batch)
            self.guard.touch()
            conn.commit()

    def abandon(self) -> None:
        """Roll back whatever the fast path had started; the batch stays in memory for replay."""
        stack, self._copy, self._copy_obj = self._copy, None, None
        if self.conn is None:
            return
        try:
            with self.guard.armed(self.conn):
                if stack is not None:
                    with contextlib.suppress(Exception):
                        stack.__exit__(RuntimeError, RuntimeError("batch abandoned"), None)
                self.guard.touch()
                self.conn.rollback()
        except Exception:
            self.close()

    # -- the careful path: replay after a failure --------------------------------------------

    def replay(self, batch: Batch) -> list[int]:
        """Ship the batch again, isolating rows the database rejects; return their indexes."""
        conn = self.connect()
        rejected: list[tuple[int, str]] = []
        with self.guard.armed(conn):
            with conn.cursor() as cur:
                if batch.rows:
                    self._copy_isolating(cur, batch, list(range(len(batch.rows))), rejected)
                self.guard.touch()
                self._write_dead_letters(cur, batch, rejected)
                self.guard.touch()
                self._write_checkpoints(cur, batch)
            self.guard.touch()
            conn.commit()
        return [i for i, _ in rejected]

    def _copy_isolating(self, cur: psycopg.Cursor, batch: Batch, idx: list[int],
                        rejected: list[tuple[int, str]]) -> None:
        """COPY rows ``idx`` under a savepoint; on a data error split them until each bad row is alone."""
        self.guard.touch()
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
