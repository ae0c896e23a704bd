"""A throwaway PostgreSQL server from the system's binaries, for the demo, the tests and the benchmark.

initdb refuses to run as root, and this tool is often run as root on a fresh server, so as root the
cluster runs as the ``postgres`` user (or ``nobody`` when there is none) in a directory it owns.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from .errors import ShipperError


class PostgresNotFound(ShipperError):
    """No PostgreSQL server binaries on this machine."""


def find_bindir() -> Path:
    """Where initdb, pg_ctl and postgres are: $SHIPPER_PG_BINDIR, PATH, or Debian's layout."""
    override = os.environ.get("SHIPPER_PG_BINDIR")
    candidates = [Path(override)] if override else []
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(os.path.realpath(on_path)).parent)
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                    key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0)
    candidates += [Path(p) for p in reversed(debian)]
    for bindir in candidates:
        if (bindir / "initdb").exists() and (bindir / "pg_ctl").exists():
            return bindir
    raise PostgresNotFound(
        "no PostgreSQL server binaries found (initdb, pg_ctl): install Debian's 'postgresql' package "
        "or set SHIPPER_PG_BINDIR"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TempPostgres:
    """initdb + pg_ctl start in a temporary directory; stop() removes it unless ``keep``."""

    def __init__(self, base: str | None = None, keep: bool = False, durable: bool = False) -> None:
        self.bindir = find_bindir()
        self.keep = keep
        self.durable = durable
        self.base = Path(base or tempfile.mkdtemp(prefix="moodle-shipper-pg-"))
        self.data = self.base / "data"
        self.log = self.base / "postgres.log"
        self.port = free_port()
        self._user: str | None = None
        if os.geteuid() == 0:
            self._user = "postgres" if _user_exists("postgres") else "nobody"

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bindir / args[0]), *args[1:]], check=check, capture_output=True, text=True,
            user=self._user, cwd=str(self.base), env={**os.environ, "LC_ALL": "C"},
        )

    def start(self) -> str:
        """Create the cluster if needed and start it; return the DSN of its postgres database."""
        self.base.mkdir(parents=True, exist_ok=True)
        if self._user:
            self.base.chmod(0o755)
            entry = pwd.getpwnam(self._user)
            os.chown(self.base, entry.pw_uid, entry.pw_gid)
        if not self.data.exists():
            try:
                self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                          "--no-locale", "--no-sync")
            except subprocess.CalledProcessError as exc:
                raise ShipperError(f"initdb failed: {exc.stderr.strip()}") from None
            settings = {
                "listen_addresses": "'127.0.0.1'",
                "unix_socket_directories": f"'{self.base}'",
                "max_connections": "100",
                "shared_buffers": "128MB",
                "log_min_messages": "warning",
            }
            if not self.durable:
                # Fast but still crash-consistent for "pg_ctl stop -m immediate": an acknowledged
                # commit is in the OS page cache (synchronous_commit stays on); only a power cut
                # could lose it, and nobody keeps data in a throwaway server.
                settings.update(fsync="off", full_page_writes="off")
            with open(self.data / "postgresql.conf", "a", encoding="utf-8") as conf:
                conf.writelines(f"{k} = {v}\n" for k, v in settings.items())
        self.start_server()
        return self.dsn()

    def start_server(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                      "-o", f"-p {self.port}", "start")
        except subprocess.CalledProcessError as exc:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise ShipperError(f"PostgreSQL did not start: {exc.stderr.strip()}\n{tail}") from None

    def stop_server(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", check=False)

    def stop(self) -> None:
        self.stop_server()
        if not self.keep:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> TempPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.stop()


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
