"""Turn spool lines into rows for COPY into moodle_events, or into dead letters; pure, no I/O.

This is the per-line hot path: one msgspec decode per line straight into the fields the table
stores (no dict; unknown keys are skipped; ``other`` is kept as its raw JSON text, since the jsonb
column reads JSON text anyway and decoding it only to encode it again was a third of the parse), then a
fixed walk over the columns that builds the row directly in PostgreSQL's COPY text format. A line
msgspec rejects is read again with orjson, whose verdict decides whether it is a dead letter and why.
A value that cannot be stored in its column becomes NULL and is counted by field name; a line that
cannot be an event at all becomes a dead letter with a reason an operator can read.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
import orjson

COLUMNS: tuple[str, ...] = (
    "time", "eventname", "component", "action", "target", "crud", "edulevel", "anonymous",
    "courseid", "contextid", "contextlevel", "contextinstanceid", "userid", "relateduserid",
    "realuserid", "objectid", "objecttable", "ip", "origin", "other",
)

# Dead-letter reasons: a closed set, so they can label a metric.
INVALID_JSON = "invalid_json"
INVALID_UTF8 = "invalid_utf8"
NOT_AN_OBJECT = "not_an_object"
MISSING_EVENTNAME = "missing_eventname"
INVALID_EVENTNAME = "invalid_eventname"
MISSING_TIMECREATED = "missing_timecreated"
INVALID_TIMECREATED = "invalid_timecreated"
LINE_TOO_LONG = "line_too_long"
REJECTED_BY_DATABASE = "rejected_by_database"
DEAD_LETTER_REASONS = (INVALID_JSON, INVALID_UTF8, NOT_AN_OBJECT, MISSING_EVENTNAME, INVALID_EVENTNAME,
                       MISSING_TIMECREATED, INVALID_TIMECREATED, LINE_TOO_LONG, REJECTED_BY_DATABASE)

# Fields that can be nulled, for pre-created metric labels.
NULLABLE_FIELDS = (*COLUMNS[2:], "timecreated_us")

BOM = b"\xef\xbb\xbf"
INT64 = (-(2**63), 2**63 - 1)
INT32 = (-(2**31), 2**31 - 1)
INT16 = (-(2**15), 2**15 - 1)
# datetime's range, which sits inside timestamptz's: seconds from year 1 to year 9999.
MIN_EPOCH = -62135596800
MAX_EPOCH = 253402300799
MIN_EPOCH_US = MIN_EPOCH * 1_000_000
MAX_EPOCH_US = MAX_EPOCH * 1_000_000 + 999_999
TEXT_CACHE_SIZE = 4096

_INT_COLUMNS: tuple[tuple[str, tuple[int, int]], ...] = (
    ("edulevel", INT16), ("anonymous", INT16), ("courseid", INT64), ("contextid", INT64),
    ("contextlevel", INT32), ("contextinstanceid", INT64), ("userid", INT64),
    ("relateduserid", INT64), ("realuserid", INT64), ("objectid", INT64),
)
_INT_TEXT = re.compile(r"\s*[-+]?\d{1,20}\s*")
_COPY_SPECIAL = re.compile(r"[\\\t\n\r]")
_COPY_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_NUL_IN_JSON = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
_BAD = object()  # a value present but not storable in its column


_NULL_JSON = msgspec.Raw(b"null")


class _Event(msgspec.Struct, gc=False):
    """The keys of a spool line that the table stores, each as whatever JSON value it holds."""

    eventname: Any = None
    component: Any = None
    action: Any = None
    target: Any = None
    objecttable: Any = None
    objectid: Any = None
    crud: Any = None
    edulevel: Any = None
    contextid: Any = None
    contextlevel: Any = None
    contextinstanceid: Any = None
    userid: Any = None
    courseid: Any = None
    relateduserid: Any = None
    anonymous: Any = None
    other: msgspec.Raw = _NULL_JSON
    timecreated: Any = None
    timecreated_us: Any = None
    origin: Any = None
    ip: Any = None
    realuserid: Any = None


_EVENT_KEYS = frozenset(_Event.__struct_fields__) - {"other"}
_decode_event = msgspec.json.Decoder(_Event).decode


@dataclass(slots=True)
class DeadLetter:
    """A line that cannot become an event, with enough to find it again in its file."""

    offset: int
    reason: str
    detail: str
    raw: bytes
    length: int


@dataclass(slots=True)
class Parsed:
    """The result of parsing the lines of one read: COPY rows plus everything that is not a row.

    ``rows[i]`` is one COPY text line (with its "\\n") for the spool line at ``offsets[i]`` whose raw
    bytes are ``raws[i]`` (kept so a row the database rejects can still be dead-lettered).
    ``oldest`` is the smallest event time in seconds, for the lag-in-seconds metric.
    """

    rows: list[bytes] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    raws: list[bytes] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    blank: int = 0
    nulled: Counter[str] = field(default_factory=Counter)
    oldest: float | None = None


def _copy_text(value: str) -> str:
    if _COPY_SPECIAL.search(value) is None:
        return value
    return _COPY_SPECIAL.sub(lambda m: _COPY_ESCAPES[m.group()], value)


def _to_int(value: Any, bounds: tuple[int, int]) -> Any:
    """An integer for an integer column, None for no value, _BAD for a value that cannot fit."""
    kind = type(value)
    if kind is int:
        return value if bounds[0] <= value <= bounds[1] else _BAD
    if value is None or value == "":
        return None
    if kind is str:
        # Plain digits (how Moodle passes ids as strings) skip the regex; it would match them.
        if not (value.isdecimal() and len(value) <= 20) and _INT_TEXT.fullmatch(value) is None:
            return _BAD
        number = int(value)
    elif (kind is float and value.is_integer()) or kind is bool:
        number = int(value)
    else:
        return _BAD
    return number if bounds[0] <= number <= bounds[1] else _BAD


# Longest text kept in a column: Moodle's own log table has at most varchar(255) for these, and the
# indexes on (time, eventname) and (time, component, action) must stay under PostgreSQL's b-tree limit
# of about 2700 bytes per entry (255 characters are at most 1020 bytes of UTF-8).
MAX_TEXT_CHARS = 255


def _to_text(value: Any) -> Any:
    kind = type(value)
    if kind is str:
        if "\x00" in value or len(value) > MAX_TEXT_CHARS:
            return _BAD
        return _copy_text(value)
    if value is None:
        return None
    if kind is int or kind is float:
        return str(value)
    return _BAD


class _IpCache:
    """Validated addresses; a site has far fewer client addresses than events, so most are hits."""

    def __init__(self, size: int = 65536) -> None:
        self.size = size
        self.known: dict[str, bool] = {}

    def valid(self, text: str) -> bool:
        ok = self.known.get(text)
        if ok is None:
            try:
                ipaddress.ip_address(text)
                ok = True
            except ValueError:
                ok = False
            if len(self.known) >= self.size:
                self.known.clear()
            self.known[text] = ok
        return ok


class _TimeCache:
    """COPY text of a second, cached: events arrive in time order, so consecutive lines share it."""

    def __init__(self, size: int = 16384) -> None:
        self.size = size
        self.seconds: dict[int, str] = {}

    def text(self, seconds: int) -> str:
        text = self.seconds.get(seconds)
        if text is None:
            text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")
            if len(self.seconds) >= self.size:
                self.seconds.clear()
            self.seconds[seconds] = text
        return text


def _event_time(tc: Any, us: Any, nulled: Counter[str]) -> tuple[int, int] | str:
    """(seconds, microseconds) of the event, or the dead-letter reason when it has no usable time."""
    if tc is None:
        return MISSING_TIMECREATED
    seconds = _to_int(tc, (MIN_EPOCH, MAX_EPOCH))
    if seconds is None or seconds is _BAD:
        return INVALID_TIMECREATED
    if us is not None:
        micros = _to_int(us, (MIN_EPOCH_US, MAX_EPOCH_US))
        if micros is None or micros is _BAD:
            nulled["timecreated_us"] += 1
        else:
            return divmod(micros, 1_000_000)
    return seconds, 0


class Parser:
    """Parses lines into COPY rows; keeps caches across calls, so one Parser per daemon.

    The loop is written out column by column for speed (it is most of the shipper's CPU, see
    BENCHMARKS.md): each column has a fast path for the value Moodle sends (an int in range, a string
    already seen, None) and falls back to the general conversion (``_to_int``, ``_to_text``) for
    anything else, so the result is the same as converting every value the general way.
    """

    def __init__(self) -> None:
        self._ips = _IpCache()
        self._times = _TimeCache()
        # COPY text of strings already seen in the text columns (eventname, component, ...): few
        # distinct values, and most need escaping (every eventname has backslashes). None is NULL.
        self._texts: dict[str | None, str] = {None: "\\N"}

    def _text(self, value: Any, column: str, nulled: Counter[str]) -> str:
        """The general path for a text column: convert, count a value that cannot be stored, cache."""
        text = _to_text(value)
        if text is _BAD:
            nulled[column] += 1
            return "\\N"
        if text is None:
            return "\\N"
        if type(value) is str:
            texts = self._texts
            if len(texts) >= TEXT_CACHE_SIZE:
                texts.clear()
                texts[None] = "\\N"
            texts[value] = text
        return text  # type: ignore[no-any-return]

    def parse(self, lines: list[bytes], offsets: list[int], out: Parsed | None = None) -> Parsed:
        """Parse complete lines (without "\\n") found at ``offsets`` in their file."""
        out = Parsed() if out is None else out
        rows, row_offsets, raws, nulled = out.rows, out.offsets, out.raws, out.nulled
        ip_known, ip_valid = self._ips.known, self._ips.valid
        seconds_text, time_text = self._times.seconds, self._times.text
        texts, text = self._texts, self._text
        oldest = out.oldest
        decode, null_json, nul_in_json = _decode_event, _NULL_JSON, _NUL_IN_JSON
        lo64, hi64, lo32, hi32, lo16, hi16 = INT64[0], INT64[1], INT32[0], INT32[1], INT16[0], INT16[1]
        for line, offset in zip(lines, offsets, strict=True):
            raw = line
            if line.endswith(b"\r"):
                line = line[:-1]
            if offset == 0 and line.startswith(BOM):
                line = line[3:]
            try:
                if not line.isascii():
                    # msgspec checks the UTF-8 of the values it decodes, not of what it skips (keys the
                    # table does not store, other): a line that is not UTF-8 is a dead letter, whole.
                    line.decode()
                event = decode(line)
            except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
                event = _read_again(line, raw, offset, out)
                if event is None:
                    continue
            name = event.eventname
            name_text = texts.get(name) if type(name) is str else None
            if not name_text:  # not seen before (or "", which is no name)
                if name is None or name == "":
                    out.dead.append(DeadLetter(offset, MISSING_EVENTNAME, "no eventname", raw, len(raw)))
                    continue
                if type(name) is not str or "\x00" in name or len(name) > MAX_TEXT_CHARS:
                    out.dead.append(DeadLetter(offset, INVALID_EVENTNAME, "eventname is not a string "
                                               f"of at most {MAX_TEXT_CHARS} characters", raw, len(raw)))
                    continue
                name_text = text(name, "eventname", nulled)

            tc = event.timecreated
            us = event.timecreated_us
            if (type(us) is int and type(tc) is int and MIN_EPOCH <= tc <= MAX_EPOCH
                    and MIN_EPOCH_US <= us <= MAX_EPOCH_US):
                seconds, micros = divmod(us, 1_000_000)
            elif us is None and type(tc) is int and MIN_EPOCH <= tc <= MAX_EPOCH:
                seconds, micros = tc, 0
            else:
                when = _event_time(tc, us, nulled)
                if type(when) is str:
                    out.dead.append(DeadLetter(offset, when, f"timecreated={tc!r:.80}", raw, len(raw)))
                    continue
                seconds, micros = when  # type: ignore[misc]

            other = event.other
            if other is null_json:
                other = "\\N"
            else:
                other = str(other, "utf-8")
                if other == "null":
                    other = "\\N"
                elif "\\u0000" in other and nul_in_json.search(other):
                    # jsonb cannot hold U+0000; the event ships without its "other".
                    nulled["other"] += 1
                    other = "\\N"
                else:
                    other = other.replace("\\", "\\\\")
                    if "\t" in other or "\r" in other:  # JSON whitespace that COPY would misread
                        other = other.replace("\t", "\\t").replace("\r", "\\r")

            if oldest is None or seconds < oldest:
                oldest = seconds
            ts = seconds_text.get(seconds) or time_text(seconds)
            ts = f"{ts}.{micros:06d}+00" if micros else f"{ts}+00"

            v = event.component
            try:
                component = texts[v]
            except (KeyError, TypeError):
                component = text(v, "component", nulled)
            v = event.action
            try:
                action = texts[v]
            except (KeyError, TypeError):
                action = text(v, "action", nulled)
            v = event.target
            try:
                target = texts[v]
            except (KeyError, TypeError):
                target = text(v, "target", nulled)

            crud = event.crud
            if crud is None or crud == "":
                crud = "\\N"
            elif not (type(crud) is str and len(crud) == 1 and crud not in "\x00\\\t\n\r"):
                nulled["crud"] += 1
                crud = "\\N"

            # Integers go into the row as they are (the f-string formats them); NULL as \N.
            v = event.edulevel
            edulevel = (v if type(v) is int and lo16 <= v <= hi16
                        else "\\N" if v is None else _int_text(v, INT16, "edulevel", nulled))
            v = event.anonymous
            anonymous = (v if type(v) is int and lo16 <= v <= hi16
                         else "\\N" if v is None else _int_text(v, INT16, "anonymous", nulled))
            v = event.courseid
            courseid = (v if type(v) is int and lo64 <= v <= hi64
                        else "\\N" if v is None else _int_text(v, INT64, "courseid", nulled))
            v = event.contextid
            contextid = (v if type(v) is int and lo64 <= v <= hi64
                         else "\\N" if v is None else _int_text(v, INT64, "contextid", nulled))
            v = event.contextlevel
            contextlevel = (v if type(v) is int and lo32 <= v <= hi32
                            else "\\N" if v is None else _int_text(v, INT32, "contextlevel", nulled))
            v = event.contextinstanceid
            instanceid = (v if type(v) is int and lo64 <= v <= hi64
                          else "\\N" if v is None else _int_text(v, INT64, "contextinstanceid", nulled))
            v = event.userid
            userid = (v if type(v) is int and lo64 <= v <= hi64
                      else "\\N" if v is None else _int_text(v, INT64, "userid", nulled))
            v = event.relateduserid
            relateduserid = (v if type(v) is int and lo64 <= v <= hi64
                             else "\\N" if v is None else _int_text(v, INT64, "relateduserid", nulled))
            v = event.realuserid
            realuserid = (v if type(v) is int and lo64 <= v <= hi64
                          else "\\N" if v is None else _int_text(v, INT64, "realuserid", nulled))
            v = event.objectid
            objectid = (v if type(v) is int and lo64 <= v <= hi64
                        else "\\N" if v is None else _int_text(v, INT64, "objectid", nulled))

            v = event.objecttable
            try:
                objecttable = texts[v]
            except (KeyError, TypeError):
                objecttable = text(v, "objecttable", nulled)
            ip = event.ip
            if ip is None or ip == "":
                ip = "\\N"
            elif not (type(ip) is str and (ip_known.get(ip) or ip_valid(ip))):
                nulled["ip"] += 1
                ip = "\\N"
            v = event.origin
            try:
                origin = texts[v]
            except (KeyError, TypeError):
                origin = text(v, "origin", nulled)
            rows.append(
                f"{ts}\t{name_text}\t{component}\t{action}\t{target}\t{crud}\t{edulevel}\t{anonymous}\t"
                f"{courseid}\t{contextid}\t{contextlevel}\t{instanceid}\t{userid}\t"
                f"{relateduserid}\t{realuserid}\t{objectid}\t{objecttable}\t{ip}\t{origin}\t{other}\n"
                .encode())
            row_offsets.append(offset)
            raws.append(raw)
        out.oldest = oldest
        return out


def _read_again(line: bytes, raw: bytes, offset: int, out: Parsed) -> _Event | None:
    """Read a line msgspec rejected with orjson: a blank line, a dead letter, or (rarely) an event.

    orjson's reasons are the dead letters' reasons. It also reads what msgspec cannot but is still an
    event: nesting between msgspec's depth limit (about 1,000) and orjson's (1,024), in a key the table
    does not store or in ``other``, which then ships without ``other`` if orjson cannot write it back.
    """
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        if not line or line.isspace():  # only here: such a line is never JSON
            out.blank += 1
        else:
            out.dead.append(_invalid(offset, raw, str(exc)))
        return None
    if type(obj) is not dict:
        out.dead.append(DeadLetter(offset, NOT_AN_OBJECT,
                                   f"a JSON {type(obj).__name__} where an object is needed",
                                   raw, len(raw)))
        return None
    event = _Event(**{key: value for key, value in obj.items() if key in _EVENT_KEYS})
    other = obj.get("other")
    if other is not None:
        try:
            event.other = msgspec.Raw(orjson.dumps(other))
        except orjson.JSONEncodeError:  # nested deeper than orjson writes (254 levels)
            out.nulled["other"] += 1
    return event


def _int_text(value: Any, bounds: tuple[int, int], column: str, nulled: Counter[str]) -> int | str:
    """The general path for an integer column: the number, or "\\N" (counted when not storable)."""
    number = _to_int(value, bounds)
    if number is _BAD:
        nulled[column] += 1
        return "\\N"
    return "\\N" if number is None else number  # type: ignore[no-any-return]


def _invalid(offset: int, raw: bytes, why: str) -> DeadLetter:
    """invalid_utf8 when the line is not UTF-8 (said first: it explains any JSON error), else invalid_json."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return DeadLetter(offset, INVALID_UTF8, f"not UTF-8: {err.reason} at byte {err.start}",
                          raw, len(raw))
    return DeadLetter(offset, INVALID_JSON, f"not JSON: {why}"[:300], raw, len(raw))
