"""Configuration: file < environment < command line, and errors that name the key and the file."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from shipper import config
from shipper.cli import main
from shipper.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "shipper.toml"
    path.write_text(text)
    return path


def test_defaults_without_a_file(tmp_path: Path) -> None:
    cfg = config.load(None, environ={})
    assert cfg.spool.pattern == ("*.jsonl", "*.jsonl.[0-9]*")
    assert cfg.database.port == 5433 and cfg.database.database == "moodle_logs_tsdb"
    assert cfg.metrics.listen == "127.0.0.1:9847"
    assert cfg.spool.max_line_bytes == 1024 * 1024
    assert cfg.source_id == socket.gethostname()


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = write(tmp_path, 'source_id = "web1"\n[buffer]\nbatch_size = 500\nflush_interval = 2.5\n'
                           '[spool]\ndir = "/from/file"\nmax_line_bytes = "2MiB"\n')
    cfg = config.load(path, environ={"MOODLE_SHIPPER_SPOOL_DIR": "/from/env",
                                     "MOODLE_SHIPPER_BUFFER_BATCH_SIZE": "700"},
                      overrides={"buffer.batch_size": "900"})
    assert cfg.source_id == "web1"
    assert cfg.spool.dir == "/from/env"
    assert cfg.buffer.batch_size == 900
    assert cfg.buffer.flush_interval == 2.5
    assert cfg.spool.max_line_bytes == 2 * 1024 * 1024


def test_the_fixed_environment_names_work_without_a_file() -> None:
    cfg = config.load(None, environ={
        "MOODLE_SHIPPER_SPOOL_DIR": "/s", "MOODLE_SHIPPER_DATABASE_DSN": "postgresql://u@h/d",
        "MOODLE_SHIPPER_STATE_DIR": "/st", "MOODLE_SHIPPER_METRICS_LISTEN": "127.0.0.1:9999",
        "MOODLE_SHIPPER_SOURCE_ID": "node7", "MOODLE_SHIPPER_SPOOL_PATTERN": "*.log, *.jsonl",
    })
    assert (cfg.spool.dir, cfg.database.dsn, cfg.state.dir, cfg.metrics.listen, cfg.source_id) == (
        "/s", "postgresql://u@h/d", "/st", "127.0.0.1:9999", "node7")
    assert cfg.spool.pattern == ("*.log", "*.jsonl")


def test_every_problem_is_reported_with_key_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[buffer]\nbatch_size = "many"\nflush_intervall = 1\n[spol]\ndir = "x"\n'
                           '[metrics]\nlisten = "everywhere"\n')
    with pytest.raises(ConfigError) as info:
        config.load(path, environ={"MOODLE_SHIPPER_SPOOL_DIRR": "/x"})
    text = str(info.value)
    assert f"{path}: buffer.batch_size must be an integer" in text
    assert f"{path}: unknown key 'flush_intervall' in [buffer]" in text
    assert f"{path}: unknown section [spol]" in text
    assert "metrics.listen must be" in text
    assert "environment variable MOODLE_SHIPPER_SPOOL_DIRR names no setting" in text


def test_batch_size_cannot_exceed_the_buffer_bound(tmp_path: Path) -> None:
    path = write(tmp_path, "[buffer]\nbatch_size = 10\nmax_events = 5\n")
    with pytest.raises(ConfigError, match="batch_size"):
        config.load(path, environ={})


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        config.load(tmp_path / "nope.toml", environ={})


def test_password_file_and_redaction(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cr3t-pw\n")
    cfg = config.load(None, environ={"MOODLE_SHIPPER_DATABASE_PASSWORD_FILE": str(secret),
                                     "MOODLE_SHIPPER_DATABASE_HOST": "db.example"})
    assert "password=s3cr3t-pw" in cfg.conninfo()
    assert "s3cr3t-pw" not in cfg.redacted_dsn() and "db.example" in cfg.redacted_dsn()
    cfg = config.load(None, environ={"MOODLE_SHIPPER_DATABASE_DSN": "postgresql://u:hunter2@h:1/d"})
    assert "hunter2" not in cfg.redacted_dsn()


@pytest.mark.parametrize(("text", "seconds"), [("7 days", 604800), ("12 hours", 43200), ("off", None),
                                               (0, None), ("1 week 1 day", 691200), (3600, 3600)])
def test_intervals(text: object, seconds: int | None) -> None:
    assert config.parse_interval(text) == seconds


def test_cli_exit_code_2_names_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "[buffer]\nbatch_size = 0\n")
    assert main(["check", "--config", str(path)]) == 2
    assert "buffer.batch_size must be >= 1" in capsys.readouterr().err
    # --config before the subcommand works the same
    assert main(["--config", str(path), "status"]) == 2


def test_the_example_file_documents_every_key_with_its_default() -> None:
    example = Path(__file__).resolve().parent.parent / "config" / "shipper.example.toml"
    text = example.read_text()
    cfg = config.load(example, environ={})
    assert cfg == config.load(None, environ={}), "a value in the example differs from the default"
    uncommented = text.replace("# source_id", "source_id")
    for name in config.setting_names():
        key = name.rsplit(".", 1)[-1]
        assert f"\n{key} = " in "\n" + uncommented, f"{name} is not in {example.name}"
