"""`status`: files, offsets, lag in bytes and seconds, last commit, dead letters, for people and scripts."""

from __future__ import annotations

import json
import time

from conftest import Shipper, append, append_events, event, line
from shipper.pgtemp import free_port


def utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def test_status_shows_lag_in_bytes_and_seconds_and_the_last_commit(shipper: Shipper) -> None:
    path = shipper.spool / "events.jsonl"
    append_events(path, 0, 100)
    append(path, b"{broken\n")
    shipper.catch_up()
    shipped_size = path.stat().st_size
    append_events(path, 101, 50)  # written while the shipper is stopped
    behind = path.stat().st_size - shipped_size
    oldest = event(101)["timecreated"]

    done = shipper.run("status")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "offsets from the database" in out
    assert f"1 files, {behind} bytes behind; the oldest unshipped event is " in out
    assert f"({utc(oldest)})" in out
    assert "last commit: " in out and "s ago)" in out
    assert "dead letters: invalid_json 1" in out
    assert f"{path}" in out and f"{shipped_size:>12}  {behind:>12}" in out

    done = shipper.run("status", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["bytes_behind"] == behind
    assert abs(data["lag_seconds"] - (time.time() - oldest)) < 60
    assert 0 <= data["last_commit_age_seconds"] < 60
    assert data["dead_letters"] == {"invalid_json": 1}
    assert [(f["path"], f["committed"], f["behind"]) for f in data["files"]] == [
        (str(path), shipped_size, behind)]


def test_status_falls_back_to_the_state_file_when_the_database_is_down(shipper: Shipper) -> None:
    path = shipper.spool / "events.jsonl"
    append_events(path, 0, 20)
    shipper.catch_up()
    append_events(path, 20, 5)
    shipper.write_config(**{"database.dsn": f"postgresql://moodle@127.0.0.1:{free_port()}/nowhere"})
    done = shipper.run("status", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["offsets_from"] == "local state file"
    assert "cannot connect to the database" in data["note"]
    assert data["bytes_behind"] == len(b"".join(line(event(i)) for i in range(20, 25)))
    assert 0 <= data["last_commit_age_seconds"] < 60
    assert data["lag_seconds"] > 0
