"""moodle-tsdb-shipper: Moodle event spool -> TimescaleDB, exactly once."""

__version__ = "0.1.0"
