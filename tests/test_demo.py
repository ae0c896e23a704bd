"""`moodle-tsdb-shipper demo` on this machine: its own PostgreSQL, its own spool, everything shipped."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO


def test_demo_ships_its_events_and_says_so() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "shipper", "demo", "--events", "3000"],
                          capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "events written:  3000 (+2 broken lines)" in out
    assert "events shipped:  3000 in" in out
    assert "dead letters:    1 invalid_json, 1 invalid_timecreated" in out
    assert "\\core\\event\\course_viewed" in out
