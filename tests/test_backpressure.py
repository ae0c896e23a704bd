"""Memory stays bounded whatever the backlog: with the database away, reading pauses at the buffer's
bounds and the rest of the spool waits on disk."""

from __future__ import annotations

import time

import pytest
from test_metrics import Endpoint

from conftest import Server, Shipper, append_events, count_rows, seqs, wait_for
from shipper.pgtemp import free_port


def test_reading_pauses_at_the_buffer_bounds_while_the_database_is_away(
        shipper: Shipper, pg_server: Server) -> None:
    if pg_server.temp is None:
        pytest.skip("SHIPPER_TEST_DSN names an external server: this test needs to stop its own server")
    port = free_port()
    read_bytes = 16 * 1024
    shipper.write_config(**{"metrics.listen": f"127.0.0.1:{port}", "buffer.max_events": 200,
                            "buffer.batch_size": 200, "spool.read_bytes": read_bytes})
    endpoint = Endpoint(port)
    path = shipper.spool / "events.jsonl"
    append_events(path, 0, 10)
    shipper.start()
    wait_for(lambda: count_rows(shipper.dsn) == 10, what="10 events")
    pg_server.temp.stop_server("fast")
    try:
        append_events(path, 10, 5000)
        wait_for(lambda: endpoint.value("moodle_shipper_buffer_events") >= 200, what="a full buffer")
        read_before = endpoint.value("moodle_shipper_bytes_read_total")
        time.sleep(2)
        scrape = endpoint.scrape()
        assert scrape("moodle_shipper_bytes_read_total") == read_before, "reading must pause"
        per_read = read_bytes // 400 + 1  # events of one read: the most the bound can be passed by
        assert scrape("moodle_shipper_buffer_events") <= 200 + per_read
        assert scrape("moodle_shipper_lag_bytes") > path.stat().st_size * 0.8, "the rest waits on disk"
    finally:
        pg_server.temp.start_server()
    wait_for(lambda: count_rows(shipper.dsn) == 5010, timeout=60, what="the backlog after the outage")
    assert shipper.stop() == 0
    assert seqs(shipper.dsn) == list(range(5010))
