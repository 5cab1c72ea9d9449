"""The real ``twistd scheduler`` under libfaketime: its wall clock steps, the machine's does not.

libfaketime (Debian's ``faketime``, installed by ``make test``) is preloaded
into the scheduler alone.  ``FAKETIME_TIMESTAMP_FILE`` names a file holding
the offset (``+20s``), ``FAKETIME_NO_CACHE=1`` makes every clock read see a
change at once, and ``FAKETIME_DONT_FAKE_MONOTONIC=1`` leaves the monotonic
clock real: the cron tick measures the wall clock against it, so a rewrite
of the file is a clock step.  No worker runs; the jobs queue, and the REST
API lists them.
"""

from __future__ import annotations

import glob
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import http_json, start_scheduler, stop, wait_until

ROOT = Path(__file__).resolve().parent.parent


def find_libfaketime() -> str | None:
    """The single-threaded libfaketime of Debian (any architecture) or a local build."""
    for pattern in (
        "/usr/lib/*/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
        "/usr/local/lib/faketime/libfaketime.so.1",
    ):
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


LIBFAKETIME = find_libfaketime()


def set_offset(path: Path, spec: str) -> None:
    """Write the fake clock's offset whole (rename), so no read sees half a file."""
    partial = path.with_suffix(".new")
    partial.write_text(spec + "\n")
    os.replace(partial, path)


def jobs(url: str, *, missed: bool = False) -> list[dict[str, Any]]:
    """The task's jobs that ran (or, with *missed*, the seconds recorded as missed), oldest first."""
    status, body = http_json("GET", f"{url}/api/jobs?task=1&limit=1000")
    assert status == 200, body
    assert isinstance(body, list)
    return sorted((job for job in body if (job["status"] == "missed") == missed), key=lambda job: job["id"])


def jobs_from(url: str, count: int) -> list[dict[str, Any]] | None:
    """The task's jobs once there are *count* of them."""
    listed = jobs(url)
    return listed if len(listed) >= count else None


def scheduled(job: dict[str, Any]) -> float:
    return datetime.fromisoformat(job["scheduledAt"]).timestamp()


def steps(url: str, direction: str) -> float:
    status, body = http_json("GET", f"{url}/metrics")
    assert status == 200
    assert isinstance(body, str)
    match = re.search(rf'^scheduler_clock_steps_total\{{direction="{direction}"\}} (\S+)$', body, re.M)
    assert match, body
    return float(match.group(1))


@pytest.mark.skipif(
    LIBFAKETIME is None, reason="libfaketime is missing (make test installs Debian's faketime)"
)
def test_clock_steps_under_libfaketime(tmp_path: Path) -> None:
    offset = tmp_path / "faketime"
    set_offset(offset, "+0s")
    env = {
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME_TIMESTAMP_FILE": str(offset),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        # The checkout's code, not the copy pip installed into the venv.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    running = start_scheduler(tmp_path, env=env)
    try:
        (added,) = running.command("ADD * * * * * * true\n")
        assert added.startswith("OK id=1 "), added
        # Fired on the fake clock as it is (the offset is 0 for now).
        before = wait_until(lambda: jobs_from(running.url, 2), 10, "two fires")
        last = max(scheduled(job) for job in before)

        # Forward 20 s: downtime, and with `missed: skip` none of it is caught up.
        set_offset(offset, "+20s")
        wait_until(lambda: steps(running.url, "forward") == 1, 5, "the forward step on /metrics")
        after = wait_until(
            lambda: (
                [job for job in jobs(running.url) if scheduled(job) > last]
                if any(scheduled(job) >= last + 20 for job in jobs(running.url))
                else None
            ),
            6,
            "three fires after the step",
        )
        new = [scheduled(job) for job in after]
        assert len(new) <= 5, f"a storm: {len(new)} jobs after a 20 s step ({sorted(new)})"
        assert min(new) >= last + 15, f"a skipped second ran: {sorted(new)} after {last}"
        assert all(job["triggeredBy"]["kind"] == "schedule" for job in after), after
        assert steps(running.url, "back") == 0
        # The seconds the step skipped are in the history as missed, not run.
        skipped = [scheduled(job) for job in jobs(running.url, missed=True)]
        assert skipped and all(last < when < min(new) for when in skipped), (skipped, last, sorted(new))

        # Back 6 s: the tick waits for the wall clock to pass the last second
        # fired (about 6 s), then fires on; no second runs twice.
        newest = max(scheduled(job) for job in jobs(running.url))
        set_offset(offset, "+14s")
        wait_until(lambda: steps(running.url, "back") == 1, 12, "the back step on /metrics")
        wait_until(
            lambda: any(scheduled(job) > newest for job in jobs(running.url)), 5, "a fire after the step back"
        )
        times = [scheduled(job) for job in jobs(running.url)]
        assert len(times) == len(set(times)), f"a second ran twice: {times}"
        assert times == sorted(times), times
        assert steps(running.url, "forward") == 1
        log = running.log.read_text(errors="replace")
        assert log.count("the clock stepped forward") == 1, log
        assert log.count("the clock stepped back") == 1, log
    finally:
        stop(running.process)
