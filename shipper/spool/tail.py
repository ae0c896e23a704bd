"""Follow the spool files: find them, know each one whatever its name, read complete lines from the
offset where shipping stopped.

Offsets belong to file keys (the fingerprint of the first line, see identity.py), not to names or
inodes. That one rule covers the rotation cases: a renamed file keeps its key and so its offset; a
copytruncate copy has the key of the original and continues from its offset; a truncated file or a
reused inode has a new first line, a new key, and is read from 0. While a file is open it is followed
by (device, inode), so a rename never makes it look new.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import fnmatch
import logging
import os
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..errors import SpoolError
from .identity import fingerprint_span, still_matches
from .lines import LineSplitter, Split

log = logging.getLogger(__name__)


@dataclass(eq=False)
class TrackedFile:
    """One open spool file, known by (device, inode) while open and by ``key`` once fingerprinted."""

    dev: int
    ino: int
    path: str
    fd: int
    size: int = 0
    key: str | None = None
    key_span: int = 0  # bytes from 0 the key covers
    splitter: LineSplitter | None = None
    read_pos: int = 0
    in_dir: bool = True
    last_change: float = field(default_factory=time.monotonic)
    mtime: float = 0.0  # wall clock, from fstat: how long the writer has left it alone

    @property
    def consumed(self) -> int:
        """Offset past the last complete line handed out (committed or in the batch in flight)."""
        return self.splitter.consumed if self.splitter is not None else 0


@dataclass(frozen=True, slots=True)
class Dormant:
    """A fully shipped file closed to save descriptors; reopened only if it changes."""

    size: int
    mtime_ns: int
    key: str
    path: str


@dataclass(slots=True)
class Chunk:
    """Lines read from one file in one read: what the batch carries from tail to sink."""

    file: TrackedFile
    key: str
    path: str
    split: Split


@dataclass(frozen=True, slots=True)
class FileStatus:
    """An open file as the state file mirrors it: its content key, size and committed offset."""

    path: str
    key: str | None
    size: int
    committed: int


class Tailer:
    """Owns the spool's file descriptors and every file's read position.

    :param committed: key -> committed offset, as read from shipper_checkpoints at start-up.
    """

    def __init__(
        self,
        directory: str,
        patterns: Iterable[str],
        max_line_bytes: int,
        read_bytes: int,
        committed: dict[str, int],
        max_open_files: int = 256,
    ) -> None:
        self.directory = directory
        self.patterns = tuple(patterns)
        self.max_line_bytes = max_line_bytes
        self.read_bytes = read_bytes
        self.max_open_files = max_open_files
        self.committed = dict(committed)
        # Highest offset handed out per key, committed or in flight: where any file with that key
        # must continue, so that a copy taking over from its original never repeats a line.
        self.positions = dict(committed)
        self.files: dict[tuple[int, int], TrackedFile] = {}
        self.owners: dict[str, TrackedFile] = {}
        self.dormant: dict[tuple[int, int], Dormant] = {}
        # Files the last rescan found but could not open (spool.max_open_files reached).
        self.waiting = 0

    def check_directory(self) -> None:
        """Raise SpoolError with the reason when the spool directory cannot be listed."""
        try:
            os.listdir(self.directory)
        except FileNotFoundError:
            raise SpoolError(f"spool directory {self.directory} does not exist") from None
        except PermissionError:
            raise SpoolError(
                f"cannot read spool directory {self.directory}: permission denied for user "
                f"{_user_name()}"
            ) from None
        except NotADirectoryError:
            raise SpoolError(f"spool path {self.directory} is not a directory") from None

    def matches(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.patterns)

    def rescan(self) -> None:
        """List the directory, start following new files, notice renames, truncations and deletions."""
        try:
            names = os.listdir(self.directory)
        except OSError as exc:
            log.error("cannot list spool directory %s: %s", self.directory, exc.strerror)
            return
        seen: set[tuple[int, int]] = set()
        candidates: list[tuple[float, str, os.stat_result]] = []
        for name in names:
            if not self.matches(name):
                continue
            path = os.path.join(self.directory, name)
            try:
                st = os.stat(path)
            except OSError:
                continue  # gone between listdir and stat: the next rescan sees the truth
            if not stat.S_ISREG(st.st_mode):
                continue
            ident = (st.st_dev, st.st_ino)
            seen.add(ident)
            tracked = self.files.get(ident)
            if tracked is not None:
                if tracked.path != path:
                    log.info("file renamed: %s -> %s", tracked.path, path)
                    tracked.path = path
                tracked.in_dir = True
                continue
            dormant = self.dormant.get(ident)
            if dormant is not None and (dormant.size, dormant.mtime_ns) == (st.st_size, st.st_mtime_ns):
                if dormant.path != path:
                    self.dormant[ident] = Dormant(dormant.size, dormant.mtime_ns, dormant.key, path)
                continue
            candidates.append((st.st_mtime, path, st))
        for tracked in self.files.values():
            if (tracked.dev, tracked.ino) not in seen:
                tracked.in_dir = False
        for ident in list(self.dormant):
            if ident not in seen:
                del self.dormant[ident]
        # Oldest first: with more files than descriptors allowed, the backlog drains in time order.
        candidates.sort(key=lambda c: c[0])
        was_waiting, self.waiting = self.waiting, 0
        for n, (_, path, st) in enumerate(candidates):
            if len(self.files) >= self.max_open_files:
                self._close_idle(keep=len(self.files) - self.max_open_files + 1)
                if len(self.files) >= self.max_open_files:
                    self.waiting = len(candidates) - n
                    if not was_waiting:  # once per backlog: the rescans while it drains are many
                        log.warning("%d spool files open (spool.max_open_files): %d more wait",
                                    len(self.files), self.waiting)
                    break
            self._open(path, st)
        for tracked in list(self.files.values()):
            self._refresh(tracked)

    def _open(self, path: str, st: os.stat_result) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        except PermissionError:
            log.error("cannot read spool file %s: permission denied for user %s", path, _user_name())
            return
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                log.error("cannot open %s: too many open files (lower spool.max_open_files)", path)
                return
            raise
        real = os.fstat(fd)
        ident = (real.st_dev, real.st_ino)
        if ident in self.files:  # raced with a rename; already followed
            os.close(fd)
            return
        self.dormant.pop(ident, None)
        tracked = TrackedFile(dev=real.st_dev, ino=real.st_ino, path=path, fd=fd, size=real.st_size,
                              mtime=real.st_mtime)
        self.files[ident] = tracked
        log.debug("following %s (inode %d, %d bytes)", path, real.st_ino, real.st_size)
        self._identify(tracked)

    def _identify(self, tracked: TrackedFile) -> None:
        """Give a file its key and start offset once its first line is complete."""
        found = fingerprint_span(tracked.fd, tracked.size)
        if found is None:
            return
        key, span = found
        owner = self.owners.get(key)
        if owner is not None and owner is not tracked:
            return  # another open file (copytruncate's original) reads this content
        self.owners[key] = tracked
        tracked.key = key
        tracked.key_span = span
        start = self.positions.get(key, 0)
        self.positions.setdefault(key, 0)
        self.committed.setdefault(key, 0)
        tracked.splitter = LineSplitter(start, self.max_line_bytes)
        tracked.read_pos = start
        if start:
            log.info("%s: continuing from offset %d", tracked.path, start)

    def _release(self, tracked: TrackedFile) -> None:
        if tracked.key is not None and self.owners.get(tracked.key) is tracked:
            del self.owners[tracked.key]
        tracked.key = None
        tracked.splitter = None
        tracked.read_pos = 0

    def _refresh(self, tracked: TrackedFile) -> None:
        """Take the file's current size; handle a truncation, and a first line that arrived."""
        try:
            st = os.fstat(tracked.fd)
        except OSError:
            return
        if st.st_size < tracked.size:
            log.warning("%s was truncated (%d -> %d bytes): reading it again from 0",
                        tracked.path, tracked.size, st.st_size)
            self._release(tracked)
        elif (st.st_size != tracked.size and tracked.key is not None
              and not still_matches(tracked.fd, tracked.key, tracked.key_span)):
            log.warning("%s was truncated and written again (its first line changed): reading it "
                        "again from 0", tracked.path)
            self._release(tracked)
        if st.st_size != tracked.size:
            tracked.last_change = time.monotonic()
        tracked.size = st.st_size
        tracked.mtime = st.st_mtime
        if tracked.key is None:
            self._identify(tracked)

    def poll(self) -> None:
        """Cheap check of the open files (fstat only), between full rescans."""
        for tracked in list(self.files.values()):
            self._refresh(tracked)

    def read(self) -> Chunk | None:
        """One read from the oldest file with unread bytes; None when all are read.

        Oldest first (the order files were opened, oldest mtime first at each rescan), not round
        robin: a backlog of hourly files is then sent in time order, so every index on ``time`` takes
        each row at its right-most leaf. Taking turns between files sent rows from different hours
        alternately and made the server's b-tree inserts cost twice as much.
        """
        for tracked in self.files.values():
            if tracked.key is None or tracked.splitter is None:
                continue
            if tracked.read_pos >= tracked.size:
                continue
            try:
                data = os.pread(tracked.fd, self.read_bytes, tracked.read_pos)
            except OSError as exc:
                log.error("cannot read %s: %s", tracked.path, exc.strerror)
                continue
            if not data:  # shrank since the last fstat: the next refresh handles it
                continue
            tracked.read_pos += len(data)
            split = tracked.splitter.feed(data)
            if split.end > split.start:
                self.positions[tracked.key] = split.end
            return Chunk(file=tracked, key=tracked.key, path=tracked.path, split=split)
        return None

    def has_unread(self) -> bool:
        return any(f.key is not None and f.read_pos < f.size for f in self.files.values())

    def room_for_waiting(self) -> bool:
        """Files wait for a descriptor and a rescan could now close a shipped file to make room.

        Then the daemon rescans at once instead of at the next rescan_interval: a backlog of more
        files than spool.max_open_files used to drain only that many files per interval.
        """
        return self.waiting > 0 and any(self._shipped(f) for f in self.files.values())

    def mark_committed(self, offsets: dict[str, int]) -> None:
        """Record offsets the database now holds; close files that are done and gone."""
        for key, offset in offsets.items():
            if offset > self.committed.get(key, 0):
                self.committed[key] = offset

    def resync(self, offsets: dict[str, int]) -> None:
        """Make the database's offsets the truth again, re-reading whatever it does not hold.

        Used when the database turns out to have lost commits it had acknowledged (restored from a
        backup, failed over to a replica that was behind): the lines after its offsets are read
        again, so they arrive once instead of never.
        """
        self.committed = dict(offsets)
        self.positions = dict(offsets)
        for tracked in self.files.values():
            if tracked.key is not None and self.owners.get(tracked.key) is tracked:
                start = offsets.get(tracked.key, 0)
                self.committed.setdefault(tracked.key, start)
                self.positions.setdefault(tracked.key, start)
                tracked.splitter = LineSplitter(start, self.max_line_bytes)
                tracked.read_pos = start

    def close_finished(self, now: float, idle: float) -> list[TrackedFile]:
        """Close files no longer in the directory whose content is committed; return them."""
        closed = []
        for tracked in list(self.files.values()):
            if tracked.in_dir or not self._done(tracked) or now - tracked.last_change < idle:
                continue
            self._close(tracked)
            closed.append(tracked)
        return closed

    def _done(self, tracked: TrackedFile) -> bool:
        """Nothing of this file is left to ship: all read and committed, or content another owns.

        A last line without "\n" in a file that has left the directory never completes, so it
        does not keep the file open.
        """
        if tracked.key is None or self.owners.get(tracked.key) is not tracked:
            return True
        return tracked.read_pos >= tracked.size and self.committed.get(tracked.key, 0) >= tracked.consumed

    def _close(self, tracked: TrackedFile, dormant: bool = False) -> None:
        if dormant and tracked.key is not None:
            with contextlib.suppress(OSError):
                st = os.fstat(tracked.fd)
                self.dormant[(tracked.dev, tracked.ino)] = Dormant(st.st_size, st.st_mtime_ns, tracked.key,
                                                                   tracked.path)
        if tracked.key is not None and self.owners.get(tracked.key) is tracked:
            del self.owners[tracked.key]
        os.close(tracked.fd)
        del self.files[(tracked.dev, tracked.ino)]

    def _close_idle(self, keep: int) -> None:
        """Close up to ``keep`` fully shipped files still in the directory to make room."""
        for tracked in sorted(self.files.values(), key=lambda f: f.last_change):
            if keep <= 0:
                return
            if self._shipped(tracked):
                self._close(tracked, dormant=True)
                keep -= 1

    def _shipped(self, tracked: TrackedFile) -> bool:
        """Every byte is committed: no line left, not even an incomplete one."""
        return (tracked.key is not None and self.owners.get(tracked.key) is tracked
                and self.committed.get(tracked.key, 0) >= tracked.size)

    def delete_shipped(self, now: float, grace: float) -> list[str]:
        """Delete files whose every byte is committed, idle for ``grace`` seconds, not the newest.

        The newest file is the one a writer appends to (a quiet night must not delete it under the
        writer's feet). Each deletion holds flock on the file, as the Moodle plugin does while it
        appends, and re-checks the size under the lock, so a line appended at that very moment is
        never deleted unshipped. ``now`` is wall-clock time, as file mtimes are.
        """
        present = [t.mtime for t in self.files.values() if t.in_dir]
        present += [d.mtime_ns / 1e9 for d in self.dormant.values()]
        if len(present) < 2:
            return []
        newest = max(present)
        deleted = []
        for tracked in list(self.files.values()):
            if (tracked.in_dir and self._shipped(tracked) and tracked.mtime < newest
                    and now - tracked.mtime >= grace
                    and _unlink_if_unchanged(tracked.fd, tracked.path, (tracked.dev, tracked.ino),
                                             tracked.size)):
                self._close(tracked)
                deleted.append(tracked.path)
        for ident, dormant in list(self.dormant.items()):
            mtime = dormant.mtime_ns / 1e9
            if (mtime < newest and now - mtime >= grace
                    and self.committed.get(dormant.key, 0) >= dormant.size):
                try:
                    fd = os.open(dormant.path, os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    continue
                try:
                    if _unlink_if_unchanged(fd, dormant.path, ident, dormant.size):
                        del self.dormant[ident]
                        deleted.append(dormant.path)
                finally:
                    os.close(fd)
        return deleted

    def close_all(self) -> None:
        for tracked in list(self.files.values()):
            self._close(tracked)

    def statuses(self) -> list[FileStatus]:
        return [FileStatus(t.path, t.key, t.size, self.committed.get(t.key, 0) if t.key else 0)
                for t in self.files.values()]

    def lag_bytes(self) -> int:
        """Bytes in the spool not yet committed: the sum over files of size minus committed offset."""
        total = 0
        for tracked in self.files.values():
            if tracked.key is None:
                total += tracked.size
            elif self.owners.get(tracked.key) is tracked:
                total += max(0, tracked.size - self.committed.get(tracked.key, 0))
        return total


def _unlink_if_unchanged(fd: int, path: str, ident: tuple[int, int], size: int) -> bool:
    """Unlink ``path`` if it is still the file ``fd`` (same inode) and still ``size`` bytes long."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # a writer holds the lock: appending right now
    try:
        st = os.stat(path)
        if (st.st_dev, st.st_ino) != ident or os.fstat(fd).st_size != size:
            return False
        os.unlink(path)
    except OSError as exc:
        log.warning("cannot delete shipped file %s: %s", path, exc.strerror)
        return False
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
    log.info("deleted %s: every line is committed", path)
    return True


def _user_name() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())
