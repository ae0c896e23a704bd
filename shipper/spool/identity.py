"""Recognise a spool file whatever its name: a fingerprint of its first non-blank line.

Why the first line: it is written once and never changes while the file lives, survives renames and
copies (logrotate's create and copytruncate), and differs as soon as an inode is reused or a file is
truncated and written again. A Moodle event line carries the event name, ids, the client address and a
microsecond timestamp, so two files of a site starting with the same line are practically impossible;
SHA-256 over the whole line (not a prefix of it) keeps lines that differ late apart. Leading blank
lines are covered but skipped for the decision, so a file starting with "\\n" is not confused with
every other such file.
"""

from __future__ import annotations

import hashlib
import os

_READ = 64 * 1024


def fingerprint(fd: int, limit: int) -> str | None:
    """The file's key: hex SHA-256 of its bytes up to the end of the first non-blank line.

    Returns None while that line is not complete (its "\\n" not written yet). Reads with pread, so the
    descriptor's position is untouched. ``limit`` caps how far to look (the file size when called).
    """
    found = fingerprint_span(fd, limit)
    return found[0] if found else None


def fingerprint_span(fd: int, limit: int) -> tuple[str, int] | None:
    """The key and how many bytes from the start it covers (to verify it cheaply later)."""
    digest = hashlib.sha256()
    offset = 0
    line_has_content = False
    while offset < limit:
        data = os.pread(fd, min(_READ, limit - offset), offset)
        if not data:
            return None
        start = 0
        while True:
            nl = data.find(b"\n", start)
            segment = data[start:] if nl < 0 else data[start:nl]
            if not line_has_content and segment.strip(b" \t\r\xef\xbb\xbf"):
                line_has_content = True
            if nl < 0:
                break
            if line_has_content:
                digest.update(data[: nl + 1])
                return digest.hexdigest(), offset + nl + 1
            start = nl + 1
        digest.update(data)
        offset += len(data)
    return None


def still_matches(fd: int, key: str, span: int) -> bool:
    """Whether the file still starts with the bytes its key was made from.

    A file truncated and written again past the old offset between two looks has a larger size,
    not a smaller one; only its first line tells that it is new content.
    """
    digest = hashlib.sha256()
    offset = 0
    while offset < span:
        data = os.pread(fd, min(_READ, span - offset), offset)
        if not data:
            return False
        digest.update(data)
        offset += len(data)
    return digest.hexdigest() == key
