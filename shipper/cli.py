"""The `moodle-tsdb-shipper` command: argument parsing only; each subcommand lives in its own module.

Exit codes: 0 success, 1 the work failed (database, spool), 2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__, config, logs
from .errors import ConfigError, ShipperError

log = logging.getLogger("shipper")

# Flags that set one setting each; --set covers every other one.
SETTING_FLAGS = {
    "--spool-dir": "spool.dir",
    "--dsn": "database.dsn",
    "--source-id": "source_id",
    "--state-dir": "state.dir",
    "--metrics-listen": "metrics.listen",
}


def _common(parser: argparse.ArgumentParser, top: bool) -> None:
    """Options accepted before and after the subcommand ("--config" in either place)."""
    default: Any = None if top else argparse.SUPPRESS
    parser.add_argument("--config", "-c", metavar="PATH", default=default,
                        help=f"TOML configuration file (default {config.DEFAULT_CONFIG_PATH}, if present)")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=default,
                        help="override a setting, e.g. --set buffer.batch_size=5000 (repeatable)")
    for flag, dotted in SETTING_FLAGS.items():
        parser.add_argument(flag, metavar="VALUE", default=default, help=f"sets {dotted}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moodle-tsdb-shipper",
        description="Ship Moodle event logs from a JSON-lines spool to TimescaleDB, exactly once.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _common(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser("run", help="run the shipper in the foreground (systemd runs this)")
    run.add_argument("--exit-when-caught-up", action="store_true",
                     help="stop once every complete line in the spool is shipped")
    init = sub.add_parser("init-db", help="create or upgrade the database schema")
    init.add_argument("--print-sql", action="store_true",
                      help="print the SQL init-db would run, for a DBA to review, and change nothing")
    init.add_argument("--grant-to", metavar="ROLE",
                      help="also grant ROLE what 'run' needs and no more (see docs/database.md)")
    sub.add_parser("check", help="check configuration, spool, state directory, database and schema")
    status = sub.add_parser("status", help="files, offsets, lag and dead letters")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    demo = sub.add_parser("demo", help="ship sample events into a throwaway local PostgreSQL")
    demo.add_argument("--events", type=int, default=200_000, help="how many events (default 200000)")
    demo.add_argument("--keep", action="store_true", help="keep the temporary server and spool")
    stats = sub.add_parser("stats", help="events per hour, top event names and top courses")
    stats.add_argument("--since", default="24h", metavar="INTERVAL",
                       help='how far back, e.g. 24h or "7 days" (default 24h)')
    stats.add_argument("--top", type=int, default=10, metavar="N", help="rows in each top list (default 10)")
    stats.add_argument("--json", action="store_true", help="machine-readable output")
    for p in (run, init, sub.choices["check"], status, stats, demo):
        _common(p, top=False)
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError([f"command line: --set {item!r}: expected KEY=VALUE"])
        out[key.strip()] = value
    for flag, dotted in SETTING_FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"), None)
        if value is not None:
            out[dotted] = value
    return out


def load_config(args: argparse.Namespace) -> config.Config:
    return config.load(args.config, overrides=_overrides(args))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import run_demo

            logs.setup("warning")
            return run_demo(args.events, keep=args.keep)
        cfg = load_config(args)
        logs.setup(cfg.log.level, cfg.log.format)
        logs.hide(*cfg.secrets())
        if args.command == "run":
            from .daemon import Daemon

            faulthandler.enable()  # a watchdog kill (SIGABRT) leaves each thread's traceback in the journal
            daemon = Daemon(cfg, reload=lambda: load_config(args),
                            exit_when_caught_up=args.exit_when_caught_up)
            daemon.install_signal_handlers()
            return daemon.run()
        if args.command == "init-db":
            from .commands import init_db

            return init_db(cfg, print_sql=args.print_sql, grant_to=args.grant_to)
        if args.command == "check":
            from .commands import check

            return check(cfg)
        if args.command == "status":
            from .commands import status

            return status(cfg, as_json=args.json)
        if args.command == "stats":
            from .commands import stats

            return stats(cfg, args.since, args.top, as_json=args.json)
    except ConfigError as exc:
        print(f"moodle-tsdb-shipper: {exc}", file=sys.stderr)
        return 2
    except ShipperError as exc:
        print(f"moodle-tsdb-shipper: {exc}", file=sys.stderr)
        return 1
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
