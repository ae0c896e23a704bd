"""The shipper end to end: real files, a real PostgreSQL, the daemon as a real subprocess.

Every event carries other.seq, so each test can check that every complete line arrived exactly once.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import psycopg
import pytest

from conftest import (
    Server,
    Shipper,
    append,
    append_events,
    count_rows,
    event,
    line,
    query,
    seqs,
    wait_for,
)


def dead_letters(dsn: str) -> list[tuple[str, int, bytes, int]]:
    rows = query(dsn, "SELECT reason, line_offset, raw, line_length FROM shipper_dead_letter"
                      " ORDER BY line_offset")
    return [(r, o, bytes(raw), n) for r, o, raw, n in rows]


def test_a_new_file_ships_and_appends_while_running_follow(shipper: Shipper) -> None:
    shipper.start()
    path = shipper.spool / "moodle-events-2026120410-web1.jsonl"
    append_events(path, 0, 500)
    wait_for(lambda: count_rows(shipper.dsn) == 500, what="the first 500 events")
    append_events(path, 500, 300)
    append_events(shipper.spool / "other.jsonl", 800, 200)
    wait_for(lambda: count_rows(shipper.dsn) == 1000, what="1000 events")
    assert shipper.stop() == 0
    assert seqs(shipper.dsn) == list(range(1000))
    offsets = dict(query(shipper.dsn, "SELECT path, byte_offset FROM shipper_checkpoints"))
    assert offsets == {str(path): path.stat().st_size,
                       str(shipper.spool / "other.jsonl"): (shipper.spool / "other.jsonl").stat().st_size}


def test_a_backlog_of_files_is_sent_oldest_file_first_in_time_order(shipper: Shipper) -> None:
    """Rows reach the table in time order, so the indexes on time take every row at the right edge."""
    shipper.write_config(**{"spool.read_bytes": 4096, "buffer.batch_size": 5000})
    for hour in range(3):
        path = shipper.spool / f"moodle-events-20261204{10 + hour:02d}-web1.jsonl"
        append_events(path, hour * 300, 300)
        os.utime(path, (1_764_000_000 + hour * 3600,) * 2)
    shipper.catch_up()
    in_table_order = [r[0] for r in query(shipper.dsn, "SELECT (other->>'seq')::int FROM moodle_events"
                                                       " ORDER BY ctid")]
    assert in_table_order == list(range(900))


def test_more_files_than_max_open_files_drain_without_waiting_for_rescans(shipper: Shipper) -> None:
    """Files beyond spool.max_open_files get a descriptor as soon as shipped ones can be closed."""
    shipper.write_config(**{"spool.max_open_files": 2, "spool.rescan_interval": 60.0,
                            "spool.delete_shipped": False})
    for n in range(12):
        append_events(shipper.spool / f"moodle-events-2026120400-web{n:02d}.jsonl", n * 5, 5)
    started = time.monotonic()
    shipper.catch_up(timeout=30)
    assert seqs(shipper.dsn) == list(range(60))
    for n in range(12, 24):
        append_events(shipper.spool / f"moodle-events-2026120401-web{n:02d}.jsonl", n * 5, 5)
    shipper.start()
    wait_for(lambda: count_rows(shipper.dsn) == 120, timeout=20, what="120 events from 24 files")
    assert shipper.stop() == 0
    assert seqs(shipper.dsn) == list(range(120))
    assert time.monotonic() - started < 60  # no file waited for a rescan_interval


def test_restart_resumes_without_duplicates(shipper: Shipper) -> None:
    path = shipper.spool / "a.jsonl"
    append_events(path, 0, 400)
    shipper.catch_up()
    append_events(path, 400, 400)
    shipper.catch_up()
    shipper.catch_up()
    assert seqs(shipper.dsn) == list(range(800))


def test_a_partial_line_waits_and_ships_once_completed_after_a_restart(shipper: Shipper) -> None:
    path = shipper.spool / "a.jsonl"
    full = line(event(1))
    append(path, line(event(0)), full[:40])
    shipper.catch_up()
    assert seqs(shipper.dsn) == [0]
    assert query(shipper.dsn, "SELECT byte_offset FROM shipper_checkpoints")[0][0] == len(line(event(0)))
    append(path, full[40:])
    shipper.catch_up()
    assert seqs(shipper.dsn) == [0, 1]


def test_rename_keeps_the_offset_running_and_stopped(shipper: Shipper) -> None:
    path = shipper.spool / "events.jsonl"
    append_events(path, 0, 300)
    shipper.start()
    wait_for(lambda: count_rows(shipper.dsn) == 300, what="300 events")
    os.rename(path, shipper.spool / "events.jsonl.1")
    append_events(shipper.spool / "events.jsonl.1", 300, 100)  # a writer still holding it open
    wait_for(lambda: count_rows(shipper.dsn) == 400, what="400 events")
    assert shipper.stop() == 0
    os.rename(shipper.spool / "events.jsonl.1", shipper.spool / "events.jsonl.2")
    append_events(shipper.spool / "events.jsonl.2", 400, 100)
    shipper.catch_up()
    assert seqs(shipper.dsn) == list(range(500))
    paths = [r[0] for r in query(shipper.dsn, "SELECT path FROM shipper_checkpoints")]
    assert paths == [str(shipper.spool / "events.jsonl.2")]


def test_a_renamed_file_is_read_to_its_end_even_under_a_name_matching_no_pattern(shipper: Shipper) -> None:
    path = shipper.spool / "events.jsonl"
    append_events(path, 0, 100)
    shipper.start()
    wait_for(lambda: count_rows(shipper.dsn) == 100, what="100 events")
    renamed = shipper.spool / "events.jsonl-old"
    with open(path, "ab") as writer:  # the writer keeps appending after the rename
        os.rename(path, renamed)
        writer.write(b"".join(line(event(i)) for i in range(100, 150)))
    wait_for(lambda: count_rows(shipper.dsn) == 150, what="lines appended after the rename")
    assert shipper.stop() == 0


def test_create_rotation(shipper: Shipper) -> None:
    """logrotate's create: rename the file, create a new one with the old name."""
    path = shipper.spool / "events.jsonl"
    shipper.start()
    n = 0
    for _ in range(5):
        append_events(path, n, 200)
        n += 200
        _shift(shipper.spool)
    append_events(path, n, 200)
    n += 200
    wait_for(lambda: count_rows(shipper.dsn) == n, what=f"{n} events")
    assert shipper.stop() == 0
    assert seqs(shipper.dsn) == list(range(n))


def _shift(spool: Path) -> None:
    names = sorted((p for p in spool.glob("events.jsonl.*")), key=lambda p: -int(p.suffix[1:]))
    for p in names:
        os.rename(p, spool / f"events.jsonl.{int(p.suffix[1:]) + 1}")
    os.rename(spool / "events.jsonl", spool / "events.jsonl.1")


def test_copytruncate_continues_in_the_copy_and_reads_the_original_from_zero(shipper: Shipper) -> None:
    path = shipper.spool / "events.jsonl"
    append_events(path, 0, 300)
    shipper.start()
    wait_for(lambda: count_rows(shipper.dsn) == 300, what="300 events")
    append_events(path, 300, 100)  # maybe read, maybe not, before the copy: either way exactly once
    shutil.copyfile(path, shipper.spool / "events.jsonl.1")
    os.truncate(path, 0)
    append_events(path, 400, 250)
    wait_for(lambda: count_rows(shipper.dsn) == 650, what="650 events")
    time.sleep(1)  # time for any duplicate to show up
    assert shipper.stop() == 0
    assert seqs(shipper.dsn) == list(range(650))


def test_copytruncate_while_stopped(shipper: Shipper) -> None:
    path = shipper.spool / "events.jsonl"
    append_events(path, 0, 300)
    shipper.catch_up()
    append_events(path, 300, 100)
    shutil.copyfile(path, shipper.spool / "events.jsonl.1")
    os.truncate(path, 0)
    append_events(path, 400, 100)
    shipper.catch_up()
    assert seqs(shipper.dsn) == list(range(500))


def test_truncation_reads_the_new_content_from_zero(shipper: Shipper) -> None:
    path = shipper.spool / "events.jsonl"
    append_events(path, 0, 300)
    shipper.start()
    wait_for(lambda: count_rows(shipper.dsn) == 300, what="300 events")
    os.truncate(path, 0)
    time.sleep(0.5)
    append_events(path, 300, 50)
    wait_for(lambda: count_rows(shipper.dsn) == 350, what="the rewritten file")
    assert shipper.stop() == 0
    os.truncate(path, 0)  # and while stopped
    append_events(path, 350, 20)
    shipper.catch_up()
    assert seqs(shipper.dsn) == list(range(370))


def test_inode_reused_by_a_new_file_is_read_from_zero(shipper: Shipper) -> None:
    path = shipper.spool / "events.jsonl"
    append_events(path, 0, 300)
    shipper.catch_up()
    inode = path.stat().st_ino
    path.unlink()
    # Most file systems hand a freed inode to the next file created; try a few times to get it.
    reused = False
    for attempt in range(20):
        append_events(path, 300, 120)
        if path.stat().st_ino == inode:
            reused = True
            break
        path.unlink()
        (shipper.spool / f"filler{attempt}").write_bytes(b"")
    else:
        append_events(path, 300, 120)
    shipper.catch_up()
    assert seqs(shipper.dsn) == list(range(420)), f"inode reused: {reused}"


def test_bad_lines_become_dead_letters_and_good_ones_ship(shipper: Shipper) -> None:
    path = shipper.spool / "events.jsonl"
    limit = 4096
    shipper.write_config(**{"spool.max_line_bytes": limit})
    huge = line(event(99, other={"text": "x" * 100_000}))
    bad = [b"{not json\n", b'{"eventname": "\xff\xfe", "timecreated": 1}\n',
           b'{"component": "core", "timecreated": 1764000000}\n', huge, b"[1,2,3]\n"]
    good = [line(event(i)) for i in range(3)]
    append(path, b"\xef\xbb\xbf" + good[0], b"\r\n", bad[0], bad[1], good[1], bad[2], bad[3], b"\n",
           bad[4], good[2].replace(b"\n", b"\r\n"))
    shipper.catch_up()
    assert seqs(shipper.dsn) == [0, 1, 2]
    got = dead_letters(shipper.dsn)
    assert [r for r, *_ in got] == ["invalid_json", "invalid_utf8", "missing_eventname", "line_too_long",
                                    "not_an_object"]
    content = path.read_bytes()
    for (_reason, offset, raw, length), original in zip(got, bad, strict=True):
        assert content[offset:offset + length] == original.rstrip(b"\n")
        assert raw == original.rstrip(b"\n")[:65536]
    assert len(got[3][2]) == 65536 and got[3][3] == len(huge) - 1
    assert query(shipper.dsn, "SELECT byte_offset FROM shipper_checkpoints")[0][0] == len(content)


def test_a_row_the_database_rejects_is_dead_lettered_and_the_rest_ship(shipper: Shipper) -> None:
    with psycopg.connect(shipper.dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE moodle_events ADD CONSTRAINT no_course_666 CHECK (courseid <> 666)")
    path = shipper.spool / "events.jsonl"
    append_events(path, 0, 500)
    append(path, line(event(500, courseid=666)))
    append_events(path, 501, 499)
    append(path, line(event(1000, courseid="666")))
    shipper.catch_up()
    assert seqs(shipper.dsn) == [i for i in range(1001) if i not in (500, 1000)]
    got = dead_letters(shipper.dsn)
    assert [(r, bytes(raw)) for r, _, raw, _ in got] == [
        ("rejected_by_database", line(event(500, courseid=666)).rstrip(b"\n")),
        ("rejected_by_database", line(event(1000, courseid="666")).rstrip(b"\n"))]
    detail = query(shipper.dsn, "SELECT detail FROM shipper_dead_letter LIMIT 1")[0][0]
    assert "23514" in detail and "no_course_666" in detail


def test_database_down_for_a_while_then_everything_arrives_once(shipper: Shipper, pg_server: Server) -> None:
    if pg_server.temp is None:
        pytest.skip("SHIPPER_TEST_DSN names an external server: this test needs to stop its own server")
    path = shipper.spool / "events.jsonl"
    shipper.start()
    append_events(path, 0, 200)
    wait_for(lambda: count_rows(shipper.dsn) == 200, what="200 events")
    pg_server.temp.stop_server("immediate")
    try:
        append_events(path, 200, 300)
        time.sleep(2.5)  # several failed attempts with backoff
        assert shipper.proc is not None and shipper.proc.poll() is None, "the shipper must not exit"
    finally:
        pg_server.temp.start_server()
    append_events(path, 500, 100)
    wait_for(lambda: count_rows(shipper.dsn) == 600, timeout=60, what="600 events after the outage")
    assert shipper.stop() == 0
    assert seqs(shipper.dsn) == list(range(600))
    assert "failed (transient" in shipper.logs()


def test_sigterm_commits_the_batch_in_flight_and_exits_0(shipper: Shipper) -> None:
    shipper.write_config(**{"buffer.flush_interval": 60.0})  # nothing would flush on its own
    path = shipper.spool / "events.jsonl"
    append_events(path, 0, 50)
    shipper.start()
    wait_for(lambda: "offsets read" in shipper.logs(), what="the shipper to start")
    time.sleep(1)
    assert count_rows(shipper.dsn) == 0
    assert shipper.stop() == 0
    assert seqs(shipper.dsn) == list(range(50))


def test_a_second_shipper_with_the_same_source_id_waits(shipper: Shipper, tmp_path: Path) -> None:
    append_events(shipper.spool / "a.jsonl", 0, 10)
    shipper.start()
    wait_for(lambda: count_rows(shipper.dsn) == 10, what="10 events")
    twin = Shipper(tmp_path / "twin", shipper.dsn)
    twin.write_config(**{"spool.dir": str(shipper.spool)})
    twin.start()
    try:
        wait_for(lambda: "another shipper with source_id 'test-node'" in twin.logs(), what="the refusal")
        assert count_rows(shipper.dsn) == 10
    finally:
        twin.proc.send_signal(signal.SIGTERM) if twin.proc else None
        assert twin.proc is not None and twin.proc.wait(timeout=30) == 0
    assert shipper.stop() == 0


def test_commits_the_database_lost_are_shipped_again(shipper: Shipper) -> None:
    """A database restored from a backup (or failed over to a lagging replica) forgets commits: the
    shipper notices its offsets went back on reconnect and re-reads from them, so nothing is lost."""
    path = shipper.spool / "events.jsonl"
    append_events(path, 0, 300)
    shipper.start()
    wait_for(lambda: count_rows(shipper.dsn) == 300, what="300 events")
    with psycopg.connect(shipper.dsn, autocommit=True) as conn:
        # "restore" the database to a point where only the first 100 events had arrived
        offset = len(b"".join(line(event(i)) for i in range(100)))
        conn.execute("DELETE FROM moodle_events WHERE (other->>'seq')::int >= 100")
        conn.execute("UPDATE shipper_checkpoints SET byte_offset = %s", (offset,))
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE application_name = 'moodle-tsdb-shipper'")
    append_events(path, 300, 50)
    wait_for(lambda: count_rows(shipper.dsn) == 350, what="350 events")
    time.sleep(0.5)
    assert shipper.stop() == 0
    assert seqs(shipper.dsn) == list(range(350))
    assert "older offsets than it acknowledged" in shipper.logs()


def test_truncated_and_rewritten_past_the_offset_between_two_looks(shipper: Shipper) -> None:
    """A file replaced in place by longer content never looks smaller: its first line tells."""
    path = shipper.spool / "events.jsonl"
    append_events(path, 0, 100)
    shipper.start()
    wait_for(lambda: count_rows(shipper.dsn) == 100, what="100 events")
    path.write_bytes(b"".join(line(event(i)) for i in range(100, 400)))  # O_TRUNC, then one write
    wait_for(lambda: count_rows(shipper.dsn) == 400, what="the rewritten content")
    time.sleep(0.5)
    assert shipper.stop() == 0
    assert seqs(shipper.dsn) == list(range(400))
    assert query(shipper.dsn, "SELECT count(*) FROM shipper_dead_letter")[0][0] == 0
