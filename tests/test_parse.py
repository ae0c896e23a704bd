"""Parsing and field coercion: what a line becomes in moodle_events, or why it is a dead letter."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shipper import parse
from shipper.parse import COLUMNS, Parser


def one(obj: Any, offset: int = 10) -> parse.Parsed:
    raw = obj if isinstance(obj, bytes) else orjson.dumps(obj)
    return Parser().parse([raw], [offset])


def fields(obj: Any) -> dict[str, str | None]:
    """The COPY row of one event as column -> text (None for NULL), unescaped for reading."""
    out = one(obj)
    assert len(out.rows) == 1, out.dead
    values = out.rows[0].decode().rstrip("\n").split("\t")
    assert len(values) == len(COLUMNS)
    return {c: (None if v == "\\N" else v) for c, v in zip(COLUMNS, values, strict=True)}


EVENT = {
    "eventname": "\\mod_quiz\\event\\attempt_submitted", "component": "mod_quiz", "action": "submitted",
    "target": "attempt", "objecttable": "quiz_attempts", "objectid": 77, "crud": "u", "edulevel": 2,
    "contextid": 300, "contextlevel": 70, "contextinstanceid": 55, "userid": 4, "courseid": 3,
    "relateduserid": None, "anonymous": 0, "other": {"quizid": 9}, "timecreated": 1764000000,
    "origin": "web", "ip": "2001:db8::1", "realuserid": None,
}


def test_a_full_event_maps_to_every_column() -> None:
    row = fields(EVENT)
    assert row["time"] == "2025-11-24 16:00:00+00"
    assert row["eventname"] == "\\\\mod_quiz\\\\event\\\\attempt_submitted"  # COPY-escaped backslashes
    assert row["objectid"] == "77" and row["courseid"] == "3" and row["crud"] == "u"
    assert row["ip"] == "2001:db8::1" and row["relateduserid"] is None
    assert orjson.loads(row["other"]) == {"quizid": 9}


def test_timecreated_us_gives_the_time_within_the_second() -> None:
    row = fields({**EVENT, "timecreated_us": 1764000000_123456})
    assert row["time"] == "2025-11-24 16:00:00.123456+00"
    row = fields({**EVENT, "timecreated_us": "1764000000000007"})
    assert row["time"] == "2025-11-24 16:00:00.000007+00"


def test_numeric_strings_are_accepted_for_integer_fields() -> None:
    row = fields({**EVENT, "userid": "42", "courseid": " 7 ", "timecreated": "1764000000"})
    assert row["userid"] == "42" and row["courseid"] == "7"
    assert row["time"] == "2025-11-24 16:00:00+00"


@pytest.mark.parametrize(("column", "value"), [
    ("userid", 2**63), ("userid", "12abc"), ("edulevel", 40000), ("contextlevel", 2**31),
    ("crud", "read"), ("crud", 1), ("ip", "not-an-ip"), ("ip", 12), ("component", {"a": 1}),
    ("courseid", [1]), ("courseid", 1.5), ("origin", "a\x00b"),
])
def test_a_value_that_cannot_be_stored_becomes_null_and_is_counted(column: str, value: Any) -> None:
    out = one({**EVENT, column: value})
    assert len(out.rows) == 1 and not out.dead
    row = fields({**EVENT, column: value})
    assert row[column] is None
    assert out.nulled == {column: 1}


def test_other_keeps_any_json_value_and_a_string_stays_a_string() -> None:
    assert orjson.loads(fields({**EVENT, "other": "plain"})["other"]) == "plain"
    assert orjson.loads(fields({**EVENT, "other": [1, {"x": None}]})["other"]) == [1, {"x": None}]
    assert fields({**EVENT, "other": None})["other"] is None


def test_other_with_a_nul_character_is_nulled_because_jsonb_cannot_hold_it() -> None:
    out = one({**EVENT, "other": {"t": "a\x00b"}})
    assert out.nulled == {"other": 1} and len(out.rows) == 1
    # an escaped backslash followed by u0000 is text, not a NUL: kept
    out = one({**EVENT, "other": {"t": "\\u0000"}})
    assert out.nulled == {} and len(out.rows) == 1


def _line_with_other(other: bytes) -> bytes:
    return orjson.dumps(EVENT)[:-1] + b',"other":' + other + b"}"


def _other_as_stored(row: bytes) -> Any:
    """``other`` as PostgreSQL reads it from a COPY text row: unescaped, then JSON."""
    text = row.decode().rstrip("\n").split("\t")[-1]
    unescaped = re.sub(r"\\(.)", lambda m: {"t": "\t", "r": "\r", "n": "\n"}.get(m[1], m[1]), text)
    return orjson.loads(unescaped)


def test_other_is_shipped_as_written_whatever_its_spacing() -> None:
    """other goes to jsonb as its JSON text: tabs and CRs between tokens must not break the row."""
    out = Parser().parse([_line_with_other(b'{ "a" :\t[1, \r"x\\ty"] ,"b":{}}')], [0])
    assert not out.dead and out.rows[0].count(b"\t") == len(COLUMNS) - 1
    assert _other_as_stored(out.rows[0]) == {"a": [1, "x\ty"], "b": {}}


def test_other_keeps_integers_beyond_64_bits_and_deep_nesting_exactly() -> None:
    big = b'{"n":123456789012345678901234567890,"f":1e400}'
    row = Parser().parse([_line_with_other(big)], [0]).rows[0]
    assert row.decode().rstrip("\n").split("\t")[-1] == big.decode()
    deep = b'{"k":[' * 300 + b"1" + b"]}" * 300
    out = Parser().parse([_line_with_other(deep)], [0])
    assert out.nulled == {} and _other_as_stored(out.rows[0]) == orjson.loads(deep)
    # deeper than the fast decoder goes but not orjson: read again, other too deep to write back
    deeper = b'{"k":[' * 505 + b"1" + b"]}" * 505
    out = Parser().parse([_line_with_other(deeper)], [0])
    assert len(out.rows) == 1 and out.nulled == {"other": 1}


def test_invalid_utf8_anywhere_in_the_line_makes_it_a_dead_letter() -> None:
    """Also where the fast decoder does not look: in other, in a key the table does not store."""
    for raw in (_line_with_other(b'{"a":"\xff"}'), orjson.dumps(EVENT)[:-1] + b',"extra":"\xff"}',
                orjson.dumps(EVENT)[:-1] + b',"comp\xffnent":"x"}', orjson.dumps(EVENT)[:-1] + b'\xc3}'):
        out = Parser().parse([raw], [7])
        assert [(d.reason, d.offset, d.raw) for d in out.dead] == [(parse.INVALID_UTF8, 7, raw)], raw
        assert out.dead[0].detail.startswith("not UTF-8")
    utf8 = orjson.dumps({**EVENT, "target": "é", "other": {"a": "日本"}})
    assert len(Parser().parse([utf8], [0]).rows) == 1


def test_copy_special_characters_are_escaped() -> None:
    out = one({**EVENT, "target": "a\tb\nc\\d\re"})
    assert b"a\\tb\\nc\\\\d\\re" in out.rows[0]
    assert out.rows[0].count(b"\n") == 1


def test_unknown_keys_are_ignored() -> None:
    assert fields({**EVENT, "somethingelse": {"big": "x" * 100}}) == fields(EVENT)


@pytest.mark.parametrize(("raw", "reason"), [
    (b"{not json", parse.INVALID_JSON),
    (b'{"eventname": "\xff\xfe"}', parse.INVALID_UTF8),
    (b"[1, 2]", parse.NOT_AN_OBJECT),
    (b'"just a string"', parse.NOT_AN_OBJECT),
    (b'{"timecreated": 1}', parse.MISSING_EVENTNAME),
    (b'{"eventname": "", "timecreated": 1}', parse.MISSING_EVENTNAME),
    (b'{"eventname": 5, "timecreated": 1}', parse.INVALID_EVENTNAME),
    (b'{"eventname": "x"}', parse.MISSING_TIMECREATED),
    (b'{"eventname": "x", "timecreated": "yesterday"}', parse.INVALID_TIMECREATED),
    (b'{"eventname": "x", "timecreated": 99999999999999}', parse.INVALID_TIMECREATED),
    (b"[" * 2000 + b"]" * 2000, parse.INVALID_JSON),
])
def test_lines_that_cannot_be_events_are_dead_letters(raw: bytes, reason: str) -> None:
    out = one(raw, offset=123)
    assert out.rows == []
    assert len(out.dead) == 1
    dead = out.dead[0]
    assert (dead.reason, dead.offset, dead.raw, dead.length) == (reason, 123, raw, len(raw))
    assert dead.detail


def test_blank_lines_crlf_and_bom_are_tolerated() -> None:
    p = Parser()
    good = orjson.dumps(EVENT)
    out = p.parse([b"\xef\xbb\xbf" + good + b"\r", b"", b"  \r", good + b"\r"], [0, 50, 51, 60])
    assert len(out.rows) == 2 and out.blank == 2 and not out.dead
    assert out.offsets == [0, 60]
    # a BOM anywhere but at the start of the file is an error, not silently accepted
    out = p.parse([b"\xef\xbb\xbf" + good], [500])
    assert [d.reason for d in out.dead] == [parse.INVALID_JSON]


def test_oldest_event_time_is_tracked_for_the_lag_metric() -> None:
    out = Parser().parse([orjson.dumps({**EVENT, "timecreated": t}) for t in (50, 20, 90)], [0, 1, 2])
    assert out.oldest == 20


@given(st.binary(max_size=200))
def test_any_bytes_become_a_row_a_dead_letter_or_a_blank_line(raw: bytes) -> None:
    raw = raw.replace(b"\n", b"")
    out = Parser().parse([raw], [0])
    assert len(out.rows) + len(out.dead) + out.blank == 1


def test_over_long_texts_are_nulled_and_an_over_long_eventname_is_a_dead_letter() -> None:
    limit = parse.MAX_TEXT_CHARS
    for column in ("component", "action", "target", "objecttable", "origin"):
        out = one({**EVENT, column: "é" * (limit + 1)})
        assert out.nulled == {column: 1} and len(out.rows) == 1
        assert fields({**EVENT, column: "é" * limit})[column] == "é" * limit
    out = one({**EVENT, "eventname": "\\x" * limit})
    assert [d.reason for d in out.dead] == [parse.INVALID_EVENTNAME]
