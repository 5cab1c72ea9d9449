"""A task's own time zone: CRON_TZ= over TCP (in memory) and REST, and /api/schedules/check."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from scheduler.task_state import TaskState
from scheduler.tcp_commands import split_add
from tests.helpers import make_state
from tests.test_http_api import Api, api  # noqa: F401  (the fixture)
from tests.test_tcp_commands import Client


@pytest.fixture
def state(tmp_path: Path) -> TaskState:
    return make_state(tmp_path / "tasks.db")


def test_split_add_keeps_cron_tz_with_the_schedule() -> None:
    assert split_add("CRON_TZ=Europe/Berlin 30 2 * * * echo  hi") == ("CRON_TZ=Europe/Berlin 30 2 * * *", "echo  hi")
    assert split_add("CRON_TZ=UTC @daily x") == ("CRON_TZ=UTC @daily", "x")
    assert split_add("CRON_TZ=UTC */10 * * * * 30 x") == ("CRON_TZ=UTC */10 * * * * 30", "x")


def test_add_with_cron_tz(state: TaskState, tmp_path: Path) -> None:
    client = Client(state, Clock())
    out = client.send(b"ADD CRON_TZ=Europe/Berlin 30 2 * * * echo hi\nADD @hourly plain\nLIST\n")
    assert out[0].startswith("OK id=1 jobName=task_1 next=")
    assert out[2].split("\t")[2] == "CRON_TZ=Europe/Berlin 30 2 * * *"
    # A task without a zone: the seed's columns, unchanged.
    assert out[3].split("\t")[:3] == ["2", "task_2", "@hourly"]
    (task, _) = state.book
    assert task.options.timezone == "Europe/Berlin" and str(task.schedule.tz) == "Europe/Berlin"
    # tasks.db: the plain schedule (the seed's C scheduler reads it), the zone beside.
    first = json.loads((tmp_path / "tasks.db").read_text().splitlines()[0])
    assert first["schedule"] == "30 2 * * *" and first["timezone"] == "Europe/Berlin"


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"ADD CRON_TZ=Mars/Olympus 30 2 * * * x\n", "ERR timezone 'Mars/Olympus' is not an IANA time zone (such as Europe/Berlin)"),
        (b"ADD CRON_TZ= 30 2 * * * x\n", "ERR CRON_TZ=<zone> must be followed by a space and the schedule"),
        (b"ADD CRON_TZ=UTC 61 * * * * x\n", "ERR invalid schedule '61 * * * *': minute must be 0-59"),
    ],
)
def test_add_with_a_bad_cron_tz(state: TaskState, line: bytes, reply: str) -> None:
    (answer,) = Client(state, Clock()).send(line)
    assert answer.startswith(reply)
    assert len(state.book) == 0


@pytest_twisted.ensureDeferred
async def test_rest_add_takes_cron_tz_in_the_schedule(api: Api, tmp_path: Path) -> None:  # noqa: F811
    code, task = await api.call("POST", "/api/tasks", {"schedule": "CRON_TZ=Asia/Tokyo 0 9 * * *", "command": "x"})
    assert code == 201 and task["schedule"] == "0 9 * * *" and task["timezone"] == "Asia/Tokyo"

    code, _ = await api.call("POST", "/api/tasks", {"schedule": "CRON_TZ=Asia/Tokyo 0 9 * * *", "timezone": "Asia/Tokyo", "command": "y"})
    assert code == 201
    code, body = await api.call("POST", "/api/tasks", {"schedule": "CRON_TZ=Asia/Tokyo 0 9 * * *", "timezone": "UTC", "command": "z"})
    assert code == 400 and "CRON_TZ=Asia/Tokyo" in body["error"]
    lines = [json.loads(line) for line in (tmp_path / "tasks.db").read_text().splitlines()]
    assert [(line["schedule"], line["timezone"]) for line in lines] == [("0 9 * * *", "Asia/Tokyo")] * 2


@pytest_twisted.ensureDeferred
async def test_schedule_check_in_a_zone_flags_clock_changes(api: Api) -> None:  # noqa: F811
    after = quote("2026-03-28T12:00:00+01:00")
    code, body = await api.call("GET", f"/api/schedules/check?expr=30+2+*+*+*&timezone=Europe/Berlin&after={after}")
    assert code == 200 and body["timezone"] == "Europe/Berlin"
    assert body["next"] == ["2026-03-29T03:00:00.000+02:00", "2026-03-30T02:30:00.000+02:00", "2026-03-31T02:30:00.000+02:00"]
    assert body["runs"][0] == {
        "at": "2026-03-29T03:00:00.000+02:00",
        "shifted": "clocks go forward: 02:30 does not exist on 2026-03-29; runs at 03:00",
    }
    assert body["runs"][1]["shifted"] is None
    after = quote("2026-10-25T00:00:00+02:00")
    expr = quote("CRON_TZ=Europe/Berlin 30 2 * * *")
    _, body = await api.call("GET", f"/api/schedules/check?expr={expr}&after={after}&count=2")
    assert body["next"] == ["2026-10-25T02:30:00.000+02:00", "2026-10-26T02:30:00.000+01:00"]
    assert body["runs"][0]["shifted"] == "clocks go back: 02:30 happens twice on 2026-10-25; runs once, the first time"
    _, body = await api.call("GET", f"/api/schedules/check?expr={expr}&timezone=UTC")
    assert body["valid"] is False and "CRON_TZ=Europe/Berlin" in body["error"]
    code, body = await api.call("GET", "/api/schedules/check?expr=@daily&timezone=Nowhere/Land")
    assert code == 400 and "Nowhere/Land" in body["error"]
    _, body = await api.call("GET", "/api/schedules/check?expr=H+*+*+*+*&jobName=task_1")
    assert body["valid"] and "H, hashed from the task" in body["description"]
