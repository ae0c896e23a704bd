"""Split bytes read from a spool file into complete lines, pure and without I/O.

A line is complete only when its "\\n" has been read: a writer may be half-way through an append, so
the tail of a read is kept until the rest arrives and is never shipped or checkpointed before that.
A line longer than the limit is not held in memory: only its first ``SAMPLE_BYTES`` are kept (enough
for an operator to see what it was) while the rest is counted and skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SAMPLE_BYTES = 64 * 1024


@dataclass(slots=True)
class Oversized:
    """A complete line longer than max_line_bytes: where it starts, how long it is, its first bytes."""

    offset: int
    length: int
    sample: bytes


@dataclass(slots=True)
class Split:
    """Complete lines found in one feed, in file order, covering [start, end) of the file.

    ``lines`` are without their "\\n"; ``oversized`` are the too-long ones (not in ``lines``). ``end``
    is the offset just past the last complete line: the offset that may be committed once these lines
    are stored.
    """

    start: int
    end: int
    lines: list[bytes] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    oversized: list[Oversized] = field(default_factory=list)


class LineSplitter:
    """Turns successive reads of one file into complete lines with their offsets.

    :param offset: the file offset of the first byte that will be fed (a line start).
    :param max_line_bytes: longer lines (without "\\n") are reported as Oversized.
    """

    def __init__(self, offset: int, max_line_bytes: int) -> None:
        self.max_line_bytes = max_line_bytes
        self._pending = bytearray()  # start of an incomplete line, at most max_line_bytes long
        self._pending_offset = offset
        self._skipping: Oversized | None = None  # an over-long line whose end is not read yet

    @property
    def consumed(self) -> int:
        """Offset just past the last complete line returned: where a restart must resume."""
        return self._pending_offset

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete line read but not yet returned (or being skipped)."""
        if self._skipping is not None:
            return self._skipping.length
        return len(self._pending)

    def feed(self, data: bytes) -> Split:
        """Take the next bytes of the file and return the lines they complete."""
        start = self._pending_offset
        out = Split(start=start, end=start)
        if not data:
            return out
        pos = 0
        if self._skipping is not None:
            pos = self._continue_skip(data, out)
            if pos < 0:
                return out
        elif self._pending:
            nl = data.find(b"\n")
            if nl < 0:
                self._extend_pending(data)
                return out
            if len(self._pending) + nl > self.max_line_bytes:
                self._emit_oversized(self._pending_offset, bytes(self._pending) + data[:nl], out)
            else:
                out.lines.append(bytes(self._pending) + data[:nl])
                out.offsets.append(self._pending_offset)
            self._pending_offset += len(self._pending) + nl + 1
            self._pending.clear()
            pos = nl + 1

        last_nl = data.rfind(b"\n", pos)
        if last_nl >= pos:
            body = data[pos:last_nl]
            off = self._pending_offset
            limit = self.max_line_bytes
            lines, offsets = out.lines, out.offsets
            for line in body.split(b"\n"):
                if len(line) > limit:
                    self._emit_oversized(off, line, out)
                else:
                    lines.append(line)
                    offsets.append(off)
                off += len(line) + 1
            self._pending_offset = off
            pos = last_nl + 1
        if pos < len(data):
            self._extend_pending(data[pos:])
        out.end = self._pending_offset
        return out

    def _extend_pending(self, data: bytes) -> None:
        if len(self._pending) + len(data) <= self.max_line_bytes:
            self._pending += data
            return
        sample = (bytes(self._pending) + data[: SAMPLE_BYTES])[:SAMPLE_BYTES]
        self._skipping = Oversized(self._pending_offset, len(self._pending) + len(data), sample)
        self._pending.clear()

    def _continue_skip(self, data: bytes, out: Split) -> int:
        """Skip the rest of an over-long line; return where the next line starts, or -1."""
        skipping = self._skipping
        assert skipping is not None
        nl = data.find(b"\n")
        if len(skipping.sample) < SAMPLE_BYTES:
            # The first SAMPLE_BYTES of the line however the reads were cut: with a max_line_bytes
            # below SAMPLE_BYTES the sample used to stop wherever the skipping began.
            skipping.sample += data[: min(len(data) if nl < 0 else nl, SAMPLE_BYTES - len(skipping.sample))]
        if nl < 0:
            skipping.length += len(data)
            return -1
        skipping.length += nl
        out.oversized.append(skipping)
        self._pending_offset = skipping.offset + skipping.length + 1
        self._skipping = None
        out.end = self._pending_offset
        return nl + 1

    def _emit_oversized(self, offset: int, line: bytes, out: Split) -> None:
        out.oversized.append(Oversized(offset, len(line), line[:SAMPLE_BYTES]))
