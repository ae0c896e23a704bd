"""A steady writer for the live-tail benchmark: appends events at a fixed rate, as Moodle's plugin does.

Every ``tick`` seconds it appends the events due by then in ONE write() on an hourly file opened
O_APPEND under flock, like logstore_tsdb's flush. Each event's ``timecreated_us`` is the wall-clock time
taken just before that write: the start of its append-to-commit latency.

    python -m bench.writer --dir SPOOL --rate 10000 --seconds 60 [--tick 0.005]

Prints one JSON line: events written, bytes, the first and last append time.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import time

import orjson

from shipper import sample

TEMPLATES = 20000


def templates(seed: int = 7) -> list[bytes]:
    """Event bodies without their time, ready to follow '{"timecreated_us":N,"timecreated":N,'."""
    out = []
    for event in sample.events(TEMPLATES, seed=seed, start=0):
        del event["timecreated"], event["timecreated_us"]
        out.append(orjson.dumps(event)[1:] + b"\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True)
    parser.add_argument("--rate", type=float, required=True, help="events per second")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--tick", type=float, default=0.005, help="seconds between appends")
    parser.add_argument("--host", default="bench")
    args = parser.parse_args()
    bodies = templates()
    written = nbytes = 0
    fd = -1
    hour = ""
    t0 = time.time()
    first = last = 0.0
    next_tick = time.monotonic()
    while True:
        now = time.time()
        if now - t0 >= args.seconds:
            break
        due = int((now - t0) * args.rate) + 1 - written
        if due > 0:
            us = int(now * 1_000_000)
            head = b'{"timecreated_us":%d,"timecreated":%d,' % (us, us // 1_000_000)
            data = b"".join(head + bodies[(written + i) % TEMPLATES] for i in range(due))
            this_hour = time.strftime("%Y%m%d%H", time.gmtime(now))
            if this_hour != hour:
                if fd >= 0:
                    os.close(fd)
                path = os.path.join(args.dir, f"moodle-events-{this_hour}-{args.host}.jsonl")
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
                hour = this_hour
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, data)
            fcntl.flock(fd, fcntl.LOCK_UN)
            first = first or now
            last = now
            written += due
            nbytes += len(data)
        next_tick += args.tick
        time.sleep(max(0.0, next_tick - time.monotonic()))
    if fd >= 0:
        os.close(fd)
    print(json.dumps({"written": written, "bytes": nbytes, "first": first, "last": last,
                      "seconds": last - first}))


if __name__ == "__main__":
    main()
