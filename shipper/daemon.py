"""The main loop: tail -> parse -> batch -> sink -> checkpoint, with signals and retries around it.

One thread does the work, so the order of operations is easy to reason about for exactly-once:
offsets only move forward in the tailer's memory when lines are handed out, and in the database only
inside the transaction that stores those lines. Signal handlers only set flags; the loop acts on them
at safe points (patroni's habit). Other threads (inotify, the HTTP endpoint) only wake the loop or read
its gauges.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
import tenacity

from . import checkpoints, health, sdnotify
from .buffer import Batch
from .config import Config
from .errors import ConfigError, SchemaError, SpoolError
from .http import MetricsServer
from .metrics import Metrics
from .parse import LINE_TOO_LONG, REJECTED_BY_DATABASE, DeadLetter, Parser
from .sink.retry import Action, backoff, classify
from .sink.timescale import Sink
from .spool.tail import Tailer
from .spool.watch import SpoolWatcher

log = logging.getLogger(__name__)
T = TypeVar("T")
RETRYABLE = (psycopg.Error, OSError, SchemaError)
STATE_SAVE_INTERVAL = 2.0
SESSION_FILE = "session.json"  # the database session in use, for the next process (sink.timescale)
STATUS_INTERVAL = 5.0


class Stopped(Exception):
    """Shutdown was requested while waiting to retry: leave the batch to the next start."""


class Daemon:
    """The shipper process. ``run()`` returns the exit code.

    :param reload: builds a fresh Config for SIGHUP (raises ConfigError when the new one is bad).
    :param exit_when_caught_up: stop once every file is shipped (the demo and tests use it).
    """

    def __init__(
        self,
        config: Config,
        reload: Callable[[], Config] | None = None,
        exit_when_caught_up: bool = False,
        shutdown_timeout: float = 20.0,
    ) -> None:
        self.config = config
        self.reload = reload
        self.exit_when_caught_up = exit_when_caught_up
        self.shutdown_timeout = shutdown_timeout
        self.metrics = Metrics()
        self.metrics.buffer_max_events.set(config.buffer.max_events)
        self.metrics.buffer_max_bytes.set(config.buffer.max_bytes)
        self.parser = Parser()
        self.wake = threading.Event()
        self.stop_event = threading.Event()
        self.stop_deadline: float | None = None
        self.reload_requested = False
        self.sink = Sink(config.conninfo(), config.source_id, config.database.statement_timeout,
                         config.redacted_dsn(), os.path.join(config.state.dir, SESSION_FILE))
        self.tailer: Tailer | None = None
        self.watcher = SpoolWatcher(config.spool.dir, self.wake)
        self.batch = Batch()
        self.stream_failed = False
        self.last_tick = time.monotonic()
        self.last_commit: float | None = None
        self.last_commit_at: float | None = None  # Unix time, for the metrics and the state file
        self.last_error: str | None = None
        self.started = False  # offsets read from the database: shipping has begun
        self.waiting_since: float | None = None  # read data waits for a commit since (monotonic)
        self.http: MetricsServer | None = None
        self.metrics.watch_health(self.liveness, self.readiness, lambda: self.last_commit_at)
        self.shipped = 0
        self._next_state_save = 0.0
        self._next_housekeeping = 0.0
        self._next_status = 0.0
        interval = sdnotify.watchdog_interval()
        self._watchdog_every = interval / 2 if interval else None
        self._next_watchdog = 0.0

    # -- signals ----------------------------------------------------------------------------

    def _on_stop(self, signum: int, _frame: Any) -> None:
        if not self.stop_event.is_set():
            self.stop_deadline = time.monotonic() + self.shutdown_timeout
            self.stop_event.set()
        self.wake.set()

    def _on_hup(self, _signum: int, _frame: Any) -> None:
        self.reload_requested = True
        self.wake.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)

    @property
    def stopping(self) -> bool:
        return self.stop_event.is_set()

    # -- run --------------------------------------------------------------------------------

    def run(self) -> int:
        cfg = self.config
        tailer = Tailer(cfg.spool.dir, cfg.spool.pattern, cfg.spool.max_line_bytes,
                        cfg.spool.read_bytes, {}, cfg.spool.max_open_files)
        tailer.check_directory()
        problem = checkpoints.check_state_dir(cfg.state.dir)
        if problem:
            raise SpoolError(problem)
        if cfg.metrics.listen != "off":
            # Before READY: a port already taken fails the start, where systemd and the operator see it.
            self.http = MetricsServer(cfg.metrics.listen, self.metrics.registry, self.liveness,
                                      self.readiness)
            self.http.start()
        sdnotify.ready()
        log.info("shipping %s (%s) to %s as source_id=%s", cfg.spool.dir, ", ".join(cfg.spool.pattern),
                 cfg.redacted_dsn(), cfg.source_id)
        self.watcher.start()
        try:
            try:
                committed = self._retrying("read checkpoints", self.sink.load_checkpoints, grace=False)
            except Stopped:
                return 0
            self.metrics.database_up.set(1)
            self.last_error = None
            self.started = True
            log.info("%d file offsets read from the database", len(committed))
            self.tailer = Tailer(cfg.spool.dir, cfg.spool.pattern, cfg.spool.max_line_bytes,
                                 cfg.spool.read_bytes, committed, cfg.spool.max_open_files)
            self._loop(self.tailer)
            if self.batch:
                try:
                    self._flush()
                except Stopped:
                    log.warning("stopped before the last batch (%d events) could be committed: it "
                                "stays in the spool and ships at the next start", self.batch.events)
        finally:
            sdnotify.stopping()
            self._shutdown()
        return 0

    def _shutdown(self) -> None:
        for what, step in (("watcher", self.watcher.stop), ("database", self.sink.close),
                           ("state file", self._save_state), ("files", self._close_files),
                           ("metrics endpoint", self._stop_http)):
            try:
                step()
            except Exception:
                log.exception("error while closing the %s", what)

    def _stop_http(self) -> None:
        if self.http is not None:
            self.http.stop()

    def _close_files(self) -> None:
        if self.tailer is not None:
            self.tailer.close_all()

    def _loop(self, tailer: Tailer) -> None:
        spool = self.config.spool
        now = time.monotonic()
        next_rescan = now
        next_poll = now + spool.poll_interval
        while not self.stopping:
            self._tick()
            now = time.monotonic()
            woke = self.wake.is_set()
            self.wake.clear()
            if (self.watcher.changed.is_set() or now >= next_rescan
                    or (tailer.room_for_waiting() and not self.batch and not tailer.has_unread())):
                self.watcher.changed.clear()
                tailer.rescan()
                self._housekeep(tailer)
                next_rescan = now + self.config.spool.rescan_interval
                next_poll = now + self.config.spool.poll_interval
            elif woke or now >= next_poll:
                tailer.poll()
                next_poll = now + self.config.spool.poll_interval
            self._fill(tailer)
            if self.batch and self._flush_due(tailer):
                try:
                    self._flush()
                except Stopped:
                    return
                continue
            if tailer.has_unread() and not self._full():
                continue
            if self.exit_when_caught_up and not self.batch and not tailer.has_unread():
                if tailer.room_for_waiting():
                    continue
                if tailer.waiting:
                    log.warning("%d spool files were not opened: every open file holds an incomplete "
                                "last line (raise spool.max_open_files)", tailer.waiting)
                else:
                    log.info("caught up: every complete line is shipped")
                return
            deadline = min(next_poll, next_rescan)
            if self.batch:
                deadline = min(deadline, self.batch.started + self.config.buffer.flush_interval)
            if self._watchdog_every:
                deadline = min(deadline, self._next_watchdog)
            self.wake.wait(max(0.0, deadline - time.monotonic()))

    def _housekeep(self, tailer: Tailer) -> None:
        """Release descriptors of files gone from the directory and delete shipped ones (if set)."""
        now = time.monotonic()
        if now < self._next_housekeeping:
            return
        self._next_housekeeping = now + 1.0
        tailer.close_finished(now, idle=1.0)
        spool = self.config.spool
        if spool.delete_shipped:
            deleted = tailer.delete_shipped(time.time(), spool.delete_grace)
            self.metrics.files_deleted.inc(len(deleted))

    def _full(self) -> bool:
        buf = self.config.buffer
        return (self.batch.events >= min(buf.batch_size, buf.max_events)
                or self.batch.nbytes >= buf.max_bytes)

    def _flush_due(self, tailer: Tailer) -> bool:
        if self._full() or self.stopping:
            return True
        if time.monotonic() - self.batch.started >= self.config.buffer.flush_interval:
            return True
        # Files waiting for a descriptor get one once these are committed: no point waiting.
        return (self.exit_when_caught_up or tailer.waiting > 0) and not tailer.has_unread()

    # -- tail -> parse -> batch (-> COPY) -------------------------------------------------------

    def _fill(self, tailer: Tailer) -> None:
        flush_interval = self.config.buffer.flush_interval
        max_line = self.config.spool.max_line_bytes
        metrics = self.metrics
        while not self._full():
            chunk = tailer.read()
            if chunk is None:
                return
            split = chunk.split
            if split.end == split.start:
                continue
            parsed = self.parser.parse(split.lines, split.offsets)
            for over in split.oversized:
                parsed.dead.append(DeadLetter(
                    over.offset, LINE_TOO_LONG,
                    f"{over.length} bytes, over spool.max_line_bytes={max_line}; raw holds the first "
                    f"{len(over.sample)} bytes", over.sample, over.length))
            nbytes = split.end - split.start
            self.batch.add(chunk.key, chunk.path, split.end, parsed, nbytes)
            metrics.events_read.inc(len(parsed.rows))
            metrics.bytes_read.inc(nbytes)
            if parsed.rows and not self.stream_failed:
                try:
                    self.sink.stream(parsed.rows)
                except RETRYABLE as exc:
                    self._stream_failure(exc)
            if time.monotonic() - self.batch.started >= flush_interval:
                return

    def _stream_failure(self, exc: BaseException) -> None:
        """The fast path failed: roll back, and let the flush replay the batch carefully."""
        self._record_failure(exc, "streaming a batch")
        self.stream_failed = True
        self.sink.abandon()

    # -- batch -> sink -> checkpoint -------------------------------------------------------------

    def _flush(self) -> None:
        batch = self.batch
        started = time.monotonic()
        rejected: list[int] | None = []
        if not self.stream_failed:
            try:
                self.sink.commit(batch)
            except RETRYABLE as exc:
                self._stream_failure(exc)
        if self.stream_failed:
            rejected = self._retrying("ship a batch", lambda: self._replay(batch))
        if rejected is not None:
            self._after_commit(batch, rejected, time.monotonic() - started)
        self.batch = Batch()
        self.stream_failed = False

    def _replay(self, batch: Batch) -> list[int] | None:
        """Ship a batch after a failure; None when the batch was dropped to re-read from the database.

        The database's offsets decide. When they already cover the batch, the COMMIT whose reply
        was lost went through (rows and offsets commit together, so this is exact). When they are
        behind what it acknowledged before, the database lost commits: re-read from its offsets.
        """
        assert self.tailer is not None
        held = self.sink.load_checkpoints()
        lost = {key: held.get(key, 0) for key, offset in self.tailer.committed.items()
                if held.get(key, 0) < offset}
        if lost:
            log.error("the database holds older offsets than it acknowledged for %d files (restored "
                      "from a backup, or failed over to a replica that was behind?): reading them "
                      "again from its offsets", len(lost))
            self.tailer.resync(held)
            return None
        if all(held.get(s.key, -1) >= s.end for s in batch.sources):
            log.info("the last batch was committed before the connection was lost: not repeating it")
            return []
        rejected = self.sink.replay(batch)
        for i in rejected:
            log.warning("row from %s at offset %d rejected by the database: dead-lettered",
                        batch.sources[batch.row_sources[i]].path, batch.offsets[i])
        return rejected

    def _after_commit(self, batch: Batch, rejected: list[int], duration: float) -> None:
        assert self.tailer is not None
        self.tailer.mark_committed(batch.checkpoints())
        m = self.metrics
        shipped = batch.events - len(rejected)
        self.shipped += shipped
        m.events_shipped.inc(shipped)
        m.batch_size.observe(batch.events)
        m.flush_duration.observe(duration)
        m.blank_lines.inc(batch.blank)
        for _, dead in batch.dead:
            m.dead_letters.labels(dead.reason).inc()
        if rejected:
            m.dead_letters.labels(REJECTED_BY_DATABASE).inc(len(rejected))
        for name, count in batch.nulled.items():
            m.fields_nulled.labels(name).inc(count)
        m.database_up.set(1)
        self.last_commit_at = time.time()
        m.last_commit.set(self.last_commit_at)
        self.last_commit = time.monotonic()
        self.last_error = None
        self.waiting_since = None  # the next tick starts the clock again if more is waiting
        if batch.dead or rejected:
            log.warning("%d lines dead-lettered (see shipper_dead_letter)", len(batch.dead) + len(rejected))
        self._housekeep(self.tailer)
        if time.monotonic() >= self._next_state_save:
            self._save_state()

    # -- retries -----------------------------------------------------------------------------

    def _retrying(self, what: str, fn: Callable[[], T], grace: bool = True) -> T:
        """Run ``fn`` until it succeeds: transient errors back off exponentially, others slowly.

        Raises Stopped when shutdown was requested and (with ``grace``, for a batch in flight) the
        shutdown grace period ran out.
        """
        retry = self.config.retry

        def wait(state: tenacity.RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if exc is not None and classify(exc) is Action.TRANSIENT and not isinstance(exc, SchemaError):
                return backoff(state.attempt_number, retry.initial, retry.max)
            return retry.other_errors

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            if exc is not None:
                self._record_failure(exc, what)
            self.metrics.retries.inc()
            self.sink.close()

        def stop(_state: tenacity.RetryCallState) -> bool:
            return self.stopping and (not grace or time.monotonic() >= (self.stop_deadline or 0))

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(RETRYABLE),
            wait=wait, stop=stop, sleep=self._sleep, before_sleep=before_sleep, reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    result = fn()
        except RETRYABLE as exc:
            self._record_failure(exc, what)
            raise Stopped() from exc
        return result

    def _sleep(self, seconds: float) -> None:
        """Wait for a retry while keeping the loop alive: watchdog, gauges, reload, stop."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            if self.stopping:
                time.sleep(min(remaining, 0.2, max(0.0, (self.stop_deadline or 0) - time.monotonic())))
            else:
                self.stop_event.wait(min(remaining, 1.0))
            self._refresh_spool()
            self._tick()
            if self.stopping and time.monotonic() >= (self.stop_deadline or 0):
                return

    def _refresh_spool(self) -> None:
        """Take the spool files' sizes while a retry waits, so lag_bytes grows during an outage.

        The same rescan/poll the loop does between reads (nothing is read here): safe with a batch in
        flight, and without it the lag metric would freeze at the moment the database went away.
        """
        if self.tailer is None:
            return
        if self.watcher.changed.is_set():
            self.watcher.changed.clear()
            self.tailer.rescan()
        else:
            self.tailer.poll()

    def _record_failure(self, exc: BaseException, what: str) -> None:
        action = classify(exc)
        cls = self.metrics.failure(exc)
        self.metrics.database_up.set(0)
        message = _describe(exc)
        self.last_error = message
        level = logging.WARNING if action is Action.TRANSIENT else logging.ERROR
        log.log(level, "%s failed (%s, failure class %s): %s", what, action.value, cls, message)

    # -- housekeeping of the loop -------------------------------------------------------------

    def _tick(self) -> None:
        now = time.monotonic()
        self.last_tick = now
        if self._watchdog_every and now >= self._next_watchdog:
            sdnotify.watchdog()
            self._next_watchdog = now + self._watchdog_every
        if self.reload_requested:
            self.reload_requested = False
            self._reload()
        self._update_gauges()
        if now >= self._next_status:
            self._next_status = now + STATUS_INTERVAL
            sdnotify.status(self.status_line())

    def _update_gauges(self) -> None:
        m = self.metrics
        m.buffer_events.set(self.batch.events)
        m.buffer_bytes.set(self.batch.nbytes)
        oldest = self.batch.oldest
        m.lag_seconds.set(max(0.0, time.time() - oldest) if oldest is not None else 0.0)
        if self.tailer is not None:
            tailer = self.tailer
            m.lag_bytes.set(tailer.lag_bytes())
            m.files_tracked.set(len(tailer.files) + len(tailer.dormant))
            m.files_open.set(len(tailer.files))
            if not (self.batch or tailer.has_unread()):
                self.waiting_since = None
            elif self.waiting_since is None:
                self.waiting_since = time.monotonic()

    def liveness(self) -> str | None:
        """None while the main loop ticks, else why not (/healthz; called from the HTTP thread)."""
        return health.liveness(self, self.config.metrics.liveness_timeout)

    def readiness(self) -> str | None:
        """None while shipping or idle with nothing to ship, else why not (/readyz)."""
        return health.readiness(self, self.config.metrics.readiness_max_wait)

    def status_line(self) -> str:
        lag = self.tailer.lag_bytes() if self.tailer is not None else 0
        text = f"shipped {self.shipped} events, {lag} bytes behind"
        if self.batch.oldest is not None:
            text += f", oldest unshipped event {max(0.0, time.time() - self.batch.oldest):.0f} s old"
        if self.last_error:
            text += f"; failing: {self.last_error[:120]}"
        return text

    def _save_state(self) -> None:
        if self.tailer is None:
            return
        self._next_state_save = time.monotonic() + STATE_SAVE_INTERVAL
        try:
            checkpoints.save(self.config.state.dir, self.config.source_id, self.tailer.statuses(),
                             {"shipped": self.shipped, "last_error": self.last_error,
                              "last_commit_at": self.last_commit_at})
        except OSError as exc:
            log.warning("cannot write the state file in %s: %s", self.config.state.dir, exc.strerror)

    def _reload(self) -> None:
        if self.reload is None:
            return
        sdnotify.reloading()
        try:
            new = self.reload()
        except ConfigError as exc:
            log.error("SIGHUP: the new configuration is refused, the old one stays: %s", exc)
            sdnotify.ready()
            return
        old = self.config
        fixed = {"source_id": (old.source_id, new.source_id), "database": (old.database, new.database),
                 "state": (old.state, new.state), "metrics": (old.metrics, new.metrics),
                 "spool.dir": (old.spool.dir, new.spool.dir),
                 "spool.pattern": (old.spool.pattern, new.spool.pattern),
                 "spool.max_line_bytes": (old.spool.max_line_bytes, new.spool.max_line_bytes)}
        needs_restart = [name for name, (was, now) in fixed.items() if was != now]
        if needs_restart:
            log.warning("SIGHUP: %s changed: kept as before until a restart", ", ".join(needs_restart))
        spool = dataclasses.replace(new.spool, dir=old.spool.dir, pattern=old.spool.pattern,
                                    max_line_bytes=old.spool.max_line_bytes)
        new = dataclasses.replace(new, source_id=old.source_id, database=old.database, state=old.state,
                                  metrics=old.metrics, spool=spool)
        self.config = new
        self.metrics.buffer_max_events.set(new.buffer.max_events)
        self.metrics.buffer_max_bytes.set(new.buffer.max_bytes)
        logging.getLogger().setLevel(new.log.level.upper())
        log.info("SIGHUP: configuration reloaded from %s", new.origin)
        sdnotify.ready()


def _describe(exc: BaseException) -> str:
    """One line about an error; psycopg's messages name host and port, never the password."""
    if isinstance(exc, psycopg.Error) and exc.diag.message_primary:
        text = exc.diag.message_primary
    else:
        text = str(exc).strip().replace("\n", " ")
    return text[:500]
