"""The whole product: events written by the real Moodle plugin (PHP) arrive field by field."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from conftest import REPO, Shipper, query

EMIT = REPO / "moodle" / "logstore_tsdb" / "tests" / "emit_events.php"
INT_FIELDS = ("objectid", "edulevel", "contextid", "contextlevel", "contextinstanceid", "userid",
              "courseid", "relateduserid", "anonymous", "realuserid")
TEXT_FIELDS = ("eventname", "component", "action", "target", "objecttable", "crud", "origin")


def expected_row(event: dict[str, Any]) -> dict[str, Any]:
    """What a spool event must become in moodle_events, computed independently of the parser."""
    row: dict[str, Any] = {"time": datetime.fromtimestamp(event["timecreated_us"] / 1e6, UTC)}
    for name in INT_FIELDS:
        row[name] = None if event.get(name) in (None, "") else int(event[name])
    for name in TEXT_FIELDS:
        row[name] = event.get(name)
    row["ip"] = event.get("ip") or None
    row["other"] = event.get("other")
    return row


def test_events_written_by_the_php_plugin_arrive_field_by_field(shipper: Shipper) -> None:
    php = shutil.which("php")
    if php is None:
        pytest.skip("php-cli not installed (Debian package 'php-cli'; .ci/setup installs it)")
    shipper.write_config(**{"spool.delete_shipped": False})
    for worker in (1, 2):
        done = subprocess.run([php, str(EMIT), str(shipper.spool), "300", f"--worker={worker}",
                               f"--host=web{worker}"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["written"] == 300
    events = [orjson.loads(raw) for path in sorted(shipper.spool.glob("*.jsonl"))
              for raw in Path(path).read_bytes().splitlines()]
    assert len(events) == 600
    shipper.catch_up()
    columns = ("time", *INT_FIELDS, *TEXT_FIELDS, "ip", "other")
    rows = query(shipper.dsn, f"SELECT {', '.join(columns)} FROM moodle_events")
    got = {}
    for values in rows:
        row = dict(zip(columns, values, strict=True))
        row["ip"] = None if row["ip"] is None else str(row["ip"])
        got[(row["objectid"], row["userid"], row["time"])] = row
    assert len(got) == 600
    for event in events:
        want = expected_row(event)
        assert got[(want["objectid"], want["userid"], want["time"])] == want
    assert query(shipper.dsn, "SELECT count(*) FROM shipper_dead_letter")[0][0] == 0
