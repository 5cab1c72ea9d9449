"""A job's command may be a script of several lines, and its stored output
keeps stdout and stderr apart (GET /api/jobs/{id}/output)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_twisted

from scheduler.job_history.output import merge_streams
from scheduler.worker_messages import Finished
from tests.test_http_api import Api, close_api, make_api


@pytest_twisted.async_yield_fixture
async def api(tmp_path: Path, reactor: Any) -> AsyncIterator[Api]:
    made = await make_api(tmp_path, reactor)
    yield made
    await close_api(made)


SCRIPT = "set -e\nfor n in 1 2; do\n  echo line $n\ndone\n"


@pytest_twisted.ensureDeferred
async def test_a_job_runs_a_script_of_several_lines_as_given(api: Api) -> None:
    _worker, link = api.connect_worker()
    code, job = await api.call("POST", "/api/jobs", {"command": SCRIPT})
    assert code == 202 and job["command"] == SCRIPT
    await api.service.job_store.get(job["id"])
    assert [m["command"] for m in link.sent if m["type"] == "run"] == [SCRIPT]
    code, error = await api.call("POST", "/api/jobs", {"command": "echo \x00"})
    assert code == 400 and "NUL" in error["error"]


@pytest_twisted.ensureDeferred
async def test_a_tasks_command_stays_one_line(api: Api) -> None:
    code, error = await api.call("POST", "/api/tasks", {"schedule": "* * * * *", "command": SCRIPT})
    assert code == 400 and "one line" in error["error"] and "POST /api/jobs" in error["error"]


@pytest_twisted.ensureDeferred
async def test_the_stored_output_keeps_its_streams_in_order(api: Api) -> None:
    worker, _link = api.connect_worker()
    code, job = await api.call("POST", "/api/jobs", {"command": "x"})
    dispatcher = api.service.dispatcher
    dispatcher.started(worker, job["id"], 1.0)
    for seq, (stream, data) in enumerate(
        [("stdout", "a\n"), ("stdout", "b\n"), ("stderr", "oops\n"), ("stdout", "c\n")], start=1
    ):
        dispatcher.output(worker, job["id"], seq, stream, data)
    dispatcher.finished(worker, Finished(job["id"], 1, None, False, False, 4, 1.0, 2.0, ()))
    code, output = await api.call("GET", f"/api/jobs/{job['id']}/output")
    assert code == 200
    assert output == {
        "dropped": 0,
        "parts": [
            {"stream": "stdout", "text": "a\nb\n"},
            {"stream": "stderr", "text": "oops\n"},
            {"stream": "stdout", "text": "c\n"},
        ],
    }
    assert (await api.call("GET", f"/api/jobs/{job['id']}/log"))[1] == "a\nb\noops\nc\n"
    assert (await api.call("GET", "/api/jobs/999/output"))[0] == 404


def test_merge_streams_joins_runs_of_one_stream() -> None:
    assert merge_streams([]) == []
    assert merge_streams([("stderr", "x"), ("stderr", "y"), ("stdout", "z")]) == [("stderr", "xy"), ("stdout", "z")]
