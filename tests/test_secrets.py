"""The database password appears nowhere: not in logs, metrics, health answers, status, check or state.

The shipper runs as a real subprocess against a port where nothing listens, so every connection fails
and every error path that could quote the connection string is taken, in both log formats.
"""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Shipper, append_events, wait_for
from shipper.pgtemp import free_port

PASSWORD = "Qx7-pw_d0n0tLEAK"


def fetch(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.read().decode()
    except urllib.error.URLError:
        return ""


def connection_failures(exposition: str) -> float:
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == "moodle_shipper_flush_failures_total" and sample.labels == {
                    "sqlstate_class": "connection"}:
                return sample.value
    return 0


def run(shipper: Shipper, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(shipper.command(*args), capture_output=True, text=True, timeout=60,
                          env={**shipper.env(), **env}, cwd=shipper.root)


@pytest.mark.parametrize(("how", "fmt"), [("uri", "text"), ("keywords", "json"), ("environment", "text")])
def test_the_password_appears_nowhere(tmp_path: Path, how: str, fmt: str) -> None:
    db_port, http_port = free_port(), free_port()  # nothing listens on db_port
    env: dict[str, str] = {}
    if how == "uri":
        dsn = f"postgresql://moodle:{PASSWORD}@127.0.0.1:{db_port}/moodle_logs"
    elif how == "keywords":
        dsn = f"host=127.0.0.1 port={db_port} dbname=moodle_logs user=moodle password={PASSWORD}"
    else:
        dsn = ""
        env["MOODLE_SHIPPER_DATABASE_PASSWORD"] = PASSWORD
    shipper = Shipper(tmp_path, dsn)
    shipper.write_config(**{"metrics.listen": f"127.0.0.1:{http_port}", "log.format": fmt,
                            "log.level": "debug", "database.host": "127.0.0.1", "database.port": db_port})
    append_events(shipper.spool / "events.jsonl", 0, 10)
    url = f"http://127.0.0.1:{http_port}"
    shipper.start(env=env)
    try:
        wait_for(lambda: connection_failures(fetch(url + "/metrics")) >= 2,
                 what="two failed connection attempts")
        answers = {path: fetch(url + path) for path in ("/metrics", "/healthz", "/readyz", "/")}
        assert "Connection refused" in answers["/readyz"] or "connection" in answers["/readyz"].lower()
        outputs = {" ".join(args): run(shipper, env, *args) for args in
                   (("status",), ("status", "--json"), ("check",))}
        assert shipper.stop() == 0
    finally:
        shipper.kill()
    assert "cannot connect to the database" in outputs["check"].stdout
    assert "local state file" in outputs["status"].stdout
    texts = {"log": shipper.logs(), **{f"GET {p}": body for p, body in answers.items()}}
    for name, done in outputs.items():
        texts[f"{name} stdout"], texts[f"{name} stderr"] = done.stdout, done.stderr
    for state in shipper.state.iterdir():
        texts[f"state {state.name}"] = state.read_text(errors="replace")
    assert "failed (transient" in texts["log"]  # the failures were logged...
    leaks = [name for name, text in texts.items() if PASSWORD in text]
    assert leaks == [], f"the password appears in {leaks}"  # ...without the password
    # and not thanks to the log's last line of defence (logs.hide): nothing even tried to log it
    assert "***" not in texts["log"]


def test_a_malformed_dsn_is_refused_without_quoting_it(tmp_path: Path) -> None:
    # libpq's own message would quote the text after the mistake: here, parts of the password
    shipper = Shipper(tmp_path, "host=127.0.0.1 password=hunter2secret morepart port=1")
    done = shipper.run("check")
    assert done.returncode == 2
    assert "database.dsn is not a valid libpq connection string" in done.stderr
    assert "hunter2secret" not in done.stderr and "morepart" not in done.stderr
    shipper = Shipper(tmp_path, "postgresql://moodle:pa ss@127.0.0.1:1/db")
    done = shipper.run("status")
    assert done.returncode == 2 and "pa ss" not in done.stderr


def test_a_bad_password_value_is_not_echoed(tmp_path: Path) -> None:
    shipper = Shipper(tmp_path, "")
    shipper.write_config(**{"database.password": 98765432})  # a TOML integer, not a string
    done = shipper.run("check")
    assert done.returncode == 2
    assert "database.password must be a string (value not shown" in done.stderr
    assert "98765432" not in done.stderr
