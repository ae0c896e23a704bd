"""bench/run keeps working: every phase at toy sizes (speed is never asserted here, see BENCHMARKS.md)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from conftest import REPO, Server


def test_bench_run_smoke(pg_server: Server, tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "BENCH_DSN"}
    done = subprocess.run(
        [str(REPO / "bench" / "run"), "--dsn", pg_server.dsn, "--out", str(out),
         "--events", "2000", "--repeat", "1", "--sync-events", "100", "--async-events", "1000",
         "--live-rates", "2000", "--live-seconds", "2", "--idle-files", "5", "--idle-seconds", "1",
         "--idle-settle", "0", "--backlog-events", "3000"],
        capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(next(out.glob("results-*.json")).read_text())
    methods = {run["method"] for run in results["catchup"]}
    assert {"shipper", "psql \\copy (csv)", "psql \\copy (text)"} <= methods
    assert all(run["events"] in (2000, 100, 1000) for run in results["catchup"])
    assert results["live"][0]["written"] > 0 and results["live"][0]["latency_ms"]["p99"] >= 0
    assert results["idle"]["files"] == 5
    assert results["backlog"]["events"] == 3000
    report = next(out.glob("report-*.md")).read_text()
    for heading in ("## Catch-up", "## The four indexes", "## Live tail", "## Idle", "## Backlog memory"):
        assert heading in report
