"""Scenario 4, hostile input end to end: every line a running shipper is fed ends as a row or as a dead
letter with a reason, exactly once, and the shipper never crashes.

The named cases each have the outcome SPEC section 2 prescribes (a row, maybe with fields nulled, or a
dead letter with a given reason); the long run adds thousands of randomly mangled events whose fate is
not predicted, only that it is exactly one of the two. A 50 MB line is written in pieces while the
shipper reads, and its memory must not follow it.
"""

from __future__ import annotations

import json
import os
import random
import time
from typing import Any

import psycopg

from conftest import Shipper, count_rows, event, line, wait_for

from .harness import Ledger, Line, SpoolWriter, check, rss_kib

MAX_LINE = 1024 * 1024
SIZES = {"short": {"mangled": 300, "big_lines": 1, "big_mb": 50},
         "long": {"mangled": 30_000, "big_lines": 4, "big_mb": 50}}


def dumps(obj: Any) -> bytes:
    """JSON as a PHP writer might make it: integers of any size, non-ASCII as UTF-8."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def time_us(ev: dict[str, Any]) -> int:
    return int(ev["timecreated_us"])


class Cases:
    """Named hostile lines: (raw line without "\\n", expected outcome, the Line for the ledger)."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.items: list[tuple[str, bytes, str, Line]] = []

    def add(self, name: str, raw: bytes, outcome: str, seq: int | None = None,
            eventname: str | None = None, when: int | None = None) -> None:
        self.items.append((name, raw, outcome, Line("", 0, b"", seq, eventname, when)))

    def event(self, name: str, outcome: str = "row", check_content: bool = True,
              **changes: Any) -> None:
        """An event with ``changes`` (None deletes a key); its seq lets it be found as a row."""
        seq = self.ledger.take()
        ev = event(seq)
        for key, value in changes.items():
            if value is None:
                ev.pop(key, None)
            elif key == "other":
                ev[key] = {**value, "seq": seq}  # the seq is how the row is found
            else:
                ev[key] = value
        self.add(name, dumps(ev), outcome, seq, ev.get("eventname") if check_content else None,
                 time_us(ev) if check_content and "timecreated_us" in ev else None)

    def build(self) -> None:
        seq = self.ledger.take
        # Not UTF-8, not JSON
        self.add("truncated UTF-8", b'{"eventname":"caf\xc3","timecreated":1764000000}', "invalid_utf8")
        self.add("overlong UTF-8", b'{"eventname":"\xc0\xaf","timecreated":1764000000}', "invalid_utf8")
        self.add("UTF-16", '{"eventname":"x","timecreated":1}'.encode("utf-16"), "invalid_utf8")
        self.add("raw NUL in a string", b'{"eventname":"a\x00b","timecreated":1764000000}', "invalid_json")
        self.add("NUL bytes only", b"\x00\x00\x00", "invalid_json")
        self.add("lone surrogate", b'{"eventname":"\\ud800","timecreated":1764000000}', "invalid_json")
        self.add("trailing garbage", dumps(event(seq())) + b" x", "invalid_json")
        self.add("half an object", dumps(event(seq()))[:40], "invalid_json")
        self.add("number too big for a double in a column",
                 b'{"eventname":"x","timecreated":1764000000,"courseid":1e400}', "invalid_json")
        self.add("nested 2000 deep", b'{"eventname":"x","timecreated":1,"other":' + b"[" * 2000
                 + b"]" * 2000 + b"}", "invalid_json")
        # JSON, but not an object
        for name, value in (("array of an event", [event(seq())]), ("string", "x"), ("number", 12),
                            ("null", None), ("true", True), ("empty array", [])):
            self.add(f"JSON {name}", dumps(value), "not_an_object")
        # Objects that are not events
        self.event("no eventname", "missing_eventname", eventname=None)
        self.event("eventname a number", "invalid_eventname", eventname=123)
        self.event("NUL in eventname", "invalid_eventname", check_content=False, eventname="a\u0000b")
        self.event("no timecreated", "missing_timecreated", timecreated=None, timecreated_us=None)
        self.event("timecreated text", "invalid_timecreated", timecreated="soon", timecreated_us=None)
        self.event("timecreated 1e300", "invalid_timecreated", timecreated=1e300, timecreated_us=None)
        self.event("timecreated year 10000", "invalid_timecreated", timecreated=253402300800,
                   timecreated_us=None)
        # Events that ship, some fields nulled
        self.event("userid 10**30", userid=10**30)
        self.event("courseid 20 digits as text", courseid="9" * 20)
        self.event("edulevel over smallint", edulevel=70000)
        self.event("timecreated_us 10**40 (time from timecreated)", check_content=False,
                   timecreated_us=10**40)
        self.event("invalid ip", ip="999.1.1.1")
        self.event("crud too long", crud="rw")
        self.event("NUL in component", component="a\u0000b")
        self.event("NUL in other", other={"seq": 0, "x": "a\u0000b"})
        for depth in (100, 300, 1000):
            s = seq()
            ev = event(s)
            del ev["other"]
            raw = (dumps(ev)[:-1] + b',"other":{"seq":' + str(s).encode() + b',"deep":'
                   + b'{"d":[' * (depth // 2)
                   + b'"bottom"' + b"]}" * (depth // 2) + b"}}")
            self.add(f"nested {depth} deep", raw, "row", s, ev["eventname"], time_us(ev))
        self.event("tabs, newlines, backslashes", eventname="\\core\\event\t\n\r\\x\\N")
        self.event("emoji and CJK", eventname="\\mod_forum\\event\\post_created 🎓 学习")
        self.event("other with a big number", other={"n": 10**30, "m": -(10**25)})
        s = seq()
        ev = event(s)
        del ev["other"]
        # other is stored as written: jsonb's numeric holds what a double cannot
        self.add("other with a number too big for a double",
                 dumps(ev)[:-1] + b',"other":{"seq":' + str(s).encode() + b',"n":1e400}}', "row", s,
                 ev["eventname"], time_us(ev))
        # ... but not beyond numeric's range: the database refuses that row alone, a dead letter
        self.add("other with a number beyond numeric",
                 b'{"eventname":"x","timecreated":1764000000,"other":[1e200000]}', "rejected_by_database")
        # Longer than Moodle's own eventname column (255): a dead letter, never a row the index refuses.
        self.event("1 MiB eventname", "invalid_eventname", eventname="e" * (MAX_LINE - 2000))
        self.event("3 KB eventname", "invalid_eventname",
                   eventname=random.Random(1).randbytes(1500).hex())
        # Too long for its column (SPEC 2): the field is NULL and the event ships.
        self.event("10 KB component", "row", component=random.Random(2).randbytes(5000).hex())
        self.event("unknown keys", extra_key={"a": [1, 2, 3]}, another="x" * 1000)
        self.event("ids as floats", userid=7.0, courseid=2.0)
        self.event("timecreated as text", timecreated="1764000123", timecreated_us=None)
        s = seq()
        dup = dumps(event(s))[:-1] + b',"eventname":"\\\\second\\\\wins"}'
        self.add("duplicate keys: the last wins", dup, "row", s, "\\second\\wins", time_us(event(s)))
        # Sizes around the limit
        s = seq()
        base = dumps(event(s))
        pad = MAX_LINE - len(base) - len(b',"pad":""')
        exact = base[:-1] + b',"pad":"' + b"p" * pad + b'"}'
        assert len(exact) == MAX_LINE
        self.add("exactly spool.max_line_bytes", exact, "row", s, event(s)["eventname"], time_us(event(s)))
        self.add("one byte over", exact[:-1] + b' }', "line_too_long")
        # Mixed in, then caught by the blank-line rule: never in a table
        self.add("a lone CR", b"\r", "blank")
        self.add("spaces and tabs", b"  \t ", "blank")

    def mangled(self, rng: random.Random, count: int) -> None:
        """Events with random damage before their ``other`` (so a survivor still has its own seq)."""
        for _ in range(count):
            s = self.ledger.take()
            ev = event(s)
            del ev["other"]
            head = dumps(ev)[:-1]
            head = bytearray(head)
            for _ in range(rng.randint(1, 4)):
                pos = rng.randrange(1, len(head))
                kind = rng.random()
                if kind < 0.4:
                    head[pos] = rng.randrange(256)
                elif kind < 0.7:
                    head[pos:pos] = rng.randbytes(rng.randint(1, 8))
                else:
                    del head[pos:pos + rng.randint(1, 20)]
            raw = bytes(head).replace(b"\n", b" ") + b',"other":{"seq":' + str(s).encode() + b"}}"
            self.add("mangled", raw, "any", s)
        for _ in range(count // 3):
            raw = rng.randbytes(rng.randint(1, 300)).replace(b"\n", b"")
            if raw.strip(b" \t\r\xef\xbb\xbf") and not raw.startswith(b"\xef\xbb\xbf"):
                self.add("random bytes", raw, "dead")


def test_hostile_input(shipper: Shipper, level: str, figures: dict[str, Any]) -> None:
    size = SIZES[level]
    rng = random.Random(4)
    ledger = Ledger()
    cases = Cases(ledger)
    cases.build()
    cases.mangled(rng, size["mangled"])
    writer = SpoolWriter(ledger)
    shipper.write_config(**{"spool.delete_shipped": False})
    # A file that starts with a BOM, one with CRLF endings, one of everything hostile among events.
    bom = shipper.spool / "bom.jsonl"
    first = ledger.take(1)
    writer.append(bom, [(b"\xef\xbb\xbf" + line(event(first)), first)])
    writer.events(bom, 100)
    crlf = shipper.spool / "crlf.jsonl"
    start = ledger.take(200)
    writer.append(crlf, [(line(event(i))[:-1] + b"\r\n", i) for i in range(start, start + 200)])
    hostile = shipper.spool / "hostile.jsonl"
    items: list[tuple[bytes, Any]] = []
    order = list(cases.items)
    rng.shuffle(order)
    named = {}
    writer.events(hostile, 10)  # a plain first line: the file's key does not hang on a hostile one
    for name, raw, outcome, entry in order:
        items.append((raw + b"\n", entry if outcome != "blank" else None))
        named[id(entry)] = (name, outcome)
        if rng.random() < 0.3:
            first = ledger.take()
            items.append((line(event(first)), first))
    shipper.start()
    for i in range(0, len(items), 500):
        writer.append(hostile, items[i:i + 500])
    # 50 MB lines, written in 1 MiB pieces while the shipper reads, then ended.
    big = shipper.spool / "big.jsonl"
    writer.events(big, 5)
    peak_rss = 0
    assert shipper.proc is not None
    for _ in range(size["big_lines"]):
        s = ledger.take()
        text = dumps(event(s, other={"seq": s, "blob": "b" * (size["big_mb"] * 1024 * 1024)})) + b"\n"
        size_before = os.path.getsize(big)
        with open(big, "ab") as fh:
            for i in range(0, len(text), 1024 * 1024):
                fh.write(text[i:i + 1024 * 1024])
                fh.flush()
                peak_rss = max(peak_rss, rss_kib(shipper.proc.pid))
                time.sleep(0.002)
        entry = Line(writer.files[_ident(big)].key or "", size_before, text[:2 * MAX_LINE], s)
        ledger.lines.append(entry)
        named[id(entry)] = ("50 MB line", "line_too_long")
        writer.files[_ident(big)].size = os.path.getsize(big)
        writer.events(big, 5)
    expected = ledger.written
    wait_for(lambda: count_rows(shipper.dsn) + count_rows(shipper.dsn, "shipper_dead_letter") >= expected,
             timeout=120, interval=0.3, what=f"{expected} lines")
    time.sleep(1.0)
    peak_rss = max(peak_rss, rss_kib(shipper.proc.pid))
    assert shipper.proc.poll() is None, "the shipper died"
    assert shipper.stop() == 0
    outcome = check(shipper.dsn, ledger, max_line_bytes=MAX_LINE)
    fates = _fates(shipper.dsn, ledger)
    wrong = []
    counts: dict[str, int] = {}
    for entry in ledger.lines:
        name, want = named.get(id(entry), ("?", "any"))
        got = fates.get(id(entry), "missing")
        counts[got] = counts.get(got, 0) + 1
        if want == "any":
            ok = got != "missing"
        elif want == "dead":
            ok = got not in ("row", "missing")
        else:
            ok = got in want.split("|")
        if not ok:
            wrong.append((name, want, got))
    logs = shipper.logs()
    named_count = sum(1 for c in cases.items if c[0] not in ("mangled", "random bytes"))
    figures.update(scenario="hostile input", level=level, named_cases=named_count,
                   mangled_lines=size["mangled"], big_lines=size["big_lines"],
                   outcomes=dict(sorted(counts.items())), peak_rss_mib=round(peak_rss / 1024, 1),
                   **outcome.figures())
    outcome.assert_exact()
    assert not wrong, wrong
    assert "Traceback" not in logs, logs[logs.index("Traceback") - 1000:][:4000]
    assert peak_rss < 300 * 1024, f"the shipper's memory followed a 50 MB line: {peak_rss} KiB"


def _ident(path: Any) -> tuple[int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino)


def _fates(dsn: str, ledger: Ledger) -> dict[int, str]:
    """Where each special line went: "row", a dead-letter reason, or absent."""
    with psycopg.connect(dsn) as conn:
        rows = {int(r[0]) for r in conn.execute(
            "SELECT (other->>'seq')::bigint FROM moodle_events WHERE jsonb_typeof(other) = 'object'"
            " AND jsonb_typeof(other->'seq') = 'number'")}
        seqless = {int(r[0]) for r in conn.execute(  # "other" nulled: found by time (unique per seq)
            "SELECT (extract(epoch FROM time) * 1000000)::bigint FROM moodle_events"
            " WHERE jsonb_typeof(other->'seq') IS DISTINCT FROM 'number'")}
        dead = {(k, int(o)): r for k, o, r in conn.execute(
            "SELECT file_key, line_offset, reason FROM shipper_dead_letter")}
    out = {}
    for entry in ledger.lines:
        if (entry.seq is not None and entry.seq in rows) or (entry.time_us is not None
                                                              and entry.time_us in seqless):
            out[id(entry)] = "row"
        elif (entry.key, entry.offset) in dead:
            out[id(entry)] = dead[(entry.key, entry.offset)]
    return out
