"""The line splitter: complete lines only, exact offsets, over-long lines never held whole."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shipper.spool.lines import SAMPLE_BYTES, LineSplitter


def test_partial_last_line_waits_for_its_newline() -> None:
    s = LineSplitter(0, 100)
    out = s.feed(b'{"a":1}\n{"b"')
    assert out.lines == [b'{"a":1}']
    assert out.offsets == [0]
    assert out.end == 8 and s.consumed == 8
    out = s.feed(b":2}\n")
    assert out.lines == [b'{"b":2}']
    assert out.offsets == [8]
    assert (out.start, out.end) == (8, 16)


def test_starts_at_the_given_offset() -> None:
    s = LineSplitter(1000, 100)
    out = s.feed(b"x\ny\n")
    assert out.offsets == [1000, 1002]
    assert s.consumed == 1004


def test_no_newline_yields_nothing_and_consumes_nothing() -> None:
    s = LineSplitter(0, 100)
    out = s.feed(b"abc")
    assert out.lines == [] and out.end == 0 and s.consumed == 0 and s.pending_bytes == 3


def test_oversized_line_is_reported_with_a_sample_and_its_length() -> None:
    limit = 10
    s = LineSplitter(0, limit)
    out = s.feed(b"ok\n" + b"x" * 25 + b"\nnext\n")
    assert out.lines == [b"ok", b"next"]
    assert [(o.offset, o.length, o.sample) for o in out.oversized] == [(3, 25, b"x" * 25)]
    assert out.end == 3 + 26 + 5


def test_oversized_line_across_reads_is_not_kept_in_memory() -> None:
    limit = 1000
    s = LineSplitter(0, limit)
    total = 0
    for _ in range(50):  # 50 x 100 KiB without a newline
        out = s.feed(b"y" * 100_000)
        total += 100_000
        assert out.lines == [] and out.oversized == []
        assert len(s._pending) <= limit
    out = s.feed(b"tail\nafter\n")
    assert len(out.oversized) == 1
    over = out.oversized[0]
    assert over.offset == 0 and over.length == total + 4
    assert len(over.sample) == SAMPLE_BYTES
    assert out.lines == [b"after"]
    assert out.offsets == [total + 5]
    assert s.consumed == total + 5 + 6


def test_line_exactly_at_the_limit_is_kept() -> None:
    s = LineSplitter(0, 5)
    out = s.feed(b"12345\n123456\n")
    assert out.lines == [b"12345"]
    assert [o.length for o in out.oversized] == [6]


@given(st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")), max_size=40),
       st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=20),
       st.booleans())
def test_any_split_of_the_bytes_gives_the_same_lines(lines: list[bytes], cuts: list[int],
                                                     complete: bool) -> None:
    data = b"".join(line + b"\n" for line in lines) + (b"" if complete else b"partial")
    s = LineSplitter(0, 20)
    got, offsets, over = [], [], []
    pos = 0
    i = 0
    while pos < len(data):
        step = cuts[i % len(cuts)]
        i += 1
        out = s.feed(data[pos:pos + step])
        pos += step
        got += out.lines
        offsets += out.offsets
        over += [(o.offset, o.length) for o in out.oversized]
    want, want_offsets, want_over = [], [], []
    off = 0
    for line in lines:
        if len(line) > 20:
            want_over.append((off, len(line)))
        else:
            want.append(line)
            want_offsets.append(off)
        off += len(line) + 1
    assert got == want
    assert offsets == want_offsets
    assert over == want_over
    assert s.consumed == off
