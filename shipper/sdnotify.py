"""Tell systemd how the daemon is doing: the sd_notify protocol over $NOTIFY_SOCKET.

The protocol is a few ``KEY=VALUE`` lines in one datagram sent to an ``AF_UNIX`` socket named by
``$NOTIFY_SOCKET``; that is small enough to speak directly instead of adding a dependency (issue 5).
Everything here is a no-op when ``$NOTIFY_SOCKET`` is unset (run by hand, in tests, under another supervisor),
and a failed send is logged at debug level and never raised: losing a status line must not stop the shipper.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import Mapping

__all__ = [
    "Notifier",
    "extend_timeout",
    "notify",
    "ready",
    "reloading",
    "status",
    "stopping",
    "watchdog",
    "watchdog_interval",
]

log = logging.getLogger(__name__)

#: How long one send may block. A datagram send to a unix socket blocks while the receiver's queue is full
#: (``net.unix.max_dgram_qlen``, 10 by default); a wedged service manager must not hang the working loop or
#: the shutdown path, so give up after this and drop the message.
DEFAULT_SEND_TIMEOUT = 2.0

# Field names systemd accepts are upper-case identifiers; anything else is a programming error here.
_KEY_RE = re.compile(r"[A-Z][A-Z0-9_]*\Z")


def _resolve_address(value: str | None) -> str | bytes | None:
    """Turn a ``$NOTIFY_SOCKET`` value into a ``sendto()`` address, or ``None`` when it cannot be used.

    ``/path`` is a file-system socket; ``@name`` is Linux's abstract namespace (a leading NUL byte on the
    wire, as systemd and sd_notify(3) define it). Other forms (relative paths, ``vsock:`` from systemd 254
    for VMs) are not for a daemon on a Moodle host and are ignored rather than guessed at.
    """
    if not value:
        return None
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    log.debug("sd_notify: unsupported NOTIFY_SOCKET %r, notifications disabled", value)
    return None


def _format(state: str | None, fields: Mapping[str, object]) -> bytes:
    """Build one message: the raw ``state`` lines first, then one ``KEY=value`` line per field.

    A newline inside a value would start a new field (``STATUS=x\\nREADY=1`` would lie to systemd), so
    newlines in field values are turned into spaces.

    :raises ValueError: a field name is not an upper-case identifier (a caller's bug, not a send failure).
    """
    lines: list[str] = []
    if state:
        lines.append(state.rstrip("\n"))
    for key, value in fields.items():
        if not _KEY_RE.match(key):
            raise ValueError(f"sd_notify field name must be upper-case letters, digits and _: {key!r}")
        text = str(int(value)) if isinstance(value, bool) else str(value)
        lines.append(f"{key}={text.replace(chr(13), ' ').replace(chr(10), ' ')}")
    return "\n".join(lines).encode("utf-8", "replace")


def _monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock systemd compares ``MONOTONIC_USEC=`` against."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """Sends sd_notify messages to one socket.

    The address is read from the environment when the object is made (pass ``environ`` to test). Each
    message goes out on a fresh, short-lived socket, as libsystemd's sd_notify() does: nothing to keep open
    across a fork or a reload, and no state to repair after an error.

    Messages come from the main process itself, never from a helper process, so they are accepted with
    ``NotifyAccess=main`` (the kernel stamps each datagram with the sender's PID).
    """

    def __init__(
        self, environ: Mapping[str, str] | None = None, *, timeout: float = DEFAULT_SEND_TIMEOUT
    ) -> None:
        env = os.environ if environ is None else environ
        self.socket_name: str | None = env.get("NOTIFY_SOCKET") or None
        self._address = _resolve_address(self.socket_name)
        self._timeout = timeout

    @property
    def enabled(self) -> bool:
        """True when there is a usable ``$NOTIFY_SOCKET`` (so messages are actually sent)."""
        return self._address is not None

    def notify(self, state: str | None = None, /, **fields: object) -> bool:
        """Send one message: raw ``state`` text (e.g. ``"READY=1"``) and/or ``KEY=value`` fields.

        ``notify(STATUS="shipping", READY=1)`` and ``notify("READY=1\\nSTATUS=shipping")`` send the same
        thing. Both parts go in ONE datagram, so systemd sees them together (READY with its first STATUS).

        :returns: True if the datagram was sent; False when notifications are off or the send failed (the
            failure is logged at debug level: the daemon keeps working without systemd hearing about it).
        :raises ValueError: a field name is not an upper-case identifier.
        """
        message = _format(state, fields)
        if self._address is None or not message:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(self._timeout)
                sock.sendto(message, self._address)
        except OSError as exc:  # includes TimeoutError: the manager is not reading
            log.debug("sd_notify to %s failed: %s (message %r)", self.socket_name, exc, message)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: start-up finished; systemd marks the unit active and ``systemctl start`` returns.

        Also sent after a reload (``RELOADING=1``) has been applied or refused.
        """
        return self._with_status("READY=1", status)

    def status(self, text: str) -> bool:
        """``STATUS=text``: one line shown by ``systemctl status`` (e.g. events shipped and lag)."""
        return self.notify(STATUS=text)

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the working loop is alive. Send it only from that loop, so a hung loop restarts."""
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: shutdown began (finishing the batch in flight); watchdog pings may stop."""
        return self._with_status("STOPPING=1", status)

    def reloading(self, status: str | None = None) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC=``: a SIGHUP reload began; send :meth:`ready` when done.

        systemd 253+ (``Type=notify-reload``) ignores RELOADING=1 without a current ``MONOTONIC_USEC=`` and
        older versions ignore the extra field, so always sending it works with both.
        """
        return self._with_status(f"RELOADING=1\nMONOTONIC_USEC={_monotonic_usec()}", status)

    def extend_timeout(self, seconds: float) -> bool:
        """``EXTEND_TIMEOUT_USEC=``: ask for more time to start or stop (a final flush to a slow database).

        Each message extends the current timeout to ``seconds`` from now; repeat it while still busy.
        """
        return self.notify(EXTEND_TIMEOUT_USEC=max(0, int(seconds * 1_000_000)))

    def _with_status(self, state: str, status: str | None) -> bool:
        return self.notify(state) if status is None else self.notify(state, STATUS=status)


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """The watchdog timeout systemd expects pings within, in seconds, or ``None`` when there is none.

    Read from ``$WATCHDOG_USEC`` (set from ``WatchdogSec=``). When ``$WATCHDOG_PID`` is set and is not this
    process, the variables were inherited and meant for a parent: ``None``. Ping at half the returned
    interval (sd_watchdog_enabled(3)) so one slow cycle does not get the daemon killed.
    """
    env = os.environ if environ is None else environ
    raw_usec = env.get("WATCHDOG_USEC")
    if not raw_usec:
        return None
    raw_pid = env.get("WATCHDOG_PID")
    if raw_pid:
        try:
            if int(raw_pid) != os.getpid():
                return None
        except ValueError:
            log.debug("sd_notify: ignoring invalid WATCHDOG_PID=%r", raw_pid)
            return None
    try:
        usec = int(raw_usec)
    except ValueError:
        log.debug("sd_notify: ignoring invalid WATCHDOG_USEC=%r", raw_usec)
        return None
    if usec <= 0:
        return None
    return usec / 1_000_000


# Module-level shortcuts. Each reads $NOTIFY_SOCKET afresh, so a test (or a reload) that changes the
# environment is honoured; building a Notifier is cheap (no socket until a send).


def notify(state: str | None = None, /, **fields: object) -> bool:
    """Send ``state`` and/or ``KEY=value`` fields in one message; see :meth:`Notifier.notify`."""
    return Notifier().notify(state, **fields)


def ready(status: str | None = None) -> bool:
    """Send ``READY=1`` (and ``STATUS=`` if given); see :meth:`Notifier.ready`."""
    return Notifier().ready(status)


def status(text: str) -> bool:
    """Send ``STATUS=text``; see :meth:`Notifier.status`."""
    return Notifier().status(text)


def watchdog() -> bool:
    """Send ``WATCHDOG=1``; see :meth:`Notifier.watchdog`."""
    return Notifier().watchdog()


def stopping(status: str | None = None) -> bool:
    """Send ``STOPPING=1`` (and ``STATUS=`` if given); see :meth:`Notifier.stopping`."""
    return Notifier().stopping(status)


def reloading(status: str | None = None) -> bool:
    """Send ``RELOADING=1`` and ``MONOTONIC_USEC=``; see :meth:`Notifier.reloading`."""
    return Notifier().reloading(status)


def extend_timeout(seconds: float) -> bool:
    """Send ``EXTEND_TIMEOUT_USEC=``; see :meth:`Notifier.extend_timeout`."""
    return Notifier().extend_timeout(seconds)
