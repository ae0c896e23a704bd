"""Every Prometheus metric of the shipper, defined in one place with its unit in the name.

Low cardinality by construction: labels take values from closed sets (dead-letter reasons, column
names, SQLSTATE classes), never a file path or a user. Label children are created up front so every
series exists from the first scrape at 0, and alerts on rate() see the first failure.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from . import __version__
from .parse import DEAD_LETTER_REASONS, NULLABLE_FIELDS

PREFIX = "moodle_shipper"
# SQLSTATE classes that matter to an operator; anything else is counted as "other".
SQLSTATE_CLASSES = ("none", "08", "22", "23", "25", "28", "3D", "40", "42", "53", "55", "57", "58", "XX")


class Metrics:
    """The metrics of one daemon, in their own registry (so tests can run several)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        p = PREFIX
        self.build_info = Info(f"{p}_build", "Version of the shipper", registry=r)
        self.build_info.info({"version": __version__})
        self.events_read = Counter(f"{p}_events_read", "Events parsed from the spool", registry=r)
        self.bytes_read = Counter(f"{p}_bytes_read", "Bytes of complete lines read from the spool",
                                  registry=r)
        self.blank_lines = Counter(f"{p}_blank_lines", "Empty lines skipped", registry=r)
        self.events_shipped = Counter(f"{p}_events_shipped", "Events committed to moodle_events",
                                      registry=r)
        self.dead_letters = Counter(f"{p}_dead_letters", "Lines committed to shipper_dead_letter",
                                    ["reason"], registry=r)
        for reason in DEAD_LETTER_REASONS:
            self.dead_letters.labels(reason)
        self.fields_nulled = Counter(f"{p}_fields_nulled", "Field values stored as NULL because they "
                                     "did not fit their column", ["field"], registry=r)
        for name in NULLABLE_FIELDS:
            self.fields_nulled.labels(name)
        self.lag_bytes = Gauge(f"{p}_lag_bytes", "Bytes in the spool not yet committed", registry=r)
        self.lag_seconds = Gauge(f"{p}_lag_seconds", "Age of the oldest event read but not committed",
                                 registry=r)
        self.last_commit = Gauge(f"{p}_last_commit_timestamp_seconds",
                                 "Unix time of the last successful commit", registry=r)
        self.buffer_events = Gauge(f"{p}_buffer_events", "Events in the batch in flight", registry=r)
        self.buffer_bytes = Gauge(f"{p}_buffer_bytes", "Spool bytes in the batch in flight",
                                  registry=r)
        self.buffer_max_events = Gauge(f"{p}_buffer_max_events", "buffer.max_events", registry=r)
        self.buffer_max_bytes = Gauge(f"{p}_buffer_max_bytes", "buffer.max_bytes", registry=r)
        self.flush_duration = Histogram(
            f"{p}_flush_duration_seconds", "Time from the start of a batch's COPY to its commit",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r)
        self.batch_size = Histogram(
            f"{p}_batch_size_events", "Events per committed batch",
            buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000), registry=r)
        self.failures = Counter(f"{p}_flush_failures", "Failed database operations by SQLSTATE "
                                "class ('none': connection errors)", ["sqlstate_class"], registry=r)
        for cls in SQLSTATE_CLASSES:
            self.failures.labels(cls)
        self.retries = Counter(f"{p}_retries", "Retries of a batch after a failure", registry=r)
        self.database_up = Gauge(f"{p}_database_up", "1 when the last database operation succeeded",
                                 registry=r)
        self.files_tracked = Gauge(f"{p}_files_tracked", "Spool files being followed", registry=r)
        self.files_open = Gauge(f"{p}_files_open", "Spool file descriptors held open", registry=r)
        self.files_deleted = Counter(f"{p}_files_deleted", "Shipped spool files deleted", registry=r)

    def failure(self, sqlstate_class: str) -> None:
        label = sqlstate_class if sqlstate_class in SQLSTATE_CLASSES else "other"
        self.failures.labels(label).inc()
