"""Load, merge and validate the configuration: defaults < TOML file < environment < command line.

The dataclasses below are the schema: every setting is a field with its default, and the field's type
says how a value from a file, an environment variable or a flag is parsed. Key names fixed by the
product contract (SPEC section 6) must never be renamed: operators' scripts rely on them.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/moodle-tsdb-shipper/shipper.toml")
ENV_PREFIX = "MOODLE_SHIPPER_"

_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2,
               "mib": 1024**2, "g": 1024**3, "gb": 1024**3, "gib": 1024**3}
_INTERVAL_UNITS = {"s": 1, "sec": 1, "second": 1, "seconds": 1, "m": 60, "min": 60, "minute": 60,
                   "minutes": 60, "h": 3600, "hour": 3600, "hours": 3600, "d": 86400, "day": 86400,
                   "days": 86400, "w": 604800, "week": 604800, "weeks": 604800}


class _Invalid(ValueError):
    """A value that does not fit its setting; the message says what would."""


def _parse_int(value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool):
        raise _Invalid("must be an integer")
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise _Invalid("must be an integer") from None
    if not isinstance(value, int):
        raise _Invalid("must be an integer")
    if value < minimum:
        raise _Invalid(f"must be >= {minimum}")
    return value


def _parse_positive_int(value: Any) -> int:
    return _parse_int(value, 1)


def _parse_port(value: Any) -> int:
    port = _parse_int(value, 1)
    if port > 65535:
        raise _Invalid("must be a TCP port (1-65535)")
    return port


def _parse_seconds(value: Any) -> float:
    if isinstance(value, bool):
        raise _Invalid("must be a number of seconds")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise _Invalid("must be a number of seconds") from None
    if not isinstance(value, int | float) or value <= 0:
        raise _Invalid("must be a number of seconds > 0")
    return float(value)


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise _Invalid("must be true or false")


def _parse_str(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid("must be a string")
    return value


def _parse_dsn(value: Any) -> str:
    """A libpq connection string or URI, checked now so that a malformed one fails as a config error.

    libpq's parse errors quote the text around the mistake ("missing '=' after 'secret'",
    "unexpected spaces found in 'pa ss'"), which can be the password: they are never passed on.
    """
    import psycopg.conninfo

    text = _parse_str(value)
    if text:
        try:
            psycopg.conninfo.conninfo_to_dict(text)
        except psycopg.Error:
            raise _Invalid("is not a valid libpq connection string or URI (libpq's message is not "
                           "shown: it may quote the password)") from None
    return text


def _parse_size(value: Any) -> int:
    """Bytes as an integer or a string such as "64MiB"."""
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", value)
        if not m or m.group(2).lower() not in _SIZE_UNITS:
            raise _Invalid('must be a size in bytes, e.g. 1048576 or "1MiB"')
        value = int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    return _parse_int(value, 1)


def parse_interval(value: Any) -> int | None:
    """Seconds of a TimescaleDB interval; None means the feature is off ("off", 0 or "")."""
    if isinstance(value, bool):
        raise _Invalid('must be an interval such as "7 days", or "off"')
    if isinstance(value, int):
        if value < 0:
            raise _Invalid("must not be negative")
        return value or None
    if not isinstance(value, str):
        raise _Invalid('must be an interval such as "7 days", or "off"')
    text = value.strip().lower()
    if text in ("off", "0", "", "none", "disabled"):
        return None
    total = 0
    for number, unit in re.findall(r"(\d+)\s*([a-z]+)", text):
        if unit not in _INTERVAL_UNITS:
            raise _Invalid(f'unknown unit "{unit}" (use seconds, minutes, hours, days or weeks)')
        total += int(number) * _INTERVAL_UNITS[unit]
    if not total or re.sub(r"(\d+)\s*([a-z]+)", "", text).strip(" ,"):
        raise _Invalid('must be an interval such as "7 days", "12 hours", or "off"')
    return total


def _parse_interval_setting(value: Any) -> str:
    parse_interval(value)
    return str(value)


def _parse_patterns(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [p for p in (part.strip() for part in value.split(",")) if p]
    if not isinstance(value, list) or not value or not all(isinstance(p, str) and p for p in value):
        raise _Invalid('must be a glob or a list of globs, e.g. ["*.jsonl", "*.jsonl.[0-9]*"]')
    if any("/" in p for p in value):
        raise _Invalid("globs match file names inside spool.dir and must not contain '/'")
    return tuple(value)


def _parse_listen(value: Any) -> str:
    """ "HOST:PORT", "[::1]:PORT", or "off" to serve no metrics."""
    text = _parse_str(value).strip()
    if text.lower() in ("", "off"):
        return "off"
    m = re.fullmatch(r"(\[[0-9a-fA-F:]+\]|[^:\s]+):(\d+)", text)
    if not m:
        raise _Invalid('must be "HOST:PORT" such as "127.0.0.1:9847", or "off"')
    _parse_port(m.group(2))
    return text


def _choice(*allowed: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = _parse_str(value).strip().lower()
        if text not in allowed:
            raise _Invalid("must be one of: " + ", ".join(allowed))
        return text

    return parse


def _setting(default: Any, parse: Callable[[Any], Any], doc: str) -> Any:
    return field(default=default, metadata={"parse": parse, "doc": doc})


@dataclass(frozen=True)
class SpoolConfig:
    dir: str = _setting("/var/spool/moodle-tsdb-shipper", _parse_str, "directory the plugin writes")
    pattern: tuple[str, ...] = _setting(("*.jsonl", "*.jsonl.[0-9]*"), _parse_patterns, "file globs")
    max_line_bytes: int = _setting(1024 * 1024, _parse_size, "longer lines are dead-lettered")
    read_bytes: int = _setting(256 * 1024, _parse_size, "bytes read from a file per read() call")
    rescan_interval: float = _setting(10.0, _parse_seconds, "directory rescan, backstop for inotify")
    poll_interval: float = _setting(1.0, _parse_seconds, "how often open files are checked for growth")
    delete_shipped: bool = _setting(True, _parse_bool, "delete files once shipped and idle")
    delete_grace: float = _setting(300.0, _parse_seconds, "idle seconds before a shipped file goes")
    max_open_files: int = _setting(256, _parse_positive_int, "cap on open spool files")


@dataclass(frozen=True)
class DatabaseConfig:
    dsn: str = _setting("", _parse_dsn, "libpq connection string or URI; overrides host..password")
    host: str = _setting("localhost", _parse_str, "server host")
    port: int = _setting(5433, _parse_port, "server port")
    database: str = _setting("moodle_logs_tsdb", _parse_str, "database name")
    username: str = _setting("moodle", _parse_str, "role name")
    password: str = _setting("", _parse_str, "password (prefer password_file or the environment)")
    password_file: str = _setting("", _parse_str, "file whose first line is the password")
    connect_timeout: float = _setting(10.0, _parse_seconds, "seconds to wait for a connection")
    statement_timeout: float = _setting(20.0, _parse_seconds, "a stalled statement is cancelled")
    application_name: str = _setting("moodle-tsdb-shipper", _parse_str, "shown in pg_stat_activity")


@dataclass(frozen=True)
class StateConfig:
    dir: str = _setting("/var/lib/moodle-tsdb-shipper", _parse_str, "local state (mirror of offsets)")


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = _setting("127.0.0.1:9847", _parse_listen, "Prometheus and health endpoints")
    # As long as the unit's WatchdogSec: /healthz fails when systemd's watchdog would.
    liveness_timeout: float = _setting(30.0, _parse_seconds, "/healthz fails after the loop stalls this long")
    readiness_max_wait: float = _setting(120.0, _parse_seconds, "/readyz fails when read events wait "
                                         "this long for a commit")


@dataclass(frozen=True)
class BufferConfig:
    batch_size: int = _setting(50000, _parse_positive_int, "events per transaction")
    flush_interval: float = _setting(1.0, _parse_seconds, "max seconds an event waits in the buffer")
    max_events: int = _setting(50000, _parse_positive_int, "hard cap on buffered events")
    max_bytes: int = _setting(64 * 1024 * 1024, _parse_size, "hard cap on buffered bytes")


@dataclass(frozen=True)
class RetryConfig:
    initial: float = _setting(0.5, _parse_seconds, "first backoff after a transient failure")
    max: float = _setting(30.0, _parse_seconds, "backoff cap for transient failures")
    other_errors: float = _setting(60.0, _parse_seconds, "retry period for non-transient failures")


@dataclass(frozen=True)
class TimescaleConfig:
    enabled: str = _setting("auto", _choice("auto", "on", "off"), "use the timescaledb extension")
    chunk_interval: str = _setting("1 day", _parse_interval_setting, "hypertable chunk interval")
    compress_after: str = _setting("7 days", _parse_interval_setting, "compress chunks older than")
    retain_for: str = _setting("365 days", _parse_interval_setting, "drop chunks older than")
    aggregate_refresh: str = _setting("30 minutes", _parse_interval_setting, "cagg refresh period")


@dataclass(frozen=True)
class LogConfig:
    level: str = _setting("info", _choice("debug", "info", "warning", "error"), "log level")
    format: str = _setting("text", _choice("text", "json"), "key=value text or JSON lines")


@dataclass(frozen=True)
class Config:
    source_id: str = _setting("", _parse_str, "this shipper's name in shipper_checkpoints")
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    state: StateConfig = field(default_factory=StateConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    buffer: BufferConfig = field(default_factory=BufferConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    timescaledb: TimescaleConfig = field(default_factory=TimescaleConfig)
    log: LogConfig = field(default_factory=LogConfig)
    origin: str = field(default="defaults", compare=False)

    def redacted_dsn(self) -> str:
        """The connection target without any password, fit for logs and errors."""
        return redact_dsn(self.conninfo())

    def secrets(self) -> list[str]:
        """Strings never to be logged: the password, wherever it came from (dsn, setting, file, or
        libpq's own PGPASSWORD)."""
        import psycopg.conninfo

        found = [psycopg.conninfo.conninfo_to_dict(self.conninfo()).get("password"),
                 os.environ.get("PGPASSWORD")]
        return [str(p) for p in found if p]

    def conninfo(self) -> str:
        """The libpq connection string; password included, never to be logged."""
        import psycopg.conninfo

        db = self.database
        if db.dsn:
            params: dict[str, Any] = psycopg.conninfo.conninfo_to_dict(db.dsn)
        else:
            params = {"host": db.host, "port": db.port, "dbname": db.database, "user": db.username}
        password = read_password(db)
        if password:
            params["password"] = password
        params.setdefault("connect_timeout", max(1, round(db.connect_timeout)))
        params.setdefault("application_name", db.application_name)
        # A dead peer (host down, cable cut, NAT timeout) must surface as an error, not a hang.
        params.setdefault("keepalives", 1)
        params.setdefault("keepalives_idle", 30)
        params.setdefault("keepalives_interval", 10)
        params.setdefault("keepalives_count", 3)
        params.setdefault("tcp_user_timeout", 60000)
        return psycopg.conninfo.make_conninfo(**params)


# Settings whose values are never echoed in an error message.
SECRET_SETTINGS = frozenset({"database.dsn", "database.password"})


def _sections() -> dict[str, type]:
    return {f.name: f.default_factory for f in dataclasses.fields(Config)  # type: ignore[misc]
            if f.default_factory is not dataclasses.MISSING}


def _top_settings() -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(Config) if "parse" in f.metadata}


def setting_names() -> list[str]:
    """Every setting as "section.key" (top-level ones without a section)."""
    names = list(_top_settings())
    for section, cls in _sections().items():
        names += [f"{section}.{f.name}" for f in dataclasses.fields(cls)]
    return names


def env_name(dotted: str) -> str:
    return ENV_PREFIX + dotted.replace(".", "_").upper()


def read_password(db: DatabaseConfig) -> str:
    if db.password:
        return db.password
    if db.password_file:
        try:
            with open(db.password_file, encoding="utf-8") as fh:
                return fh.readline().rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(
                [f"database.password_file: cannot read {db.password_file}: {exc.strerror}"]
            ) from None
    return ""


def redact_dsn(conninfo: str) -> str:
    import psycopg.conninfo

    try:
        params = psycopg.conninfo.conninfo_to_dict(conninfo)
    except Exception:
        return "<unparseable dsn>"
    shown = {k: v for k, v in params.items()
             if k in ("host", "hostaddr", "port", "dbname", "user", "sslmode")}
    return " ".join(f"{k}={v}" for k, v in shown.items()) or "<libpq defaults>"


def load(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the effective configuration, reporting every problem at once.

    :param path: the TOML file; None means the default path, used only if it exists.
    :param environ: the environment (tests pass their own).
    :param overrides: "section.key" -> value from command-line flags; they win over everything.
    :raises ConfigError: naming each bad key, the file or variable it came from, and why.
    """
    environ = os.environ if environ is None else environ
    explicit = path is not None
    file_path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    raw: dict[str, tuple[Any, str]] = {}  # "section.key" -> (value, where it came from)
    problems: list[str] = []
    known = set(setting_names())

    if explicit or file_path.exists():
        try:
            with open(file_path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError([f"{file_path}: no such file"]) from None
        except PermissionError:
            raise ConfigError([f"{file_path}: permission denied (readable by this user?)"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{file_path}: not valid TOML: {exc}"]) from None
        for key, value in data.items():
            if isinstance(value, dict):
                if key not in _sections():
                    problems.append(f"{file_path}: unknown section [{key}]")
                    continue
                for sub, subvalue in value.items():
                    dotted = f"{key}.{sub}"
                    if dotted not in known:
                        problems.append(f"{file_path}: unknown key {sub!r} in [{key}]")
                    else:
                        raw[dotted] = (subvalue, str(file_path))
            elif key not in known:
                problems.append(f"{file_path}: unknown key {key!r}")
            else:
                raw[key] = (value, str(file_path))

    env_names = {env_name(name): name for name in known}
    for var, value in environ.items():
        if not var.startswith(ENV_PREFIX):
            continue
        if var not in env_names:
            problems.append(f"environment variable {var} names no setting")
            continue
        raw[env_names[var]] = (value, f"environment variable {var}")

    for dotted, value in (overrides or {}).items():
        if dotted not in known:
            problems.append(f"command line: unknown setting {dotted!r}")
        else:
            raw[dotted] = (value, "command line")

    config = _build(raw, problems)
    if problems:
        raise ConfigError(problems)
    origin = str(file_path) if explicit or file_path.exists() else "defaults and environment"
    return dataclasses.replace(config, origin=origin)


def _build(raw: dict[str, tuple[Any, str]], problems: list[str]) -> Config:
    def convert(dotted: str, f: dataclasses.Field[Any]) -> Any:
        value, where = raw[dotted]
        try:
            return f.metadata["parse"](value)
        except _Invalid as exc:
            got = "value not shown: it may hold a password" if dotted in SECRET_SETTINGS else f"got {value!r}"
            problems.append(f"{where}: {dotted} {exc} ({got})")
            return f.default

    top: dict[str, Any] = {}
    for name, f in _top_settings().items():
        if name in raw:
            top[name] = convert(name, f)
    for section, cls in _sections().items():
        values = {f.name: convert(f"{section}.{f.name}", f)
                  for f in dataclasses.fields(cls) if f"{section}.{f.name}" in raw}
        top[section] = cls(**values)
    config = Config(**top)
    if not config.source_id:
        config = dataclasses.replace(config, source_id=socket.gethostname())
    buf = config.buffer
    if buf.batch_size > buf.max_events:
        problems.append(f"buffer.batch_size ({buf.batch_size}) must not exceed buffer.max_events "
                        f"({buf.max_events})")
    if config.spool.max_line_bytes > buf.max_bytes:
        problems.append(f"spool.max_line_bytes ({config.spool.max_line_bytes}) must not exceed "
                        f"buffer.max_bytes ({buf.max_bytes})")
    return config
