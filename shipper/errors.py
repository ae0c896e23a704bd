"""Exceptions an operator can act on: each message names the file, key or path involved."""

from __future__ import annotations


class ShipperError(Exception):
    """Base of every error the shipper reports to a person instead of a traceback."""


class ConfigError(ShipperError):
    """The configuration (file, environment or flags) is invalid; lists every problem found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))


class SpoolError(ShipperError):
    """The spool directory cannot be used (missing, unreadable)."""


class SchemaError(ShipperError):
    """The database schema is missing, too old, or cannot be created as configured."""
