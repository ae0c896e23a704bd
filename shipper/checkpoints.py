"""The local mirror of the committed offsets, in the state directory.

The database is the authority: offsets are committed there with the rows, and read back from there at
start-up. This file is written after commits so that ``status`` can show files and lag when the
database is unreachable, and so an operator can see where the shipper stood; it is never read to
decide where to resume.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .spool.tail import FileStatus

STATE_FILE = "state.json"


def check_state_dir(directory: str) -> str | None:
    """None when the state directory is usable, else why not (with what to do)."""
    path = Path(directory)
    if not path.is_dir():
        return f"state directory {directory} does not exist (create it, owned by the shipper's user)"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"state directory {directory} is not writable by this user"
    return None


def save(directory: str, source_id: str, files: list[FileStatus], extra: dict[str, Any]) -> None:
    """Atomically replace the state file (write a temporary file, fsync-free rename)."""
    data = {
        "source_id": source_id,
        "written_at": time.time(),
        "files": [asdict(f) for f in files],
        **extra,
    }
    fd, tmp = tempfile.mkstemp(prefix=".state-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1)
        os.replace(tmp, os.path.join(directory, STATE_FILE))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def load(directory: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(directory, STATE_FILE), encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None

