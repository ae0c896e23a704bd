"""Logging to stderr for journald: one line per record, key=value text or JSON, never a secret.

One line per record even with a traceback (journald makes each line a separate entry, and log shippers
split on newlines): text values are quoted and escaped the logfmt way. No timestamps in text mode when
journald is the reader (it adds its own); the JSON mode always carries them.

Secrets never reach a log line: the code logs only the redacted DSN (Config.redacted_dsn()) and
psycopg's messages name host and port, never the password; as a second line of defence every
formatted line has the configured password replaced by "***" (``hide()``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

# Shorter strings are not hidden: replacing every "ab" in every line would wreck the log to protect a
# password that offers no protection anyway.
MIN_SECRET_LENGTH = 4
_secrets: set[str] = set()


def hide(*secrets: str | None) -> None:
    """Replace these strings by "***" in every log line from now on (the database password)."""
    _secrets.update(s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH)


def redact(text: str) -> str:
    """The text with every hidden string replaced; applied before quoting, which would disguise them."""
    for secret in _secrets:
        text = text.replace(secret, "***")
    return text


def _stamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": _stamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        if record.exc_info:
            data["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(data, ensure_ascii=False)


def _quote(value: str) -> str:
    """A logfmt value: bare when it is one plain word, else quoted with \\ " and control escapes."""
    if value and not any(c in value for c in ' "=\\') and value.isprintable():
        return value
    escaped = (value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
               .replace("\r", "\\r").replace("\t", "\\t"))
    return f'"{escaped}"'


class _TextFormatter(logging.Formatter):
    """``ts=... level=INFO logger=shipper.daemon msg="..." exc="..."`` on one line."""

    def __init__(self, timestamps: bool) -> None:
        super().__init__()
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        fields = [f"ts={_stamp(record)}"] if self.timestamps else []
        fields += [f"level={record.levelname}", f"logger={record.name}",
                   f"msg={_quote(redact(record.getMessage()))}"]
        if record.exc_info:
            fields.append(f"exc={_quote(redact(self.formatException(record.exc_info)))}")
        return " ".join(fields)


def setup(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(_TextFormatter(timestamps=not os.environ.get("JOURNAL_STREAM")))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("watchdog", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
