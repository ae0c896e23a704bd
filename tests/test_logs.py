"""Log lines: one per record (tracebacks included), key=value or JSON, with the password hidden."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from shipper import logs


@pytest.fixture
def captured(capsys: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level, set(logs._secrets)
    try:
        yield capsys
    finally:
        root.handlers[:], level, secrets = saved
        root.setLevel(level)
        logs._secrets.clear()
        logs._secrets.update(secrets)


def _traceback_record() -> None:
    try:
        raise ValueError("bad value\nsecond line")
    except ValueError:
        logging.getLogger("shipper.test").exception('failed on "x.jsonl" = here')


def test_text_lines_are_logfmt_one_line_per_record(captured: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")  # journald adds its own timestamps
    logs.setup("info", "text")
    logging.getLogger("shipper.test").info("plain")
    _traceback_record()
    lines = captured.readouterr().err.splitlines()
    assert lines[0] == "level=INFO logger=shipper.test msg=plain"
    assert len(lines) == 2, lines
    assert lines[1].startswith('level=ERROR logger=shipper.test msg="failed on \\"x.jsonl\\" = here" exc="')
    assert "ValueError: bad value\\nsecond line" in lines[1]


def test_json_lines_parse_and_carry_a_timestamp(captured: pytest.CaptureFixture[str]) -> None:
    logs.setup("debug", "json")
    _traceback_record()
    (record,) = [json.loads(line) for line in captured.readouterr().err.splitlines()]
    assert record["level"] == "error" and record["logger"] == "shipper.test"
    assert record["ts"].endswith("Z") and "ValueError" in record["exc"]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_the_password_is_hidden_in_every_line(captured: pytest.CaptureFixture[str], fmt: str) -> None:
    logs.setup("info", fmt)
    secret = 'Tr0"b4dor\\3'  # quoting and JSON escape both characters: hidden before that
    logs.hide(secret, "", None, "abc")  # empty, missing and too short: ignored
    log = logging.getLogger("shipper.test")
    log.warning("connecting with password=%s", secret)
    try:
        raise RuntimeError(f"dsn was postgresql://u:{secret}@h/db")
    except RuntimeError:
        log.exception("abc")
    err = captured.readouterr().err
    for shown in (secret, secret.replace("\\", "\\\\").replace('"', '\\"'), "Tr0"):
        assert shown not in err
    assert err.count("***") == 2  # the message and the exception
    assert "abc" in err
