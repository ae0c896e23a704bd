"""Deterministic, realistic Moodle events for the demo, the tests and the benchmark.

The mix is that of a busy teaching site: mostly views (course pages, activity pages), then quiz,
assignment and forum activity, logins; ``other`` is mostly null or small, with some kilobyte-sized
forum texts (\\mod_forum\\event\\assessable_uploaded carries the post's content). Some ids arrive as
strings, as Moodle often hands them over.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

MODULES = ("page", "resource", "url", "forum", "quiz", "assign", "book", "folder", "lesson", "scorm")
WORDS = ("the", "quiz", "lecture", "week", "assignment", "question", "answer", "I", "think", "because",
         "deadline", "group", "project", "reading", "chapter", "exam", "notes", "thanks", "please",
         "discussion", "example", "solution", "problem", "method", "result", "data", "why", "how")

# (weight, eventname, component, action, target, objecttable, crud, edulevel, contextlevel)
KINDS: tuple[tuple[float, str, str, str, str, str | None, str, int, int], ...] = (
    (34, "\\core\\event\\course_viewed", "core", "viewed", "course", None, "r", 2, 50),
    (26, "\\mod_{m}\\event\\course_module_viewed", "mod_{m}", "viewed", "course_module", "{m}", "r", 2, 70),
    (4, "\\mod_quiz\\event\\attempt_viewed", "mod_quiz", "viewed", "attempt", "quiz_attempts", "r", 2, 70),
    (2, "\\mod_quiz\\event\\attempt_started", "mod_quiz", "started", "attempt", "quiz_attempts", "c", 2, 70),
    (2, "\\mod_quiz\\event\\attempt_submitted", "mod_quiz", "submitted", "attempt", "quiz_attempts", "u",
     2, 70),
    (3, "\\mod_assign\\event\\submission_status_viewed", "mod_assign", "viewed", "submission_status",
     None, "r", 0, 70),
    (1.5, "\\assignsubmission_file\\event\\submission_updated", "assignsubmission_file", "updated",
     "submission", "assignsubmission_file", "u", 2, 70),
    (4, "\\mod_forum\\event\\discussion_viewed", "mod_forum", "viewed", "discussion", "forum_discussions",
     "r", 2, 70),
    (1.5, "\\mod_forum\\event\\post_created", "mod_forum", "created", "post", "forum_posts", "c", 2, 70),
    (1.2, "\\mod_forum\\event\\assessable_uploaded", "mod_forum", "uploaded", "assessable",
     "forum_posts", "c", 2, 70),
    (5, "\\core\\event\\user_loggedin", "core", "loggedin", "user", "user", "r", 0, 10),
    (1.5, "\\core\\event\\user_loggedout", "core", "loggedout", "user", "user", "r", 0, 10),
    (4, "\\core\\event\\dashboard_viewed", "core", "viewed", "dashboard", None, "r", 0, 30),
    (3, "\\gradereport_user\\event\\grade_report_viewed", "gradereport_user", "viewed", "grade_report",
     None, "r", 1, 50),
    (2, "\\core\\event\\user_profile_viewed", "core", "viewed", "user_profile", "user", "r", 0, 30),
    (1.8, "\\core\\event\\calendar_event_created", "core", "created", "calendar_event", "event", "c", 0,
     50),
    (2, "\\core\\event\\course_module_completion_updated", "core", "updated", "course_module_completion",
     "course_modules_completion", "u", 0, 70),
)


def _ip(rng: random.Random) -> str:
    if rng.random() < 0.1:
        return f"2001:db8:{rng.randrange(65536):x}::{rng.randrange(65536):x}"
    return f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


def events(count: int, seed: int = 1, start: float | None = None, per_second: float = 200.0,
           users: int = 5000, courses: int = 300) -> Iterator[dict[str, Any]]:
    """``count`` events in time order from ``start`` (default: now minus the span they cover)."""
    rng = random.Random(seed)
    weights = [k[0] for k in KINDS]
    span = count / per_second
    t_us = int(((start if start is not None else time.time() - span)) * 1_000_000)
    step = 1_000_000 / per_second
    ips = [_ip(rng) for _ in range(users)]
    for _ in range(count):
        t_us += int(rng.expovariate(1 / step))
        _, name, comp, action, target, table, crud, edulevel, ctxlevel = rng.choices(KINDS, weights)[0]
        module = rng.choice(MODULES)
        userid = int(rng.paretovariate(1.2) * 7) % users + 2
        courseid = int(rng.paretovariate(1.1) * 3) % courses + 2
        objectid = rng.randrange(1, 2_000_000) if table else None
        other: Any = None
        if "assessable_uploaded" in name:
            words = rng.randrange(80, 400)
            other = {"content": " ".join(rng.choice(WORDS) for _ in range(words)), "pathnamehashes": [],
                     "discussionid": rng.randrange(1, 50000), "triggeredfrom": "forum_add_post"}
        elif "post_created" in name:
            other = {"discussionid": rng.randrange(1, 50000), "forumid": rng.randrange(1, 3000),
                     "forumtype": "general"}
        elif "attempt" in name:
            other = {"quizid": rng.randrange(1, 5000)}
        elif "loggedin" in name:
            other = {"username": f"student{userid}", "extrauserinfo": []}
        elif "completion" in name:
            other = {"relateduserid": userid, "overrideby": None, "completionstate": rng.randrange(3)}
        event = {
            "eventname": name.format(m=module), "component": comp.format(m=module), "action": action,
            "target": target, "objecttable": table.format(m=module) if table else None,
            "objectid": objectid, "crud": crud, "edulevel": edulevel,
            "contextid": courseid * 10 + (rng.randrange(10) if ctxlevel == 70 else 0),
            "contextlevel": ctxlevel, "contextinstanceid": courseid if ctxlevel == 50 else rng.randrange(
                1, 100000),
            "userid": userid, "courseid": courseid if ctxlevel in (50, 70) else 0,
            "relateduserid": userid if "completion" in name else None,
            "anonymous": 0, "other": other, "timecreated": t_us // 1_000_000,
            "timecreated_us": t_us, "origin": "web" if rng.random() < 0.93 else rng.choice(("cli", "ws")),
            "ip": ips[userid % users], "realuserid": None,
        }
        if rng.random() < 0.1:  # Moodle often passes ids as strings
            event["courseid"] = str(event["courseid"])
            event["userid"] = str(event["userid"])
        yield event


def write_spool(directory: str | os.PathLike[str], count: int, host: str = "web1", seed: int = 1,
                start: float | None = None, per_second: float = 200.0) -> list[Path]:
    """Write events into hourly files named as the Moodle plugin names them; return the files."""
    directory = Path(directory)
    files: dict[str, Any] = {}
    try:
        for event in events(count, seed=seed, start=start, per_second=per_second):
            hour = time.strftime("%Y%m%d%H", time.gmtime(event["timecreated"]))
            fh = files.get(hour)
            if fh is None:
                fh = files[hour] = open(directory / f"moodle-events-{hour}-{host}.jsonl", "ab")  # noqa: SIM115
            fh.write(orjson.dumps(event) + b"\n")
    finally:
        for fh in files.values():
            fh.close()
    return sorted(directory / f"moodle-events-{hour}-{host}.jsonl" for hour in files)
