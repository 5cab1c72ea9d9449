"""Every REST route in memory (StubTreq), with its error cases."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from treq.testing import StubTreq
from twisted.web.client import readBody
from twisted.web.http_headers import Headers

from scheduler.jobs import JobStatus
from scheduler.service import SchedulerService
from scheduler.settings import Settings
from scheduler.worker_messages import Finished
from scheduler.worker_registry import Worker
from tests.helpers import UTC, settled


class Link:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, type: str, **fields: Any) -> None:
        self.sent.append({"type": type, **fields})

    def close(self, reason: str) -> None:
        pass


class Api:
    def __init__(self, service: SchedulerService) -> None:
        self.service = service
        # Through the guard, as the real site does: Host, Origin, token checks.
        self.treq = StubTreq(service.guard)

    async def call(
        self, method: str, path: str, body: Any = None, raw: bytes | None = None, **kw: Any
    ) -> tuple[int, Any]:
        headers = kw.pop("headers", {})
        data = raw
        if body is not None or (method == "POST" and raw is None):
            data = json.dumps(body if body is not None else {}).encode()
            headers.setdefault(b"Content-Type", [b"application/json"])
        response = await settled(
            self.treq, self.treq.request(method, "http://localhost" + path, data=data, headers=headers, **kw)
        )
        content = await settled(self.treq, response.content())
        kind = response.headers.getRawHeaders(b"content-type", [b""])[0]
        if kind.startswith(b"application/json"):
            return response.code, json.loads(content)
        return response.code, content.decode()

    async def raw(self, method: str, path: str, headers: dict[bytes, list[bytes]] | None = None) -> tuple[Any, bytes]:
        """The response (headers and all) and its body as sent: StubTreq's
        agent without the treq client, which would decompress gzip."""
        agent = self.treq._agent
        response = await settled(
            self.treq, agent.request(method.encode(), b"http://localhost" + path.encode(), Headers(headers or {}))
        )
        return response, await settled(self.treq, readBody(response))

    def connect_worker(self, name: str = "w1", slots: int = 2) -> tuple[Worker, Link]:
        link = Link()
        worker = Worker(name, frozenset({"linux"}), slots, link, 0.0)
        self.service.dispatcher.hello(worker, {})
        return worker, link


async def make_api(tmp_path: Path, reactor: Any, **settings: Any) -> Api:
    chosen = Settings(
        tasks_file=str(tmp_path / "tasks.db"),
        tcp="tcp:0:interface=127.0.0.1",
        http="tcp:0:interface=127.0.0.1",
        tz=UTC,
        **settings,
    )
    return Api(SchedulerService(reactor, chosen))


async def close_api(api: Api) -> None:
    api.service.dispatcher.stop()
    await api.service.job_store.close()


@pytest_twisted.async_yield_fixture
async def api(tmp_path: Path, reactor: Any) -> AsyncIterator[Api]:
    made = await make_api(tmp_path, reactor)
    yield made
    await close_api(made)


TOKEN = "s3cret-api-token-0123456789"


@pytest_twisted.async_yield_fixture
async def locked(tmp_path: Path, reactor: Any) -> AsyncIterator[Api]:
    made = await make_api(tmp_path, reactor, api_token=TOKEN)
    yield made
    await close_api(made)


@pytest_twisted.ensureDeferred
async def test_api_token_is_required_everywhere_but_bare_health(locked: Api) -> None:
    for method, path in [
        ("GET", "/api/tasks"),
        ("POST", "/api/jobs"),
        ("GET", "/api/jobs"),
        ("GET", "/metrics"),
        ("GET", "/api/events"),
    ]:
        code, body = await locked.call(method, path)
        assert code == 401, (method, path)
        assert "API token" in body["error"]
        assert TOKEN not in json.dumps(body)
    code, body = await locked.call(
        "GET", "/api/tasks", headers={b"Authorization": [b"Bearer wrong-token-0123456789"]}
    )
    assert code == 401
    code, body = await locked.call(
        "GET", "/api/tasks", headers={b"Authorization": [f"Bearer {TOKEN}".encode()]}
    )
    assert code == 200 and body == []
    assert (await locked.call("GET", "/api/health")) == (200, {"status": "ok"})
    code, body = await locked.call(
        "GET", "/api/health", headers={b"Authorization": [f"Bearer {TOKEN}".encode()]}
    )
    assert "tasks" in body
    code, _page = await locked.call("GET", "/")
    assert code == 200  # the dashboard itself is public; it asks for the token


@pytest_twisted.ensureDeferred
async def test_host_origin_and_content_type_checks(api: Api) -> None:
    code, body = await api.call("GET", "/api/tasks", headers={b"Host": [b"evil.example:3000"]})
    assert code == 403 and "--allowed-hosts" in body["error"]
    code, body = await api.call(
        "POST", "/api/jobs", {"command": "id"}, headers={b"Origin": [b"http://evil.example"]}
    )
    assert code == 403 and "cross-origin" in body["error"]
    code, body = await api.call(
        "POST", "/api/tasks/1/run", raw=b"schedule=x", headers={b"Content-Type": [b"text/plain"]}
    )
    assert code == 415
    code, body = await api.call(
        "POST", "/api/jobs", {"command": "true"}, headers={b"Origin": [b"http://localhost"]}
    )
    assert code == 202
    assert len(api.service.jobs) == 1  # only the same-origin request made a job


@pytest_twisted.ensureDeferred
async def test_health_and_metrics(api: Api) -> None:
    code, body = await api.call("GET", "/api/health")
    assert code == 200 and body["status"] == "ok"
    code, text = await api.call("GET", "/metrics")
    assert code == 200
    for name in (
        "scheduler_jobs_finished",
        "scheduler_jobs_queued",
        "scheduler_jobs_running",
        "scheduler_workers_connected",
        "scheduler_tasks_loaded",
        "scheduler_dispatch_latency_seconds",
        "scheduler_cron_tick_lag_seconds",
        "scheduler_reactor_lag_seconds",
    ):
        assert name in text
    # Both directions from the start, at 0.
    assert 'scheduler_clock_steps_total{direction="forward"} 0.0' in text
    assert 'scheduler_clock_steps_total{direction="back"} 0.0' in text


@pytest_twisted.ensureDeferred
async def test_health_tells_the_last_clock_step(locked: Api) -> None:
    auth = {b"Authorization": [f"Bearer {TOKEN}".encode()]}
    code, body = await locked.call("GET", "/api/health", headers=auth)
    assert code == 200 and body["lastClockStep"] is None  # none since the start
    # The service ticks on the real reactor and monotonic clock, so the step
    # is set where the ticker keeps it (test_clock_steps.py drives the ticker
    # itself on task.Clock): 20.25 s forward, seen at 2024-03-05 11:05:02 UTC.
    locked.service.ticker.last_step = ("forward", 20.25, 1709636702.0)
    code, body = await locked.call("GET", "/api/health", headers=auth)
    assert body["lastClockStep"] == {"direction": "forward", "seconds": 20.25, "at": "2024-03-05T11:05:02.000+00:00"}
    locked.service.ticker.last_step = ("back", 30.0, 1709636762.5)
    code, body = await locked.call("GET", "/api/health", headers=auth)
    assert body["lastClockStep"] == {"direction": "back", "seconds": 30.0, "at": "2024-03-05T11:06:02.500+00:00"}
    # Without the token only the status, as before.
    assert (await locked.call("GET", "/api/health")) == (200, {"status": "ok"})


@pytest_twisted.ensureDeferred
async def test_task_lifecycle(api: Api, tmp_path: Path) -> None:
    code, task = await api.call(
        "POST", "/api/tasks", {"schedule": "*/5 * * * *", "command": "echo hi", "retries": 2}
    )
    assert code == 201
    assert task["id"] == 1 and task["jobName"] == "task_1" and task["retries"] == 2
    assert task["nextRun"].endswith("+00:00")
    assert task["description"] == "every 5 minutes, every day"
    assert '"retries": 2' in (tmp_path / "tasks.db").read_text()
    # A GET adds the task's newest job: none yet.
    assert (await api.call("GET", "/api/tasks"))[1] == [{**task, "lastJob": None}]
    assert (await api.call("GET", "/api/tasks/1"))[1] == {**task, "lastJob": None}
    code, job = await api.call("POST", "/api/tasks/1/run")
    assert code == 202 and job["taskId"] == 1 and job["status"] == "queued"
    assert (await api.call("DELETE", "/api/tasks/1"))[0] == 204
    assert (await api.call("GET", "/api/tasks/1"))[0] == 404
    assert (await api.call("DELETE", "/api/tasks/1"))[0] == 404


@pytest_twisted.ensureDeferred
async def test_tasks_from_tcp_and_rest_are_the_same(api: Api) -> None:
    await api.service.state.edit(lambda book: book.add("@daily", "from tcp"))
    _code, tasks = await api.call("GET", "/api/tasks")
    assert [t["command"] for t in tasks] == ["from tcp"]


@pytest.mark.parametrize(
    ("body", "raw", "headers", "status", "message"),
    [
        (None, b"{not json", {b"Content-Type": [b"application/json"]}, 400, "malformed JSON"),
        (None, b"[1]", {b"Content-Type": [b"application/json"]}, 400, "must be a JSON object"),
        ({"command": "x"}, None, {}, 400, "'schedule' is required"),
        ({"schedule": "* * * * *"}, None, {}, 400, "command must be a string"),
        ({"schedule": 5, "command": "x"}, None, {}, 400, "'schedule' is required and must be a string"),
        ({"schedule": "61 * * * *", "command": "x"}, None, {}, 400, "minute must be 0-59"),
        (
            {"schedule": "* * * * *", "command": "x", "retries": "3"},
            None,
            {},
            400,
            "retries must be an integer",
        ),
        (
            {"schedule": "* * * * *", "command": "x", "colour": "red"},
            None,
            {},
            400,
            "unknown field(s): colour",
        ),
        (None, b'{"a": 1}', {b"Content-Type": [b"text/plain"]}, 415, "Content-Type: application/json"),
        (None, b"x" * (1024 * 1024 + 10), {b"Content-Type": [b"application/json"]}, 413, "larger than"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_add_task_errors(
    api: Api, body: Any, raw: bytes | None, headers: dict[bytes, list[bytes]], status: int, message: str
) -> None:
    code, error = await api.call("POST", "/api/tasks", body, raw=raw, headers=headers)
    assert code == status
    assert message in error["error"]
    assert len(api.service.state.book) == 0


@pytest_twisted.ensureDeferred
async def test_not_found_and_method_not_allowed_are_json(api: Api) -> None:
    code, body = await api.call("GET", "/api/nothing")
    assert code == 404 and "no such resource" in body["error"]
    code, body = await api.call("PUT", "/api/tasks")
    assert code == 405 and "PUT" in body["error"]
    code, body = await api.call("GET", "/api/tasks/abc")
    assert code == 404
    code, body = await api.call("GET", "/api/jobs/99")
    assert code == 404 and "no job with id 99" in body["error"]
    assert (await api.call("GET", "/api/jobs/99/log"))[0] == 404
    assert (await api.call("POST", "/api/jobs/99/cancel"))[0] == 404
    assert (await api.call("POST", "/api/tasks/99/run"))[0] == 404


@pytest_twisted.ensureDeferred
async def test_run_a_command_and_follow_it(api: Api) -> None:
    worker, link = api.connect_worker()
    code, job = await api.call("POST", "/api/jobs", {"command": "echo hi", "env": {"A": "1"}, "timeout": 5})
    assert code == 202 and job["status"] == "queued"
    await api.service.job_store.get(job["id"])  # let the record land
    run = [m for m in link.sent if m["type"] == "run"]
    assert run == [
        {
            "type": "run",
            "job": job["id"],
            "command": "echo hi",
            "env": {"A": "1"},
            "cwd": None,
            "timeout": 5.0,
        }
    ]
    dispatcher = api.service.dispatcher
    dispatcher.started(worker, job["id"], 1.0)
    dispatcher.output(worker, job["id"], 1, "stdout", "hi\n")
    assert (await api.call("GET", f"/api/jobs/{job['id']}/log"))[1] == "hi\n"
    code, running = await api.call("GET", f"/api/jobs/{job['id']}")
    assert running["status"] == "running" and running["worker"] == "w1"
    code, workers = await api.call("GET", "/api/workers")
    assert workers[0]["name"] == "w1" and workers[0]["running"] == 1 and workers[0]["slots"] == 2
    dispatcher.finished(worker, Finished(job["id"], 0, None, False, False, 1, 1.0, 2.0, ()))
    code, done = await api.call("GET", f"/api/jobs/{job['id']}")
    assert done["status"] == "succeeded" and done["exitCode"] == 0
    assert (await api.call("GET", f"/api/jobs/{job['id']}/log"))[1] == "hi\n"
    code, error = await api.call("POST", f"/api/jobs/{job['id']}/cancel")
    assert code == 409 and "already finished" in error["error"]
    code, listed = await api.call("GET", "/api/jobs?status=succeeded")
    assert [j["id"] for j in listed] == [job["id"]]
    assert (await api.call("GET", "/api/jobs?status=running"))[1] == []
    assert (await api.call("GET", "/api/jobs?worker=w1&limit=1"))[1][0]["id"] == job["id"]


@pytest_twisted.ensureDeferred
async def test_cancel_a_queued_job(api: Api) -> None:
    code, job = await api.call("POST", "/api/jobs", {"command": "sleep 1", "target": "worker:nobody"})
    code, cancelled = await api.call("POST", f"/api/jobs/{job['id']}/cancel")
    assert code == 202 and cancelled["status"] == JobStatus.CANCELLED.value


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "command must be a string"),
        ({"command": ""}, "command is empty"),
        ({"command": "x", "target": "somewhere"}, "target must be"),
        ({"command": "x", "timeout": -1}, "timeout must be"),
        ({"command": "x", "env": {"A": 1}}, "env must be"),
        ({"command": "x", "cwd": 7}, "cwd must be"),
        ({"command": "x", "retries": 1}, "unknown field(s): retries"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_run_command_errors(api: Api, body: dict[str, Any], message: str) -> None:
    code, error = await api.call("POST", "/api/jobs", body)
    assert code == 400 and message in error["error"]


@pytest_twisted.ensureDeferred
async def test_job_filters_are_checked(api: Api) -> None:
    assert (await api.call("GET", "/api/jobs?status=weird"))[0] == 400
    assert (await api.call("GET", "/api/jobs?limit=0"))[0] == 400
    assert (await api.call("GET", "/api/jobs?task=x"))[0] == 400


@pytest_twisted.ensureDeferred
async def test_schedule_check(api: Api) -> None:
    code, body = await api.call("GET", "/api/schedules/check?expr=61+*+*+*+*")
    assert code == 200 and body == {
        "valid": False,
        "error": "invalid schedule '61 * * * *': minute must be 0-59",
    }
    _code, body = await api.call("GET", "/api/schedules/check?expr=@hourly")
    assert body["valid"] and len(body["next"]) == 3


@pytest_twisted.ensureDeferred
async def test_openapi_is_served(api: Api) -> None:
    code, body = await api.call("GET", "/api/openapi.json")
    assert code == 200 and body["openapi"].startswith("3.")


@pytest_twisted.ensureDeferred
async def test_jobs_say_who_ran_them_the_api_or_the_dashboard(api: Api) -> None:
    dashboard = {b"X-Triggered-By": [b"dashboard"]}
    assert (await api.call("POST", "/api/tasks", {"schedule": "@daily", "command": "true"}))[0] == 201
    runs = [
        await api.call("POST", "/api/jobs", {"command": "true"}),
        await api.call("POST", "/api/jobs", {"command": "true"}, headers=dashboard),
        await api.call("POST", "/api/tasks/1/run"),
        await api.call("POST", "/api/tasks/1/run", headers=dashboard),
        # Any other value is not the dashboard: the header is a hint, not a credential.
        await api.call("POST", "/api/jobs", {"command": "true"}, headers={b"X-Triggered-By": [b"schedule"]}),
    ]
    assert [code for code, _ in runs] == [202] * 5
    expected = [{"kind": kind, "name": None, "job": None} for kind in ("api", "dashboard", "api", "dashboard", "api")]
    assert [job["triggeredBy"] for _, job in runs] == expected
    # The stored record says the same, in the list and on its own.
    await api.service.job_store.get(runs[-1][1]["id"])
    listed = (await api.call("GET", "/api/jobs"))[1]
    assert [job["triggeredBy"] for job in reversed(listed)] == expected
    stored = await api.service.job_store.get(runs[1][1]["id"])
    assert stored is not None and stored.triggered_by is not None and stored.triggered_by.kind == "dashboard"


# -- what the dashboard reads: last jobs, totals, versions, the zone ------------


@pytest_twisted.ensureDeferred
async def test_tasks_carry_their_newest_job_live_while_it_runs(api: Api) -> None:
    for command in ("first", "second", "third"):
        assert (await api.call("POST", "/api/tasks", {"schedule": "@daily", "command": command}))[0] == 201
    worker, _link = api.connect_worker(slots=4)
    _code, older = await api.call("POST", "/api/tasks/1/run")
    _code, newer = await api.call("POST", "/api/tasks/1/run")
    _code, other = await api.call("POST", "/api/tasks/2/run")
    await api.service.job_store.get(other["id"])  # placed: running on w1
    api.service.dispatcher.finished(worker, Finished(older["id"], 0, None, False, False, 0, 1.0, 2.0, ()))
    api.service.dispatcher.started(worker, newer["id"], 1.0)

    _code, tasks = await api.call("GET", "/api/tasks")
    last = {task["id"]: task["lastJob"] for task in tasks}
    assert last[3] is None
    assert last[2]["id"] == other["id"] and last[2]["status"] == "running"
    # The newest by id, not the one that ended last; the live record (started).
    assert last[1]["id"] == newer["id"] and last[1]["startedAt"] is not None
    _code, one = await api.call("GET", "/api/tasks/1")
    assert one["lastJob"] == last[1]
    # The answers to changes leave it out (the page keeps its own).
    _code, paused = await api.call("POST", "/api/tasks/1/pause")
    assert "lastJob" not in paused


@pytest_twisted.ensureDeferred
async def test_job_lists_say_how_many_match_in_all(api: Api) -> None:
    worker, _link = api.connect_worker(slots=1)
    ids = [(await api.call("POST", "/api/jobs", {"command": f"echo {n}"}))[1]["id"] for n in range(5)]
    await api.service.job_store.get(ids[-1])
    api.service.dispatcher.finished(worker, Finished(ids[0], 1, None, False, False, 0, 1.0, 2.0, ()))
    await api.service.job_store.get(ids[-1])  # the next one placed

    async def listed(query: str) -> tuple[list[int], int]:
        response, body = await api.raw("GET", "/api/jobs" + query)
        assert response.code == 200
        return [job["id"] for job in json.loads(body)], int(response.headers.getRawHeaders(b"x-total-count")[0])

    assert await listed("") == (ids[::-1], 5)
    assert await listed("?limit=2") == (ids[:2:-1], 5)
    assert await listed(f"?limit=2&before={ids[2]}") == ([ids[1], ids[0]], 5)
    assert await listed("?status=queued") == (ids[:1:-1], 3)
    assert await listed("?status=running&limit=1") == ([ids[1]], 1)
    assert await listed("?status=failed") == ([ids[0]], 1)
    assert await listed("?worker=w1") == ([ids[1], ids[0]], 2)
    assert await listed("?task=1") == ([], 0)


@pytest_twisted.ensureDeferred
async def test_a_jobs_version_grows_with_each_change_the_api_shows(api: Api) -> None:
    worker, _link = api.connect_worker()
    _code, job = await api.call("POST", "/api/jobs", {"command": "sleep 60"})
    seen = [job["version"]]
    await api.service.job_store.get(job["id"])
    seen.append((await api.call("GET", f"/api/jobs/{job['id']}"))[1]["version"])  # running
    api.service.dispatcher.started(worker, job["id"], 1.0)
    seen.append((await api.call("GET", "/api/jobs"))[1][0]["version"])  # started
    code, asked = await api.call("POST", f"/api/jobs/{job['id']}/cancel")
    assert code == 202 and asked["status"] == "running" and asked["cancelRequestedAt"] is not None
    seen.append(asked["version"])
    api.service.dispatcher.finished(worker, Finished(job["id"], None, 15, False, True, 0, 1.0, 2.0, ()))
    seen.append((await api.call("GET", f"/api/jobs/{job['id']}"))[1]["version"])  # from the store now
    assert seen == sorted(set(seen)) and len(seen) == 5


class AnsweringLink(Link):
    """A worker that reports a job cancelled the moment it is asked to cancel it."""

    def __init__(self) -> None:
        super().__init__()
        self.answer: Any = None

    def send(self, type: str, **fields: Any) -> None:
        super().send(type, **fields)
        if type == "cancel" and self.answer is not None:
            self.answer(fields["job"])


@pytest_twisted.ensureDeferred
async def test_the_cancel_answer_is_the_freshest_record(api: Api) -> None:
    link = AnsweringLink()
    worker = Worker("w1", frozenset(), 1, link, 0.0)
    dispatcher = api.service.dispatcher
    dispatcher.hello(worker, {})
    _code, job = await api.call("POST", "/api/jobs", {"command": "sleep 60"})
    await api.service.job_store.get(job["id"])
    dispatcher.started(worker, job["id"], 1.0)
    # The worker's "cancelled" arrives while the cancel's write commits.
    link.answer = lambda job_id: dispatcher.finished(worker, Finished(job_id, None, 15, False, True, 0, 1.0, 2.0, ()))
    code, answer = await api.call("POST", f"/api/jobs/{job['id']}/cancel")
    assert code == 202 and answer["status"] == "cancelled"
    _code, stored = await api.call("GET", f"/api/jobs/{job['id']}")
    assert answer == stored


@pytest_twisted.ensureDeferred
async def test_health_names_the_time_zone_only_to_token_holders_where_one_is_set(tmp_path: Path, reactor: Any) -> None:
    from zoneinfo import ZoneInfo

    settings = Settings(
        tasks_file=str(tmp_path / "tasks.db"),
        tcp="tcp:0:interface=127.0.0.1",
        http="tcp:0:interface=127.0.0.1",
        tz=ZoneInfo("America/New_York"),
        api_token=TOKEN,
    )
    api = Api(SchedulerService(reactor, settings))
    try:
        auth = {b"Authorization": [f"Bearer {TOKEN}".encode()]}
        _code, body = await api.call("GET", "/api/health", headers=auth)
        assert body["timezone"] == "America/New_York"
        assert (await api.call("GET", "/api/health")) == (200, {"status": "ok"})
    finally:
        await close_api(api)


@pytest_twisted.ensureDeferred
async def test_health_names_the_time_zone_where_no_token_is_set(api: Api) -> None:
    _code, body = await api.call("GET", "/api/health")
    assert body["timezone"] == "UTC" and "version" not in body


@pytest_twisted.ensureDeferred
async def test_a_late_cancel_answer_is_older_than_the_feeds_cancelled_event(api: Api) -> None:
    # The bug: the page applied the cancel's answer ("running")
    # after the feed's "cancelled".  The versions say which is newer.
    from twisted.web.test.requesthelper import DummyRequest

    listener = DummyRequest([b""])
    listener.channel = None  # type: ignore[attr-defined]  # no transport: no backlog to measure
    assert api.service.feed.subscribe(listener, None)  # type: ignore[arg-type]
    worker, _link = api.connect_worker()
    _code, job = await api.call("POST", "/api/jobs", {"command": "sleep 60"})
    await api.service.job_store.get(job["id"])
    api.service.dispatcher.started(worker, job["id"], 1.0)
    code, answer = await api.call("POST", f"/api/jobs/{job['id']}/cancel")
    assert code == 202 and answer["status"] == "running"
    api.service.dispatcher.finished(worker, Finished(job["id"], None, 15, False, True, 0, 1.0, 2.0, ()))

    frames = b"".join(listener.written).decode().split("\n\n")
    events = [json.loads(frame.split("data: ", 1)[1]) for frame in frames if frame.startswith("event: job")]
    assert [event["status"] for event in events] == ["queued", "running", "running", "running", "cancelled"]
    versions = [event["version"] for event in events]
    assert versions == sorted(set(versions))
    assert events[-2] == answer  # the cancel's answer is the feed's event of the same change
    assert answer["version"] < events[-1]["version"]
