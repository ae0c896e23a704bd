"""Scenario 4, property-based: the splitter and the parser on whatever bytes and JSON hypothesis finds.

Splitter: whatever the bytes and however they are cut into reads, the lines (and over-long lines) it
returns are exactly the complete lines of the input, at their true offsets, and never more than
max_line_bytes is held. Parser: no input makes it raise; each non-blank line gives exactly one row or
one dead letter; a row is one well-formed COPY line; and PostgreSQL accepts every row it makes (a row
the database refused would be dead-lettered, losing the event a NULL field would have saved).
"""

from __future__ import annotations

import json
import string
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shipper.parse import COLUMNS, DEAD_LETTER_REASONS, Parser
from shipper.sink.timescale import COPY_SQL
from shipper.spool.lines import SAMPLE_BYTES, LineSplitter

# -- the splitter ------------------------------------------------------------------------------------

line_bytes = st.binary(max_size=80).map(lambda b: b.replace(b"\n", b""))


@given(lines=st.lists(line_bytes, max_size=30), tail=line_bytes, start=st.integers(0, 2**40),
       limit=st.integers(1, 60), cuts=st.lists(st.integers(1, 97), min_size=1, max_size=40))
def test_splitter_returns_exactly_the_complete_lines_at_their_offsets(
        lines: list[bytes], tail: bytes, start: int, limit: int, cuts: list[int]) -> None:
    data = b"".join(x + b"\n" for x in lines) + tail
    splitter = LineSplitter(start, limit)
    got: list[tuple[int, bytes, int]] = []  # (offset, line or sample, full length)
    pos = i = 0
    while pos < len(data):
        step = cuts[i % len(cuts)]
        i += 1
        out = splitter.feed(data[pos:pos + step])
        assert out.start <= out.end
        for text, offset in zip(out.lines, out.offsets, strict=True):
            got.append((offset, text, len(text)))
        for over in out.oversized:
            got.append((over.offset, over.sample, over.length))
        pos += step
        assert len(splitter._pending) <= limit  # never holds a long line whole
    got.sort()
    expected = []
    offset = start
    for text in lines:
        expected.append((offset, text if len(text) <= limit else text[:SAMPLE_BYTES], len(text)))
        offset += len(text) + 1
    assert got == expected
    assert splitter.consumed == start + len(data) - len(tail)


# -- the parser ------------------------------------------------------------------------------------

json_scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30))
json_values = st.recursive(json_scalars, lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(st.text(max_size=8), children, max_size=4), max_leaves=20)
int_like = (st.integers(-(2**70), 2**70) | st.integers(-(2**70), 2**70).map(str)
            | st.text(string.digits + " -+", max_size=25) | st.floats(allow_nan=False, allow_infinity=False))
FIELDS = {
    "eventname": st.text(max_size=40) | json_scalars,
    "component": st.text(max_size=20) | json_scalars, "action": st.text(max_size=20),
    "target": st.text(max_size=20), "crud": st.text(max_size=2) | json_scalars,
    "edulevel": int_like, "anonymous": int_like, "courseid": int_like, "contextid": int_like,
    "contextlevel": int_like, "contextinstanceid": int_like, "userid": int_like,
    "relateduserid": int_like, "realuserid": int_like, "objectid": int_like,
    "objecttable": st.text(max_size=20) | json_scalars,
    "ip": st.ip_addresses().map(str) | st.text(max_size=40) | json_scalars,
    "origin": st.text(max_size=10) | json_scalars, "other": json_values,
    "timecreated": int_like | st.integers(-62135596800, 253402300799),
    "timecreated_us": int_like | st.integers(-62135596800 * 10**6, 253402300799 * 10**6),
}
events = st.fixed_dictionaries({}, optional=FIELDS)
# Built as bytes: orjson writes neither integers beyond 64 bits nor more than 254 levels.
nested = st.integers(1, 1100).map(lambda d: b'{"eventname":"x","timecreated":1,"other":'
                                  + b'{"k":[' * (d // 2) + b"1" + b"]}" * (d // 2) + b"}")


def _encode(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")


def _encode_spaced(obj: Any) -> bytes:
    """JSON with tabs, CRs and spaces between tokens: ``other`` ships as its own text."""
    return json.dumps(obj, ensure_ascii=False, separators=(" ,\t", " :\r ")).encode("utf-8", "surrogatepass")


raw_lines = st.binary(max_size=200).map(lambda b: b.replace(b"\n", b""))
lines = st.one_of(raw_lines, events.map(_encode), events.map(_encode_spaced), nested,
                  json_values.map(_encode), events.map(lambda e: b"\xef\xbb\xbf" + _encode(e)),
                  events.map(lambda e: _encode(e) + b"\r"))


def _check_parse(batch: list[bytes]) -> list[bytes]:
    offsets = list(range(0, len(batch) * 1000, 1000))
    out = Parser().parse(batch, offsets)
    blank = sum(1 for raw, off in zip(batch, offsets, strict=True) if _blank(raw, off))
    assert len(out.rows) + len(out.dead) + out.blank == len(batch)
    assert out.blank == blank
    assert sorted(out.offsets + [d.offset for d in out.dead]) == sorted(
        off for raw, off in zip(batch, offsets, strict=True) if not _blank(raw, off))
    for dead in out.dead:
        assert dead.reason in DEAD_LETTER_REASONS and dead.detail
        assert dead.raw == batch[dead.offset // 1000] and dead.length == len(dead.raw)
    for row in out.rows:
        assert row.endswith(b"\n") and row.count(b"\n") == 1
        assert row.count(b"\t") == len(COLUMNS) - 1
    return out.rows


def _blank(raw: bytes, offset: int) -> bool:
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    if offset == 0 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    return not raw or raw.isspace()


@settings(max_examples=250, deadline=None)
@given(st.lists(lines, min_size=1, max_size=8))
def test_parser_never_raises_and_accounts_for_every_line(batch: list[bytes]) -> None:
    _check_parse(batch)


@settings(max_examples=60, deadline=None)
@given(nested)
def test_parser_survives_any_nesting_depth(raw: bytes) -> None:
    _check_parse([raw])


@pytest.fixture
def copy_conn(initdb: str) -> Any:
    with psycopg.connect(initdb) as conn:
        yield conn


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(events.map(_encode), events.map(_encode_spaced), nested), min_size=1, max_size=8))
def test_postgresql_accepts_every_row_the_parser_makes(copy_conn: psycopg.Connection,
                                                       batch: list[bytes]) -> None:
    rows = _check_parse(batch)
    if not rows:
        return
    try:
        with copy_conn.cursor() as cur, cur.copy(COPY_SQL) as copy:
            for row in rows:
                copy.write(row)
    finally:
        copy_conn.rollback()
