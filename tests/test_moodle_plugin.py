"""The Moodle plugin (moodle/logstore_tsdb): its plain-PHP tests, run with php-cli from pytest.

The PHP harness defines the few Moodle classes and functions the store touches, so the real
classes/log/store.php runs unchanged (moodle/logstore_tsdb/tests/run_tests.php). Without php-cli
these tests are skipped, saying so; .ci/run installs it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

PLUGIN = Path(__file__).resolve().parent.parent / "moodle" / "logstore_tsdb"
PHP_TESTS = PLUGIN / "tests" / "run_tests.php"
EMIT = PLUGIN / "tests" / "emit_events.php"


@pytest.fixture(scope="module")
def php() -> str:
    path = shutil.which("php")
    if path is None:
        pytest.skip(
            "php-cli not installed: the Moodle plugin's PHP tests need `php` on PATH "
            "(Debian: apt-get install php-cli)"
        )
    return path


def test_php_harness_suite(php: str) -> None:
    """All PHP tests pass: fields and types, anonymous and login-as events, invalid UTF-8, flushing,
    unwritable spool, short writes, 50 concurrent writers x 2,000 events, privacy provider, strings."""
    proc = subprocess.run([php, str(PHP_TESTS)], capture_output=True, text=True, timeout=900, check=False)
    output = f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    assert proc.returncode == 0, f"PHP tests failed (exit {proc.returncode})\n{output}"
    assert " 0 failed" in proc.stdout, output
    print(proc.stdout)


def test_emit_events_writes_the_documented_events(php: str, tmp_path: Path) -> None:
    """emit_events.php (the end-to-end test's writer) produces the events its header promises."""
    proc = subprocess.run(
        [php, str(EMIT), str(tmp_path), "20", "--worker=4", "--flush-every=3", "--host=node1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["written"] == 20
    files = sorted(tmp_path.glob("moodle-events-*-node1.jsonl"))
    assert [str(f) for f in files] == summary["files"][: len(files)]
    events = [json.loads(line) for f in files for line in f.read_bytes().decode("utf-8").splitlines()]
    assert [e["objectid"] for e in events] == [4_000_000 + i for i in range(20)]
    assert events[1]["anonymous"] == 1
    assert events[2]["realuserid"] == 2
    assert events[4]["other"]["bad"] == "invalid \ufffd\ufffd utf-8"
    assert events[5]["origin"] == "cli" and events[5]["ip"] is None
    assert events[8]["courseid"] == "6" and events[8]["contextinstanceid"] == "14"
    assert events[9]["other"] == "4:9"
    for e in events:
        assert e["timecreated_us"] // 1_000_000 == e["timecreated"]
