"""``moodle-tsdb-shipper stats``: events per hour, top event names and top courses of a recent window.

The seed's client answered these with count_events/get_statistics over the raw table. Here each answer
comes from a continuous aggregate when the database has it (milliseconds over months), else from
moodle_events through its time-leading indexes. Windows start on a whole UTC hour, so both sources give
the same numbers; per-course answers from events_by_day_course start on a whole UTC day and say so.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg

from .errors import ShipperError

# Up to two days, events per hour are readable; longer windows are shown per day.
HOURLY_UP_TO = 2 * 86400
# The daily per-course aggregate counts whole days: used only where a partial first day matters little.
COURSES_FROM_DAILY_AFTER = 2 * 86400


class StatsError(ShipperError):
    """The statistics cannot be read (schema missing, no privilege on the tables)."""


@dataclass
class Stats:
    """The answers, with the window each covers and the relation each was read from."""

    since: datetime
    until: datetime
    period: str  # "hour" or "day"
    total: int = 0
    per_period: list[tuple[datetime, int]] = field(default_factory=list)
    top_events: list[tuple[str, int]] = field(default_factory=list)
    top_courses: list[tuple[int, int]] = field(default_factory=list)
    courses_since: datetime | None = None
    sources: dict[str, str] = field(default_factory=dict)


def _readable(conn: psycopg.Connection, relation: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL AND has_table_privilege(to_regclass(%s), "
                       "'SELECT')", (relation, relation)).fetchone()
    return bool(row and row[0])


def collect(conn: psycopg.Connection, since_seconds: int, top: int = 10) -> Stats:
    """Read the statistics of the last ``since_seconds`` (from the start of that hour, UTC).

    :raises StatsError: when moodle_events cannot be read, saying why.
    """
    if not _readable(conn, "moodle_events"):
        raise StatsError("moodle_events is missing or this role may not read it: run "
                         "'moodle-tsdb-shipper init-db', or grant SELECT on moodle_events")
    row = conn.execute("SELECT date_trunc('hour', now() - make_interval(secs => %s), 'UTC'), now(),"
                       " date_trunc('day', now() - make_interval(secs => %s), 'UTC')",
                       (since_seconds, since_seconds)).fetchone()
    assert row is not None
    start, now, day_start = row
    period = "hour" if since_seconds <= HOURLY_UP_TO else "day"
    stats = Stats(since=start, until=now, period=period)
    params: dict[str, Any] = {"start": start, "top": top, "period": period}

    if _readable(conn, "events_by_hour"):
        stats.sources["per_period"] = stats.sources["top_events"] = "events_by_hour"
        rel, ts, n = "events_by_hour", "bucket", "sum(events)"
    else:
        stats.sources["per_period"] = stats.sources["top_events"] = "moodle_events"
        rel, ts, n = "moodle_events", "time", "count(*)"
    stats.per_period = [(t, int(c)) for t, c in conn.execute(
        f"SELECT date_trunc(%(period)s, {ts}, 'UTC') AS t, {n} FROM {rel}"
        f" WHERE {ts} >= %(start)s GROUP BY 1 ORDER BY 1", params).fetchall()]
    stats.total = sum(c for _, c in stats.per_period)
    stats.top_events = [(e, int(c)) for e, c in conn.execute(
        f"SELECT eventname, {n} FROM {rel} WHERE {ts} >= %(start)s"
        " GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT %(top)s", params).fetchall()]

    if since_seconds >= COURSES_FROM_DAILY_AFTER and _readable(conn, "events_by_day_course"):
        stats.sources["top_courses"] = "events_by_day_course"
        stats.courses_since = day_start
        query = ("SELECT courseid, sum(events) FROM events_by_day_course WHERE day >= %(day)s"
                 " AND courseid > 0 GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT %(top)s")
        params["day"] = day_start
    else:
        stats.sources["top_courses"] = "moodle_events"
        stats.courses_since = start
        query = ("SELECT courseid, count(*) FROM moodle_events WHERE time >= %(start)s"
                 " AND courseid > 0 GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT %(top)s")
    stats.top_courses = [(int(c), int(n)) for c, n in conn.execute(query, params).fetchall()]
    return stats


def _utc(t: datetime, fmt: str = "%Y-%m-%d %H:%M") -> str:
    """Timestamps come back in the session's TimeZone; the windows are UTC, so print them as UTC."""
    return t.astimezone(UTC).strftime(fmt)


def render(stats: Stats) -> str:
    """The text ``stats`` prints: three short tables, each naming its source."""
    fmt = "%Y-%m-%d %H:%M" if stats.period == "hour" else "%Y-%m-%d"
    out = [f"events since {_utc(stats.since)} UTC: {stats.total}",
           "", f"per {stats.period} (UTC, from {stats.sources['per_period']})"]
    out += [f"  {_utc(t, fmt)}  {n:>12}" for t, n in stats.per_period] or ["  (none)"]
    out += ["", f"top event names (from {stats.sources['top_events']})"]
    width = max([len(e) for e, _ in stats.top_events] + [10])
    out += [f"  {e:<{width}}  {n:>12}" for e, n in stats.top_events] or ["  (none)"]
    since = stats.courses_since or stats.since
    out += ["", f"top courses since {_utc(since)} UTC (from {stats.sources['top_courses']})"]
    out += [f"  course {c:<10}  {n:>12}" for c, n in stats.top_courses] or ["  (none)"]
    return "\n".join(out) + "\n"


def print_stats(conn: psycopg.Connection, since_seconds: int, top: int, as_json: bool) -> None:
    stats = collect(conn, since_seconds, top)
    if as_json:
        data = asdict(stats)
        json.dump(data, sys.stdout, indent=1, default=lambda v: v.isoformat())
        print()
    else:
        sys.stdout.write(render(stats))
