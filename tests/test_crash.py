"""Exactly-once under SIGKILL: the shipper is killed at random moments while a writer appends and
rotates, restarted each time, and in the end every complete line is in the database exactly once."""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

from conftest import Shipper, count_rows, event, line, query, seqs, wait_for

EVENTS = int(os.environ.get("SHIPPER_CRASH_EVENTS", "24000"))
KILLS = int(os.environ.get("SHIPPER_CRASH_KILLS", "12"))


class Writer(threading.Thread):
    """Appends events in bursts and rotates like logrotate's create mode every ``rotate_every``."""

    def __init__(self, spool: Path, total: int, rotate_every: int = 4000) -> None:
        super().__init__(daemon=True)
        self.spool = spool
        self.total = total
        self.rotate_every = rotate_every
        self.written = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            path = self.spool / "events.jsonl"
            rng = random.Random(7)
            generation = 0
            while self.written < self.total:
                burst = min(rng.randint(20, 200), self.total - self.written)
                with open(path, "ab") as fh:
                    fh.write(b"".join(line(event(i)) for i in range(self.written, self.written + burst)))
                self.written += burst
                if self.written // self.rotate_every > generation:
                    generation = self.written // self.rotate_every
                    os.rename(path, self.spool / f"events.jsonl.{generation}")
                time.sleep(rng.uniform(0, 0.01))
        except BaseException as exc:
            self.error = exc


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(shipper: Shipper) -> None:
    shipper.write_config(**{"buffer.batch_size": 700, "buffer.flush_interval": 0.05})
    writer = Writer(shipper.spool, EVENTS)
    rng = random.Random(11)
    shipper.start()
    writer.start()
    kills = 0
    while kills < KILLS:
        time.sleep(rng.uniform(0.2, 0.9))  # start-up takes ~0.3 s: most kills land mid-work
        shipper.kill()
        kills += 1
        shipper.start()
    writer.join(timeout=120)
    assert writer.error is None and writer.written == EVENTS
    wait_for(lambda: count_rows(shipper.dsn) >= EVENTS, timeout=120, what=f"{EVENTS} rows")
    time.sleep(0.5)
    assert shipper.stop() == 0
    got = seqs(shipper.dsn)
    assert len(got) == len(set(got)), f"{len(got) - len(set(got))} duplicates"
    assert got == list(range(EVENTS))
    assert query(shipper.dsn, "SELECT count(*) FROM shipper_dead_letter")[0][0] == 0

