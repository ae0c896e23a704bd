"""Liveness and readiness of the daemon, decided from what its main loop last recorded.

Neither check touches the database or the spool: they read a few values the loop keeps up to date, so
an HTTP probe can never slow the loop down or hang on a dead server (patroni's do_GET_liveness and
_readiness habit). Each returns None when healthy, or a reason a person can act on.
"""

from __future__ import annotations

import time
from typing import Protocol


class Observed(Protocol):
    """What the checks read from the daemon; written by the main loop, read by the HTTP thread.

    Only plain attributes (floats, strings, None), whose reads are atomic under the GIL: the checks
    never iterate the daemon's files or batch, which the loop mutates.
    """

    last_tick: float  # time.monotonic() of the loop's last tick
    started: bool  # the committed offsets were read from the database: shipping has begun
    last_error: str | None  # the last failed database operation, cleared by the next success
    waiting_since: float | None  # monotonic time since which read data waits for a commit

    @property
    def stopping(self) -> bool: ...


def liveness(d: Observed, timeout: float, now: float | None = None) -> str | None:
    """None when the main loop ticked within ``timeout`` seconds, else why the process looks stuck.

    :param timeout: metrics.liveness_timeout; as long as systemd's WatchdogSec, so /healthz fails
        when the watchdog would.
    """
    now = time.monotonic() if now is None else now
    idle = now - d.last_tick
    if idle > timeout:
        return (f"the main loop has not ticked for {idle:.0f} s (metrics.liveness_timeout = {timeout:g} s):"
                " blocked in a database call or stuck")
    return None


def readiness(d: Observed, max_wait: float, now: float | None = None) -> str | None:
    """None when the shipper is shipping (or has nothing to ship), else why not.

    Not ready while starting, stopping, when the last database operation failed (server unreachable,
    schema missing, permission denied: the error says which), or when read events have waited more
    than ``max_wait`` seconds without a commit.
    """
    now = time.monotonic() if now is None else now
    if d.stopping:
        return "shutting down"
    error = d.last_error
    if not d.started:
        if error:
            return f"cannot read the committed offsets from the database: {error}"
        return "starting: reading the committed offsets from the database"
    if error:
        return f"the last database operation failed: {error}"
    since = d.waiting_since
    if since is not None and now - since > max_wait:
        return (f"events have waited {now - since:.0f} s for a commit (metrics.readiness_max_wait = "
                f"{max_wait:g} s)")
    return None
