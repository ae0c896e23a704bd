"""Fixtures of the torture suite: the size of a run, and where its figures go.

``level`` parametrises a scenario as ``[short]`` (in the default suite, a few seconds) and ``[long]``
(marked ``torture``: skipped unless SHIPPER_TORTURE=1 is set or ``-m torture`` selects it). The figures
of each run are appended as one JSON line to $SHIPPER_TORTURE_RESULTS when set: RELIABILITY.md is
written from them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

LONG = "long torture run: set SHIPPER_TORTURE=1 or select it with -m torture"


def opted_in(config: pytest.Config) -> bool:
    markexpr = getattr(config.option, "markexpr", "") or ""
    return os.environ.get("SHIPPER_TORTURE", "") not in ("", "0") or "torture" in markexpr


@pytest.fixture(params=["short", pytest.param("long", marks=pytest.mark.torture)])
def level(request: pytest.FixtureRequest) -> str:
    if request.param == "long" and not opted_in(request.config):
        pytest.skip(LONG)
    return str(request.param)


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """A dict the scenario fills with its figures; written out after the test, pass or fail."""
    data: dict[str, Any] = {"test": request.node.nodeid}
    started = time.monotonic()
    yield data
    data["seconds"] = round(time.monotonic() - started, 1)
    data["finished_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    path = os.environ.get("SHIPPER_TORTURE_RESULTS")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(data, default=str) + "\n")
