"""What every torture scenario shares: a writer that keeps a ledger of each complete line it wrote, the
one exactly-once check against the database, a TCP proxy that misbehaves on purpose, and probes of the
daemon (database activity, RSS, descriptors).

The check is the product's promise, SPEC section 3: every complete line written to the spool is in
``moodle_events`` or ``shipper_dead_letter`` exactly once. Events are matched by ``other.seq`` (every line
the suite writes as an event carries a unique one) and their content (event name, time, user); dead
letters by their source position, file key + offset, and their raw bytes. Nothing may be missing,
nothing doubled, and no row may exist that matches no line written.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import socket
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psycopg
import psycopg.conninfo

from conftest import event, line
from shipper.parse import DEAD_LETTER_REASONS
from shipper.spool.lines import SAMPLE_BYTES

DEFAULT_MAX_LINE = 1024 * 1024


def key_of(prefix: bytes) -> str | None:
    """A file's key as SPEC section 3 defines it (identity.py): SHA-256 of its bytes up to the end of
    the first line that is not blank. None while that line is incomplete. Written again here, not
    imported, so that the check does not trust the code it checks."""
    pos = 0
    while True:
        nl = prefix.find(b"\n", pos)
        if nl < 0:
            return None
        if prefix[pos:nl].strip(b" \t\r\xef\xbb\xbf"):
            return hashlib.sha256(prefix[: nl + 1]).hexdigest()
        pos = nl + 1


def is_blank(raw: bytes, offset: int) -> bool:
    """Lines the shipper skips and counts, shipping nothing: empty or white space (CR, a first BOM)."""
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    if offset == 0 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    return not raw or raw.isspace()


@dataclass(slots=True)
class Line:
    """A complete line that is not a standard event: where it is, its bytes, and what it should become.

    ``seq`` is set when the line may become an event (it carries other.seq); ``eventname`` and
    ``time_us`` when the row's content is known in advance and must match.
    """

    key: str
    offset: int
    raw: bytes  # without its "\n"
    seq: int | None = None
    eventname: str | None = None
    time_us: int | None = None


class Ledger:
    """Every complete line written, as the check expects it.

    Standard events (conftest.event(seq), a million in the crash loop) are kept as bare numbers;
    other lines whole, with their file key and offset.
    """

    def __init__(self) -> None:
        self.seqs = array("q")
        self.lines: list[Line] = []
        self.next_seq = 0
        self.blank = 0

    def take(self, count: int = 1) -> int:
        """Reserve ``count`` consecutive seqs; return the first."""
        first = self.next_seq
        self.next_seq += count
        return first

    @property
    def written(self) -> int:
        return len(self.seqs) + len(self.lines)


@dataclass
class _FileLog:
    size: int = 0
    prefix: bytearray = field(default_factory=bytearray)
    key: str | None = None


class SpoolWriter:
    """Appends lines as the Moodle plugin does (O_APPEND under flock) and records each in the ledger.

    A file is followed by (device, inode) and its size: one that shrank (truncated, or a new file on a
    reused inode) is a new file with a new key. Items are ``(bytes with "\\n", Line-or-seq)``: an int
    is a standard event's seq, a Line (its key and offset filled in here) anything else.
    """

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.files: dict[tuple[int, int], _FileLog] = {}
        self.lock = threading.Lock()
        self.bytes = 0

    def events(self, path: Path, count: int) -> int:
        """Append ``count`` standard events; return the first seq."""
        first = self.ledger.take(count)
        self.append(path, [(line(event(i)), i) for i in range(first, first + count)])
        return first

    def append(self, path: Path, items: Iterable[tuple[bytes, int | Line | None]]) -> list[tuple[bytes, Any]]:
        """Append the items; return those not written because the disk is full (none otherwise).

        As the plugin does (store.php): a file unlinked between open and lock is opened again, and a
        short write is cut back to its last complete line, the rest kept for the next try.
        """
        items = list(items)
        data = b"".join(raw for raw, _ in items)
        with self.lock:
            while True:
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
                fcntl.flock(fd, fcntl.LOCK_EX)
                st = os.fstat(fd)
                if st.st_nlink:
                    break
                os.close(fd)  # deleted by housekeeping between our open and our lock
            try:
                ident = (st.st_dev, st.st_ino)
                log = self.files.get(ident)
                if log is None or st.st_size < log.size or (st.st_size == 0 and log.size):
                    log = self.files[ident] = _FileLog(size=st.st_size)
                offset = st.st_size
                done = _write_some(fd, data)
                if done < len(data):
                    done = data.rfind(b"\n", 0, done) + 1
                    os.ftruncate(fd, offset + done)
            finally:
                os.close(fd)
            self.bytes += done
            if log.key is None:
                log.prefix += data[:done]
                log.key = key_of(bytes(log.prefix))
                if log.key is not None:
                    log.prefix = bytearray()
            log.size = offset + done
            kept, rest, total = [], [], 0
            for item in items:
                total += len(item[0])
                (kept if total <= done else rest).append(item)
            self._record(log, offset, kept)
            return rest

    def _record(self, log: _FileLog, offset: int, items: list[tuple[bytes, int | Line | None]]) -> None:
        ledger = self.ledger
        for raw, what in items:
            assert raw.endswith(b"\n") and raw.count(b"\n") == 1, "one complete line per item"
            body = raw[:-1]
            if is_blank(body, offset):
                ledger.blank += 1
            elif isinstance(what, int):
                ledger.seqs.append(what)
            else:
                assert log.key is not None, "a line before the file's first line?"
                entry = what if isinstance(what, Line) else Line("", 0, b"")
                entry.key, entry.offset, entry.raw = log.key, offset, body
                ledger.lines.append(entry)
            offset += len(raw)


def _write_some(fd: int, data: bytes) -> int:
    """Write ``data``; return how much went in before the disk filled up."""
    view = memoryview(data)
    done = 0
    while done < len(data):
        try:
            done += os.write(fd, view[done:])
        except OSError as exc:
            if not enospc(exc):
                raise
            break
    return done


def scan_spool(paths: Iterable[Path]) -> Ledger:
    """A ledger of the complete lines that files hold now (for copytruncate, where logrotate itself
    loses what is written between its copy and its truncate)."""
    ledger = Ledger()
    for path in paths:
        data = path.read_bytes()
        key = key_of(data)
        offset = 0
        for raw in data.split(b"\n")[:-1]:
            if is_blank(raw, offset):
                ledger.blank += 1
            else:
                assert key is not None
                ledger.lines.append(Line(key, offset, raw, seq_of(raw)))
            offset += len(raw) + 1
    return ledger


def seq_of(raw: bytes) -> int | None:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(obj, dict) and isinstance(obj.get("other"), dict):
        seq = obj["other"].get("seq")
        return seq if isinstance(seq, int) else None
    return None


# -- the check -------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What the database holds against what was written; ``exact()`` is SPEC section 3's promise."""

    written: int = 0  # complete, non-blank lines that must arrive
    optional: int = 0  # lines that may arrive at most once (logrotate's copytruncate window)
    events: int = 0  # rows in moodle_events
    dead_letters: int = 0  # rows in shipper_dead_letter
    arrived: int = 0  # lines written that are in the database (once or more)
    duplicates: int = 0  # copies beyond the first
    lost: int = 0  # lines that must be there and are not
    extra: int = 0  # rows that match no line written
    mismatched: int = 0  # event rows whose content is not their line's
    bad_reasons: int = 0  # dead letters without a known reason
    window_lost: int = 0  # optional lines that never arrived
    samples: dict[str, list[Any]] = field(default_factory=dict)

    def exact(self) -> bool:
        return not (self.duplicates or self.lost or self.extra or self.mismatched or self.bad_reasons)

    def assert_exact(self) -> None:
        assert self.exact(), f"exactly-once broken: {self.summary()} samples={self.samples}"

    def summary(self) -> str:
        return (f"written={self.written} optional={self.optional} events={self.events} "
                f"dead_letters={self.dead_letters} arrived={self.arrived} duplicates={self.duplicates} "
                f"lost={self.lost} extra={self.extra} mismatched={self.mismatched} "
                f"bad_reasons={self.bad_reasons} window_lost={self.window_lost}")

    def figures(self) -> dict[str, Any]:
        return {"written": self.written + self.optional, "must_arrive": self.written,
                "events": self.events, "dead_letters": self.dead_letters, "arrived": self.arrived,
                "duplicates": self.duplicates, "lost": self.lost, "extra": self.extra,
                "mismatched": self.mismatched, "copytruncate_window_lost": self.window_lost}


def _expected_raw(raw: bytes, max_line_bytes: int) -> bytes:
    return raw[:SAMPLE_BYTES] if len(raw) > max_line_bytes else raw


def check(dsn: str, ledger: Ledger, optional: Ledger | None = None,
          max_line_bytes: int = DEFAULT_MAX_LINE) -> Outcome:
    """Compare the database with the ledger (lines that must arrive exactly once) and ``optional``
    (lines that may arrive at most once). Done in SQL: a million lines fit in temporary tables."""
    out = Outcome(written=ledger.written, optional=optional.written if optional else 0)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET work_mem = '256MB'")
        conn.execute("CREATE TEMP TABLE exp_ev (id bigint, seq bigint, must bool, eventname text,"
                     " time_us bigint, userid bigint)")
        conn.execute("CREATE TEMP TABLE exp_dl (id bigint, file_key text, off bigint, raw bytea,"
                     " must bool)")
        ids = 0
        specials: list[tuple[int, Line, bool]] = []
        with conn.cursor().copy("COPY exp_ev FROM STDIN") as copy:
            for must, source in ((True, ledger), (False, optional)):
                if source is None:
                    continue
                for seq in source.seqs:
                    ev = event(seq)
                    copy.write_row((seq, seq, must, ev["eventname"], ev["timecreated_us"], ev["userid"]))
                for entry in source.lines:
                    ids += 1
                    specials.append((-ids, entry, must))
                    if entry.seq is not None:
                        copy.write_row((-ids, entry.seq, must, entry.eventname, entry.time_us, None))
        with conn.cursor().copy("COPY exp_dl FROM STDIN") as copy:
            for ident, entry, must in specials:
                copy.write_row((ident, entry.key, entry.offset, _expected_raw(entry.raw, max_line_bytes),
                                must))
        conn.execute("CREATE INDEX ON exp_ev (seq)")
        conn.execute("CREATE INDEX ON exp_ev (time_us)")
        conn.execute("CREATE INDEX ON exp_dl (file_key, off)")
        conn.execute("ANALYZE exp_ev")
        conn.execute("ANALYZE exp_dl")
        conn.execute("""
            CREATE TEMP TABLE got_ev AS
            SELECT CASE WHEN jsonb_typeof(other) = 'object' AND jsonb_typeof(other->'seq') = 'number'
                        THEN (other->>'seq')::numeric::bigint END AS seq,
                   eventname, (extract(epoch FROM time) * 1000000)::bigint AS time_us, userid
              FROM moodle_events""")
        conn.execute("CREATE INDEX ON got_ev (seq)")
        conn.execute("ANALYZE got_ev")
        out.events = _one(conn, "SELECT count(*) FROM got_ev")
        out.dead_letters = _one(conn, "SELECT count(*) FROM shipper_dead_letter")
        conn.execute("""
            CREATE TEMP TABLE hits AS
            SELECT id, sum(n)::bigint AS n FROM (
                SELECT e.id, count(*) AS n FROM exp_ev e JOIN got_ev g ON g.seq = e.seq GROUP BY e.id
                UNION ALL
                -- an event whose "other" was nulled (NUL, nesting) lost its seq: found by its time
                SELECT e.id, count(*) FROM exp_ev e JOIN got_ev g ON g.seq IS NULL
                    AND g.time_us = e.time_us AND g.eventname = e.eventname GROUP BY e.id
                UNION ALL
                SELECT d.id, count(*) FROM exp_dl d JOIN shipper_dead_letter x
                    ON x.file_key = d.file_key AND x.line_offset = d.off AND x.raw = d.raw GROUP BY d.id
            ) h GROUP BY id""")
        conn.execute("""
            CREATE TEMP TABLE expected AS
            SELECT id, must FROM exp_ev UNION SELECT id, must FROM exp_dl""")
        row = conn.execute("""
            SELECT count(*) FILTER (WHERE h.n >= 1),
                   coalesce(sum(h.n - 1) FILTER (WHERE h.n > 1), 0),
                   count(*) FILTER (WHERE e.must AND h.n IS NULL),
                   count(*) FILTER (WHERE NOT e.must AND h.n IS NULL)
              FROM expected e LEFT JOIN hits h USING (id)""").fetchone()
        assert row is not None
        out.arrived, out.duplicates, out.lost, out.window_lost = (int(v) for v in row)
        extra_events = ("SELECT g.seq, g.eventname, g.time_us FROM got_ev g"
                        " WHERE NOT EXISTS (SELECT 1 FROM exp_ev e WHERE e.seq = g.seq OR (g.seq IS NULL"
                        " AND e.time_us = g.time_us AND e.eventname = g.eventname))")
        extra_dead = """SELECT x.file_key, x.line_offset, x.reason FROM shipper_dead_letter x
            WHERE NOT EXISTS (SELECT 1 FROM exp_dl d WHERE d.file_key = x.file_key
                              AND d.off = x.line_offset AND d.raw = x.raw)"""
        out.extra = (_one(conn, f"SELECT count(*) FROM ({extra_events}) s")
                     + _one(conn, f"SELECT count(*) FROM ({extra_dead}) s"))
        mismatch = """SELECT g.seq, g.eventname, e.eventname, g.time_us, e.time_us, g.userid, e.userid
            FROM got_ev g JOIN exp_ev e ON e.seq = g.seq
            WHERE (e.eventname IS NOT NULL AND g.eventname IS DISTINCT FROM e.eventname)
               OR (e.time_us IS NOT NULL AND g.time_us IS DISTINCT FROM e.time_us)
               OR (e.userid IS NOT NULL AND g.userid IS DISTINCT FROM e.userid)"""
        out.mismatched = _one(conn, f"SELECT count(*) FROM ({mismatch}) s")
        out.bad_reasons = _one(conn, "SELECT count(*) FROM shipper_dead_letter WHERE NOT reason = ANY(%s)",
                               (list(DEAD_LETTER_REASONS),))
        if not out.exact():
            out.samples = {
                "lost": conn.execute("""SELECT e.id, ev.seq, dl.file_key, dl.off FROM expected e
                    LEFT JOIN hits h USING (id) LEFT JOIN exp_ev ev USING (id) LEFT JOIN exp_dl dl USING (id)
                    WHERE e.must AND h.n IS NULL LIMIT 10""").fetchall(),
                "duplicates": conn.execute("SELECT id, n FROM hits WHERE n > 1 LIMIT 10").fetchall(),
                "extra_events": conn.execute(extra_events + " LIMIT 10").fetchall(),
                "extra_dead": conn.execute(extra_dead + " LIMIT 10").fetchall(),
                "mismatched": conn.execute(mismatch + " LIMIT 10").fetchall(),
            }
    return out


def _one(conn: psycopg.Connection, sql: str, params: Any = None) -> int:
    row = conn.execute(sql, params).fetchone()
    return int(row[0]) if row else 0


# -- watching the daemon from outside --------------------------------------------------------------


class Probe:
    """A monitoring connection: what the shipper's backend is doing, and how far its commits are."""

    def __init__(self, dsn: str, source_id: str = "test-node") -> None:
        self.dsn = dsn
        self.source_id = source_id
        self.conn: psycopg.Connection | None = None

    def _conn(self) -> psycopg.Connection:
        if self.conn is None or self.conn.closed or self.conn.broken:
            self.conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
        return self.conn

    def _query(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        try:
            return self._conn().execute(sql, params).fetchall()
        except psycopg.OperationalError:
            self.close()
            raise

    def committed(self) -> int:
        """The sum of the shipper's committed offsets: it moves exactly when a batch commits."""
        rows = self._query("SELECT coalesce(sum(byte_offset), 0), count(*) FROM shipper_checkpoints"
                           " WHERE source_id = %s", (self.source_id,))
        return int(rows[0][0]) * 1000 + int(rows[0][1])

    def in_copy(self) -> bool:
        rows = self._query("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                           "'moodle-tsdb-shipper' AND state = 'active' AND query LIKE 'COPY%%'")
        return bool(rows[0][0])

    def backends(self) -> int:
        rows = self._query("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                           "'moodle-tsdb-shipper'")
        return int(rows[0][0])

    def terminate(self) -> int:
        rows = self._query("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
                           " WHERE application_name = 'moodle-tsdb-shipper'")
        return int(rows[0][0])

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
        self.conn = None


def wait_commit_after(probe: Probe, since: int | None, timeout: float) -> float | None:
    """Seconds until the committed offsets move past ``since`` (None: timed out)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        with contextlib.suppress(psycopg.Error):
            if probe.committed() != since:
                return time.monotonic() - start
        time.sleep(0.02)
    return None


def rss_kib(pid: int) -> int:
    for text in Path(f"/proc/{pid}/status").read_text().splitlines():
        if text.startswith("VmRSS:"):
            return int(text.split()[1])
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_targets(pid: int) -> list[str]:
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return out


# -- a TCP proxy that misbehaves on purpose ---------------------------------------------------------


class _Pair:
    def __init__(self, client: socket.socket, upstream: socket.socket | None) -> None:
        self.client = client
        self.upstream = upstream
        self.stalled = False
        self.closed = False


class Proxy:
    """127.0.0.1 only: forwards to ``target_port`` and, on command, drops (RST), stalls (a blackhole:
    nothing forwarded, nothing closed, no RST) or delays connections.

    ``stall()`` freezes the current connections for good (a stalled peer never comes back: the client
    must give up on them) and, until ``heal()``, every new one too.
    """

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.pairs: list[_Pair] = []
        self.stalling = False
        self.delay = 0.0
        self.accepted = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True, name="proxy-accept")
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            if self.stalling:  # a blackhole: the handshake is the kernel's, then silence
                pair = _Pair(client, None)
                pair.stalled = True
                with self._lock:
                    self.pairs.append(pair)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            pair = _Pair(client, upstream)
            with self._lock:
                self.pairs.append(pair)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(pair, src, dst), daemon=True,
                                 name="proxy-pump").start()

    def _pump(self, pair: _Pair, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):  # the other direction's thread closed both sockets
            self._forward(pair, src, dst)
        if not pair.stalled:
            self._close(pair, reset=False)

    def _forward(self, pair: _Pair, src: socket.socket, dst: socket.socket) -> None:
        src.settimeout(0.05)
        while not pair.closed and not self._stop.is_set():
            if pair.stalled:
                time.sleep(0.05)  # read nothing: the sender's buffers fill, as behind a dead peer
                continue
            try:
                data = src.recv(65536)
            except TimeoutError:
                continue
            if not data:
                break
            if self.delay:
                time.sleep(self.delay)
            while pair.stalled and not pair.closed:
                time.sleep(0.05)  # the stall caught this chunk in flight: it never arrives
            if pair.closed:
                break
            dst.sendall(data)

    def _close(self, pair: _Pair, reset: bool) -> None:
        with self._lock:
            if pair.closed:
                return
            pair.closed = True
            with contextlib.suppress(ValueError):
                self.pairs.remove(pair)
        for sock in (pair.client, pair.upstream):
            if sock is not None:
                (_reset if reset else _close_quietly)(sock)

    def drop(self) -> int:
        """Reset every open connection (RST to both sides); new ones are served as usual."""
        with self._lock:
            pairs = list(self.pairs)
        for pair in pairs:
            self._close(pair, reset=True)
        return len(pairs)

    def stall(self) -> list[_Pair]:
        """Blackhole every open connection and, until heal(), every new one; return those that were
        live (not the ones an earlier stall already froze)."""
        self.stalling = True
        with self._lock:
            live = [p for p in self.pairs if not p.stalled]
            for pair in self.pairs:
                pair.stalled = True
            return live

    def heal(self) -> None:
        """Serve new connections again; the stalled ones stay dead (the client must notice)."""
        self.stalling = False

    def stalled_open(self, among: list[_Pair] | None = None) -> int:
        """Stalled connections (of ``among``, or all) the client still holds open: it closes them
        once it notices.

        What the client sent into the blackhole is read and thrown away here, so that its close
        (an end of file behind those bytes) can be seen.
        """
        count = 0
        with self._lock:
            pairs = [p for p in (self.pairs if among is None else among) if p.stalled and not p.closed]
        for pair in pairs:
            try:
                pair.client.setblocking(False)
                while pair.client.recv(65536):
                    pass
                self._close(pair, reset=False)  # end of file: the client let go
                continue
            except BlockingIOError:
                count += 1
            except OSError:
                self._close(pair, reset=False)
        return count

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.listener.close()
        with self._lock:
            pairs = list(self.pairs)
        for pair in pairs:
            self._close(pair, reset=False)


def proxied(dsn: str) -> tuple[Proxy, str]:
    """A Proxy in front of the server ``dsn`` names, and the DSN that goes through it."""
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    proxy = Proxy(int(params.get("port") or 5432))
    params.update(host="127.0.0.1", port=proxy.port)
    return proxy, psycopg.conninfo.make_conninfo(**params)


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    _close_quietly(sock)


def _close_quietly(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()


# -- small things -----------------------------------------------------------------------------------


class Background(threading.Thread):
    """A loop in a thread until stop(); an exception in it is kept and re-raised by stop()."""

    def __init__(self, step: Callable[[], None], name: str) -> None:
        super().__init__(daemon=True, name=name)
        self.step = step
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                self.step()
        except BaseException as exc:
            self.error = exc

    def stop(self, timeout: float = 60) -> None:
        self.halt.set()
        self.join(timeout)
        if self.error is not None:
            raise self.error


def chunks(total: int, rng: Any, low: int, high: int) -> Iterator[int]:
    """Burst sizes adding up to ``total``."""
    left = total
    while left > 0:
        n = min(left, rng.randint(low, high))
        left -= n
        yield n


def enospc(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)
