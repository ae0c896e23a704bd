"""Retry classification by SQLSTATE and the backoff curve (pure: no server needed)."""

from __future__ import annotations

import random

import psycopg
import psycopg.errors as e
import pytest

from shipper.errors import SchemaError
from shipper.sink.retry import Action, backoff, classify, sqlstate_class


@pytest.mark.parametrize(("exc", "action"), [
    (psycopg.OperationalError("connection refused"), Action.TRANSIENT),
    (e.AdminShutdown(), Action.TRANSIENT),  # 57P01
    (e.CrashShutdown(), Action.TRANSIENT),  # 57P02
    (e.CannotConnectNow(), Action.TRANSIENT),  # 57P03
    (e.SerializationFailure(), Action.TRANSIENT),  # 40001
    (e.DeadlockDetected(), Action.TRANSIENT),  # 40P01
    (e.TooManyConnections(), Action.TRANSIENT),  # 53300
    (e.DiskFull(), Action.TRANSIENT),  # 53100
    (e.QueryCanceled(), Action.TRANSIENT),  # 57014, our statement_timeout
    (e.ConnectionFailure(), Action.TRANSIENT),  # 08006
    (ConnectionResetError(), Action.TRANSIENT),
    (TimeoutError(), Action.TRANSIENT),
    (e.InvalidTextRepresentation(), Action.DATA),  # 22P02
    (e.NumericValueOutOfRange(), Action.DATA),  # 22003
    (e.UntranslatableCharacter(), Action.DATA),  # 22P05
    (e.CheckViolation(), Action.DATA),  # 23514
    (e.NotNullViolation(), Action.DATA),  # 23502
    (e.UndefinedTable(), Action.OTHER),  # 42P01
    (e.InsufficientPrivilege(), Action.OTHER),  # 42501
    (e.InvalidPassword(), Action.OTHER),  # 28P01
    (SchemaError("schema missing"), Action.OTHER),
    (ValueError("bug"), Action.OTHER),
])
def test_classification(exc: BaseException, action: Action) -> None:
    assert classify(exc) is action


def test_sqlstate_class_labels() -> None:
    assert sqlstate_class(e.UndefinedTable()) == "42"
    assert sqlstate_class(psycopg.OperationalError("x")) == "none"


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    rng = random.Random(1)
    ceilings = [max(backoff(n, 0.5, 30, rng) for _ in range(200)) for n in range(1, 12)]
    assert ceilings[0] <= 0.5
    assert ceilings[3] <= 4.0 and ceilings[3] > 2.0
    assert all(c <= 30 for c in ceilings) and ceilings[-1] > 25
    lows = [min(backoff(n, 0.5, 30, rng) for _ in range(200)) for n in range(1, 12)]
    assert all(low >= 0.25 for low in lows)  # jitter never hammers the server with zero waits
    assert len({round(backoff(8, 0.5, 30, rng), 3) for _ in range(20)}) > 10  # really jittered
