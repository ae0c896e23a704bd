"""What to do about a failed database operation, decided from the error alone (pure, no I/O).

Classified by SQLSTATE, never by message text (messages are translated and change between releases).
"""

from __future__ import annotations

import enum
import random

import psycopg


class Action(enum.Enum):
    TRANSIENT = "transient"  # reconnect and retry soon, forever: nothing is lost by waiting
    DATA = "data"  # some row is bad: split the batch to find it and dead-letter it
    OTHER = "other"  # needs a person (missing table, permissions): retry slowly, loudly


TRANSIENT_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "40001", "40P01", "57014", "55P03"})
TRANSIENT_CLASSES = frozenset({"08", "53", "58"})
DATA_CLASSES = frozenset({"22", "23"})
# 54000 program_limit_exceeded is what a row too big for an index gets ("index row size ... exceeds
# maximum"): the row's fault as much as a bad value, so it is isolated and dead-lettered; retried as a
# batch error it blocked the whole spool behind one line.
DATA_SQLSTATES = frozenset({"54000"})


def sqlstate_of(exc: BaseException) -> str | None:
    return getattr(exc, "sqlstate", None)


def sqlstate_class(exc: BaseException) -> str:
    """Two-character SQLSTATE class for metrics labels; "none" for errors without one."""
    state = sqlstate_of(exc)
    return state[:2] if state else "none"


def classify(exc: BaseException) -> Action:
    """Decide the retry policy for an exception raised while shipping a batch.

    Connection errors carry no SQLSTATE (the server never answered), so an OperationalError or
    an OS-level error without one is transient. 57014 (query_canceled) is our own statement_timeout
    firing on a stalled connection; 55P03 (lock_not_available) clears when the other holder goes.
    """
    state = sqlstate_of(exc)
    if state:
        if state in TRANSIENT_SQLSTATES or state[:2] in TRANSIENT_CLASSES:
            return Action.TRANSIENT
        if state[:2] in DATA_CLASSES or state in DATA_SQLSTATES:
            return Action.DATA
        return Action.OTHER
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | OSError | TimeoutError):
        return Action.TRANSIENT
    return Action.OTHER


def backoff(attempt: int, initial: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based): capped exponential, full jitter.

    Full jitter spreads the reconnects of many shippers (one per web node) after a database restart
    instead of having them all knock at once.
    """
    ceiling = min(cap, initial * (2 ** min(attempt - 1, 32)))
    return (rng or random).uniform(initial / 2, ceiling) if ceiling > initial / 2 else ceiling
