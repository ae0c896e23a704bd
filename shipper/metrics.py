"""Every Prometheus metric of the shipper, defined in one place with its unit in the name.

Low cardinality by construction: labels take values from closed sets (dead-letter reasons, column
names, failure classes), never a file path or a user. Label children are created up front so every
series exists from the first scrape at 0, and alerts on rate() or increase() see the first failure.

Sample exposition (the full list is in the README)::

    # HELP moodle_shipper_events_shipped_total Events committed to moodle_events
    # TYPE moodle_shipper_events_shipped_total counter
    moodle_shipper_events_shipped_total 1200.0
    # HELP moodle_shipper_dead_letters_total Lines committed to shipper_dead_letter, by reason
    # TYPE moodle_shipper_dead_letters_total counter
    moodle_shipper_dead_letters_total{reason="invalid_json"} 1.0
    # HELP moodle_shipper_lag_bytes Spool bytes not yet committed (sum over files of size minus offset)
    # TYPE moodle_shipper_lag_bytes gauge
    moodle_shipper_lag_bytes 0.0
    # HELP moodle_shipper_flush_failures_total Failed database operations, by SQLSTATE class ...
    # TYPE moodle_shipper_flush_failures_total counter
    moodle_shipper_flush_failures_total{sqlstate_class="connection"} 3.0
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from . import __version__
from .errors import SchemaError
from .parse import DEAD_LETTER_REASONS, NULLABLE_FIELDS
from .sink.retry import sqlstate_class

PREFIX = "moodle_shipper"
# No *_created series: they double the series count and neither the dashboard nor the alerts use them.
disable_created_metrics()
# Failure classes: SQLSTATE classes that matter to an operator, plus two for errors without a SQLSTATE:
# "connection" (the server never answered: refused, reset, timeout) and "schema" (the shipper's own
# check at connect: schema missing or too old, or its source_id locked by another shipper). Any other
# SQLSTATE class is counted as "other", so the label set stays closed.
FAILURE_CLASSES = ("connection", "schema", "08", "22", "23", "25", "28", "3D", "40", "42", "53", "55",
                   "57", "58", "XX", "other")
# Flush duration: a batch commits in tens of milliseconds when the rows were streamed while being
# read; seconds mean a stalled server (database.statement_timeout cancels it, 20 s by default).
FLUSH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# Batch size: from a trickle (1 event per flush_interval) up to buffer.max_events (default 50k).
BATCH_BUCKETS = (1, 10, 50, 100, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000)


def failure_class(exc: BaseException) -> str:
    """The failure-class label of an error: its SQLSTATE class, "connection", "schema" or "other"."""
    cls = sqlstate_class(exc)
    if cls == "none":
        return "schema" if isinstance(exc, SchemaError) else "connection"
    return cls if cls in FAILURE_CLASSES else "other"


class Metrics:
    """The metrics of one daemon, in their own registry (so tests can run several in one process)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        p = PREFIX
        self.started = time.time()
        self.build_info = Info(f"{p}_build", "Version of the shipper", registry=r)
        self.build_info.info({"version": __version__})
        self.events_read = Counter(f"{p}_events_read", "Events parsed from the spool", registry=r)
        self.bytes_read = Counter(f"{p}_bytes_read", "Bytes of complete lines read from the spool",
                                  registry=r)
        self.blank_lines = Counter(f"{p}_blank_lines", "Empty lines skipped", registry=r)
        self.events_shipped = Counter(f"{p}_events_shipped", "Events committed to moodle_events",
                                      registry=r)
        self.dead_letters = Counter(f"{p}_dead_letters", "Lines committed to shipper_dead_letter, "
                                    "by reason", ["reason"], registry=r)
        for reason in DEAD_LETTER_REASONS:
            self.dead_letters.labels(reason)
        self.fields_nulled = Counter(f"{p}_fields_nulled", "Field values stored as NULL because they "
                                     "did not fit their column, by field", ["field"], registry=r)
        for name in NULLABLE_FIELDS:
            self.fields_nulled.labels(name)
        self.lag_bytes = Gauge(f"{p}_lag_bytes", "Spool bytes not yet committed (sum over files of "
                               "size minus committed offset)", registry=r)
        self.lag_seconds = Gauge(f"{p}_lag_seconds", "Age of the oldest event read but not yet "
                                 "committed (0 when none is waiting)", registry=r)
        self.last_commit = Gauge(f"{p}_last_commit_timestamp_seconds",
                                 "Unix time of the last successful commit (0 before the first)", registry=r)
        self.buffer_events = Gauge(f"{p}_buffer_events", "Events in the batch in flight", registry=r)
        self.buffer_bytes = Gauge(f"{p}_buffer_bytes", "Spool bytes in the batch in flight",
                                  registry=r)
        self.buffer_max_events = Gauge(f"{p}_buffer_max_events", "Limit on buffered events "
                                       "(buffer.max_events)", registry=r)
        self.buffer_max_bytes = Gauge(f"{p}_buffer_max_bytes", "Limit on buffered bytes "
                                      "(buffer.max_bytes)", registry=r)
        self.flush_duration = Histogram(
            f"{p}_flush_duration_seconds", "Seconds to finish a batch: end its COPY (rows were "
            "streamed while read), write dead letters and offsets, commit; retries included",
            buckets=FLUSH_BUCKETS, registry=r)
        self.batch_size = Histogram(f"{p}_batch_size_events", "Events per committed batch",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.failures = Counter(f"{p}_flush_failures", "Failed database operations, by SQLSTATE class "
                                "('connection': no answer from the server; 'schema': schema missing, "
                                "too old, or source_id in use)", ["sqlstate_class"], registry=r)
        for cls in FAILURE_CLASSES:
            self.failures.labels(cls)
        self.retries = Counter(f"{p}_retries", "Retries of a database operation after a failure",
                               registry=r)
        self.database_up = Gauge(f"{p}_database_up", "1 when the last database operation succeeded",
                                 registry=r)
        self.files_tracked = Gauge(f"{p}_files_tracked", "Spool files known: open, or fully shipped "
                                   "and closed while still in the directory", registry=r)
        self.files_open = Gauge(f"{p}_files_open", "Spool file descriptors held open", registry=r)
        self.files_deleted = Counter(f"{p}_files_deleted", "Shipped spool files deleted", registry=r)
        # Resident memory and open descriptors of the process (process_resident_memory_bytes,
        # process_open_fds): the buffer bound is checked against the first, the file cap the second.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self._scrape_time = _ScrapeTime(self)
        r.register(self._scrape_time)

    def failure(self, exc: BaseException) -> str:
        """Count a failed database operation; return its label (for the log line)."""
        label = failure_class(exc)
        self.failures.labels(label).inc()
        return label

    def watch_health(self, liveness: Callable[[], str | None], readiness: Callable[[], str | None],
                     last_commit: Callable[[], float | None]) -> None:
        """Compute up, ready and the age of the last commit at scrape time from these callables.

        :param last_commit: Unix time of the last successful commit, None before the first.
        """
        self._scrape_time.sources = (liveness, readiness, last_commit)


class _ScrapeTime(Collector):
    """Values that depend on the time of the scrape, so they are right even when the loop is stuck.

    A gauge set by the loop would freeze with it; these are computed when Prometheus asks::

        moodle_shipper_up 1.0
        moodle_shipper_ready 0.0
        moodle_shipper_last_commit_age_seconds 12.5
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.sources: tuple[Callable[[], str | None], Callable[[], str | None],
                            Callable[[], float | None]] | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self.sources is None:
            return
        liveness, readiness, last_commit = self.sources
        yield GaugeMetricFamily(f"{PREFIX}_up", "1 when the main loop is progressing (what /healthz "
                                "answers)", value=0 if liveness() else 1)
        yield GaugeMetricFamily(f"{PREFIX}_ready", "1 when the shipper is ready (what /readyz "
                                "answers)", value=0 if readiness() else 1)
        since = last_commit() or self.metrics.started
        yield GaugeMetricFamily(f"{PREFIX}_last_commit_age_seconds", "Seconds since the last "
                                "successful commit (since start before the first)",
                                value=max(0.0, time.time() - since))
