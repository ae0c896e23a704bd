"""`check` finds each problem `run` would hit, and says what to do about it."""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import Shipper


def test_check_reports_each_problem_and_exits_1(tmp_path: Path, db: str) -> None:
    shipper = Shipper(tmp_path, db)  # a database without the schema
    shutil.rmtree(shipper.spool)
    done = shipper.run("check")
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert any(line.startswith("FAIL spool") and "does not exist" in line for line in lines), lines
    assert any(line.startswith("OK   database") for line in lines), lines
    assert any(line.startswith("FAIL schema") and "run 'moodle-tsdb-shipper init-db'" in line
               for line in lines), lines

    assert shipper.run("init-db").returncode == 0
    shipper.spool.mkdir()
    done = shipper.run("check")
    assert done.returncode == 0, done.stdout
    assert "FAIL" not in done.stdout


def test_check_when_the_database_is_unreachable(tmp_path: Path) -> None:
    shipper = Shipper(tmp_path, "postgresql://moodle@127.0.0.1:1/moodle_logs_tsdb")
    done = shipper.run("check")
    assert done.returncode == 1
    assert "FAIL database" in done.stdout and "cannot connect to the database" in done.stdout
    assert "host=127.0.0.1 port=1" in done.stdout
