"""Wake the main loop when the spool directory changes (inotify through watchdog).

Events are only hints: the loop re-reads sizes and the directory itself, so a lost or merged event
(inotify queue overflow, a network file system without inotify) costs latency, never data: the
periodic rescan (spool.rescan_interval) is the backstop.
"""

from __future__ import annotations

import logging
import threading

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

log = logging.getLogger(__name__)


class _Wake(FileSystemEventHandler):
    def __init__(self, wake: threading.Event, changed: threading.Event) -> None:
        self.wake = wake
        self.changed = changed

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("created", "moved", "deleted"):
            self.changed.set()  # the directory's listing changed: rescan it
        self.wake.set()


class SpoolWatcher:
    """Sets ``wake`` on any change in the directory and ``changed`` when its listing changed."""

    def __init__(self, directory: str, wake: threading.Event) -> None:
        self.directory = directory
        self.wake = wake
        self.changed = threading.Event()
        self._observer: Observer | None = None  # type: ignore[valid-type]

    def start(self) -> bool:
        """Start watching; False (with a warning) when inotify is unavailable: polling remains."""
        observer = Observer()
        try:
            observer.schedule(_Wake(self.wake, self.changed), self.directory, recursive=False)
            observer.daemon = True
            observer.start()
        except Exception as exc:
            log.warning("cannot watch %s for changes (%s): relying on spool.rescan_interval and "
                        "spool.poll_interval", self.directory, exc)
            return False
        self._observer = observer
        return True

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
