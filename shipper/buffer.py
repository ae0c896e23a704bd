"""The batch being built: parsed rows, dead letters and the offsets they complete, within bounds.

The batch is the shipper's only buffer. Rows go to the database while they are parsed (into an open
COPY), and the batch keeps them until the transaction commits, so that a failed transaction can be
replayed whole, or split to isolate a row the database rejects. Its size is bounded by events and
bytes: when full it is flushed, and reading waits until it has been committed.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from .parse import DeadLetter, Parsed


@dataclass(slots=True)
class Source:
    """A file as the batch knows it: its key, its latest path, and the offset the batch reaches."""

    key: str
    path: str
    end: int


@dataclass
class Batch:
    rows: list[bytes] = field(default_factory=list)
    raws: list[bytes] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    row_sources: list[int] = field(default_factory=list)
    dead: list[tuple[int, DeadLetter]] = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)
    nulled: Counter[str] = field(default_factory=Counter)
    blank: int = 0
    nbytes: int = 0
    started: float = field(default_factory=time.monotonic)
    oldest: float | None = None
    _index: dict[str, int] = field(default_factory=dict)

    @property
    def events(self) -> int:
        return len(self.rows)

    def __bool__(self) -> bool:
        return bool(self.sources)

    def source(self, key: str, path: str) -> int:
        index = self._index.get(key)
        if index is None:
            index = self._index[key] = len(self.sources)
            self.sources.append(Source(key, path, 0))
        else:
            self.sources[index].path = path
        return index

    def add(self, key: str, path: str, end: int, parsed: Parsed, nbytes: int) -> None:
        """Take the parse of lines of one file that end at ``end``: its new offset once committed."""
        if not self.sources:
            self.started = time.monotonic()
        index = self.source(key, path)
        self.sources[index].end = end
        self.rows += parsed.rows
        self.raws += parsed.raws
        self.offsets += parsed.offsets
        self.row_sources += [index] * len(parsed.rows)
        self.dead += [(index, d) for d in parsed.dead]
        self.nulled.update(parsed.nulled)
        self.blank += parsed.blank
        self.nbytes += nbytes
        if parsed.oldest is not None and (self.oldest is None or parsed.oldest < self.oldest):
            self.oldest = parsed.oldest

    def checkpoints(self) -> dict[str, int]:
        return {s.key: s.end for s in self.sources}
