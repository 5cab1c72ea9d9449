"""The REST side of task changes in memory (StubTreq through the guard): PATCH with ETag and
If-Match, pause and resume, revisions and restore, run with overrides, maintenance, and a
restart on the same files."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from tests.helpers import settled
from tests.test_http_api import Api, Link, close_api, make_api

DASHBOARD = {b"X-Triggered-By": [b"dashboard"]}


async def call(
    api: Api, method: str, path: str, body: Any = None, *, raw: bytes | None = None, headers: dict[bytes, list[bytes]] | None = None
) -> tuple[int, Any, dict[str, str]]:
    """Like ``Api.call``, with the response headers; *raw* is sent as it is, without a Content-Type."""
    headers = dict(headers or {})
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
        headers.setdefault(b"Content-Type", [b"application/json"])
    response = await settled(api.treq, api.treq.request(method, "http://localhost" + path, data=data, headers=headers))
    content = await settled(api.treq, response.content())
    got = {name.decode().lower(): values[0].decode() for name, values in response.headers.getAllRawHeaders()}
    if got.get("content-type", "").startswith("application/json"):
        return response.code, json.loads(content), got
    return response.code, content.decode(), got


@pytest_twisted.async_yield_fixture
async def api(tmp_path: Path, reactor: Any) -> AsyncIterator[Api]:
    made = await make_api(tmp_path, reactor)
    yield made
    await close_api(made)


async def sent_run(link: Link, job_id: int) -> dict[str, Any]:
    """The ``run`` message of *job_id*, once sent: after the job's record has committed."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    # The record commits on the job store's thread: look again every few
    # milliseconds (a count of reactor turns is no measure of that).
    for _ in range(1000):
        for message in link.sent:
            if message["type"] == "run" and message["job"] == job_id:
                return message
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"job {job_id} was not sent within 10 s: {link.sent}")


async def add(api: Api, **fields: Any) -> dict[str, Any]:
    code, task, _ = await call(api, "POST", "/api/tasks", {"schedule": "*/5 * * * *", "command": "echo hi", **fields})
    assert code == 201, task
    return task  # type: ignore[no-any-return]


@pytest_twisted.ensureDeferred
async def test_patch_changes_fields_in_place_and_answers_an_etag(api: Api) -> None:
    task = await add(api, timeout=30, env={"A": "1"})
    code, _, headers = await call(api, "GET", f"/api/tasks/{task['id']}")
    first_tag = headers["etag"]
    assert code == 200 and first_tag.startswith('"')
    code, edited, headers = await call(
        api, "PATCH", f"/api/tasks/{task['id']}", {"command": "echo edited", "timezone": "Europe/Berlin"},
        headers={b"If-Match": [first_tag.encode()]},
    )
    assert code == 200, edited
    assert edited["id"] == task["id"] and edited["jobName"] == task["jobName"]
    assert edited["command"] == "echo edited" and edited["timezone"] == "Europe/Berlin"
    assert edited["timeout"] == 30 and edited["env"] == {"A": "1"} and edited["schedule"] == "*/5 * * * *"
    assert headers["etag"] != first_tag
    # GET answers the same tag as the PATCH did.
    assert (await call(api, "GET", f"/api/tasks/{task['id']}"))[2]["etag"] == headers["etag"]
    # The task list has one task, still the same id.
    listed = (await call(api, "GET", "/api/tasks"))[1]
    assert [each["id"] for each in listed] == [task["id"]]


@pytest_twisted.ensureDeferred
async def test_a_stale_if_match_gets_412_and_changes_nothing(api: Api) -> None:
    task = await add(api)
    path = f"/api/tasks/{task['id']}"
    old_tag = (await call(api, "GET", path))[2]["etag"]
    assert (await call(api, "PATCH", path, {"command": "echo tab one"}, headers={b"If-Match": [old_tag.encode()]}))[0] == 200
    code, body, _ = await call(api, "PATCH", path, {"command": "echo tab two"}, headers={b"If-Match": [old_tag.encode()]})
    assert code == 412 and "changed" in body["error"]
    code, body, _ = await call(api, "DELETE", path, headers={b"If-Match": [old_tag.encode()]})
    assert code == 412 and "changed" in body["error"]
    code, body, _ = await call(api, "POST", path + "/pause", {}, headers={b"If-Match": [old_tag.encode()]})
    assert code == 412
    code, now, headers = await call(api, "GET", path)
    assert code == 200 and now["command"] == "echo tab one" and not now["paused"]
    revisions = (await call(api, "GET", path + "/revisions"))[1]
    assert [each["action"] for each in revisions] == ["edit", "add"]
    # With the current tag (or "*") the DELETE goes through.
    assert (await call(api, "DELETE", path, headers={b"If-Match": [headers["etag"].encode()]}))[0] == 204
    assert (await call(api, "GET", path))[0] == 404


@pytest_twisted.ensureDeferred
async def test_patch_refuses_unknown_fields_and_bad_values(api: Api) -> None:
    task = await add(api)
    path = f"/api/tasks/{task['id']}"
    code, body, _ = await call(api, "PATCH", path, {"command": "x", "colour": "red"})
    assert code == 400 and "unknown field(s): colour" in body["error"]
    code, body, _ = await call(api, "PATCH", path, {"schedule": "61 * * * *"})
    assert code == 400 and "minute" in body["error"]
    code, body, _ = await call(api, "PATCH", path, {"timezone": "Mars/Olympus"})
    assert code == 400 and "IANA" in body["error"]
    code, body, _ = await call(api, "PATCH", path, {"id": 7})
    assert code == 400 and "unknown field(s): id" in body["error"]
    assert (await call(api, "PATCH", "/api/tasks/99", {"command": "x"}))[0] == 404
    assert (await call(api, "GET", path))[1]["command"] == "echo hi"


@pytest_twisted.ensureDeferred
async def test_bodiless_pause_and_resume_as_curl_sends_them(api: Api) -> None:
    task = await add(api)
    path = f"/api/tasks/{task['id']}"
    # curl -X POST .../pause: no body, no Content-Type.
    code, paused, headers = await call(api, "POST", path + "/pause", raw=b"")
    assert code == 200, paused
    assert paused["paused"] is True and paused["pausedUntil"] is None and paused["pauseReason"] is None
    assert paused["nextRun"] is not None  # still computed, for when it resumes
    assert headers["etag"]
    code, resumed, _ = await call(api, "POST", path + "/resume", raw=b"")
    assert code == 200 and resumed["paused"] is False
    # A body other than JSON is still refused.
    code, body, _ = await call(api, "POST", path + "/pause", raw=b"until=now", headers={b"Content-Type": [b"text/plain"]})
    assert code == 415 and "application/json" in body["error"]


@pytest_twisted.ensureDeferred
async def test_pause_until_with_a_reason_then_resume(api: Api) -> None:
    task = await add(api)
    path = f"/api/tasks/{task['id']}"
    code, paused, _ = await call(
        api, "POST", path + "/pause", {"until": "2099-12-24T18:00:00+01:00", "reason": "db migration"}
    )
    assert code == 200, paused
    assert paused["paused"] is True and paused["pauseReason"] == "db migration"
    assert paused["pausedUntil"] == "2099-12-24T17:00:00.000+00:00"
    code, body, _ = await call(api, "POST", path + "/pause", {"until": "2001-01-01T00:00:00+00:00"})
    assert code == 400 and "past" in body["error"]
    code, body, _ = await call(api, "POST", path + "/pause", {"until": "tomorrow"})
    assert code == 400 and "ISO 8601" in body["error"]
    code, body, _ = await call(api, "POST", path + "/pause", {"reason": "x", "why": "y"})
    assert code == 400 and "unknown field(s): why" in body["error"]
    code, body, _ = await call(api, "POST", path + "/pause", {"reason": "two\nlines"})
    assert code == 400 and "pauseReason" in body["error"]
    code, body, _ = await call(api, "POST", path + "/resume", {"now": True})
    assert code == 400 and "unknown field(s): now" in body["error"]
    # The refusals left the first pause as it was.
    assert (await call(api, "GET", path))[1]["pauseReason"] == "db migration"
    code, resumed, _ = await call(api, "POST", path + "/resume", {})
    assert code == 200
    assert (resumed["paused"], resumed["pausedUntil"], resumed["pauseReason"]) == (False, None, None)
    assert (await call(api, "POST", "/api/tasks/99/pause", raw=b""))[0] == 404


@pytest_twisted.ensureDeferred
async def test_patch_paused_false_resumes_a_task_paused_with_a_reason(api: Api) -> None:
    task = await add(api)
    path = f"/api/tasks/{task['id']}"
    await call(api, "POST", path + "/pause", {"until": "2099-01-01T00:00:00+00:00", "reason": "later"})
    code, body, _ = await call(api, "PATCH", path, {"paused": False})
    assert code == 200, body
    assert (body["paused"], body["pausedUntil"], body["pauseReason"]) == (False, None, None)


@pytest_twisted.ensureDeferred
async def test_revisions_newest_first_with_before_after_and_who(api: Api) -> None:
    task = await add(api)
    path = f"/api/tasks/{task['id']}"
    await call(api, "PATCH", path, {"command": "echo two"}, headers=DASHBOARD)
    await call(api, "POST", path + "/pause", {"reason": "why not"})
    await call(api, "POST", path + "/resume", raw=b"", headers=DASHBOARD)
    code, revisions, _ = await call(api, "GET", path + "/revisions")
    assert code == 200
    assert [each["action"] for each in revisions] == ["resume", "pause", "edit", "add"]
    assert [each["by"]["kind"] for each in revisions] == ["dashboard", "api", "dashboard", "api"]
    ids = [each["id"] for each in revisions]
    assert ids == sorted(ids, reverse=True)
    resume, pause, edit, added = revisions
    assert added["before"] is None and added["after"]["command"] == "echo hi"
    assert edit["before"]["command"] == "echo hi" and edit["after"]["command"] == "echo two"
    assert pause["after"]["paused"] is True and pause["after"]["pauseReason"] == "why not"
    assert "paused" not in resume["after"]
    assert all(each["taskId"] == task["id"] and each["at"] for each in revisions)
    # Paging: the two older than the edit's revision... before= is exclusive.
    older = (await call(api, "GET", path + f"/revisions?before={edit['id']}"))[1]
    assert [each["action"] for each in older] == ["add"]
    assert [each["action"] for each in (await call(api, "GET", path + "/revisions?limit=1"))[1]] == ["resume"]
    assert (await call(api, "GET", "/api/tasks/99/revisions"))[0] == 404


@pytest_twisted.ensureDeferred
async def test_restore_a_revision_and_a_removed_task(api: Api) -> None:
    task = await add(api)
    path = f"/api/tasks/{task['id']}"
    await call(api, "PATCH", path, {"command": "echo two", "timeout": 9})
    await call(api, "PATCH", path, {"command": "echo three"})
    revisions = (await call(api, "GET", path + "/revisions"))[1]
    first_edit = revisions[1]
    code, restored, headers = await call(api, "POST", f"{path}/revisions/{first_edit['id']}/restore", raw=b"")
    assert code == 200, restored
    assert restored["id"] == task["id"] and restored["command"] == "echo two" and restored["timeout"] == 9
    assert headers["etag"]
    # Removed, then restored from the removal: back with its id.
    assert (await call(api, "DELETE", path))[0] == 204
    removal = (await call(api, "GET", path + "/revisions"))[1][0]
    assert removal["action"] == "remove" and removal["after"] is None
    code, back, _ = await call(api, "POST", f"{path}/revisions/{removal['id']}/restore", {}, headers=DASHBOARD)
    assert code == 200 and back["id"] == task["id"] and back["command"] == "echo two"
    newest = (await call(api, "GET", path + "/revisions"))[1][0]
    assert newest["action"] == "restore" and newest["by"]["kind"] == "dashboard"
    # Unknown revisions, and another task's, are 404.
    other = await add(api, command="echo other")
    other_revision = (await call(api, "GET", f"/api/tasks/{other['id']}/revisions"))[1][0]
    assert (await call(api, "POST", f"{path}/revisions/{other_revision['id']}/restore", raw=b""))[0] == 404
    assert (await call(api, "POST", f"{path}/revisions/999/restore", raw=b""))[0] == 404
    code, body, _ = await call(api, "POST", f"{path}/revisions/{removal['id']}/restore", {"force": True})
    assert code == 400 and "unknown field(s): force" in body["error"]


@pytest_twisted.ensureDeferred
async def test_run_with_overrides_records_what_the_job_ran_with(api: Api) -> None:
    task = await add(api, env={"A": "1"}, cwd="base", timeout=100)
    path = f"/api/tasks/{task['id']}/run"
    code, plain, _ = await call(api, "POST", path, raw=b"")
    assert code == 202 and plain["cwd"] == "base" and plain["timeout"] == 100
    code, job, _ = await call(
        api, "POST", path, {"env": {"B": "2"}, "cwd": "elsewhere", "timeout": 5, "target": "label:linux"},
        headers=DASHBOARD,
    )
    assert code == 202, job
    assert (job["taskId"], job["cwd"], job["timeout"], job["target"]) == (task["id"], "elsewhere", 5, "label:linux")
    assert job["triggeredBy"]["kind"] == "dashboard"
    stored = await api.service.job_store.get(job["id"])
    assert stored is not None
    assert (dict(stored.env), stored.cwd, stored.timeout, stored.target) == ({"B": "2"}, "elsewhere", 5, "label:linux")
    # The worker is sent the same.
    _, link = api.connect_worker("w1")
    run = await sent_run(link, job["id"])
    assert run["env"] == {"B": "2"} and run["cwd"] == "elsewhere" and run["timeout"] == 5
    # The task itself is unchanged, with no revision for the run.
    current = (await call(api, "GET", f"/api/tasks/{task['id']}"))[1]
    assert current["env"] == {"A": "1"} and current["cwd"] == "base" and current["timeout"] == 100
    assert [each["action"] for each in (await call(api, "GET", f"/api/tasks/{task['id']}/revisions"))[1]] == ["add"]
    for body, words in (
        ({"command": "rm -rf /"}, "unknown field(s): command"),
        ({"timeout": -1}, "timeout"),
        ({"env": {"1BAD": "x"}}, "env"),
        ({"target": "nowhere"}, "target"),
    ):
        code, error, _ = await call(api, "POST", path, body)
        assert code == 400 and words in error["error"], (body, error)


@pytest_twisted.ensureDeferred
async def test_maintenance_get_and_post(api: Api, tmp_path: Path) -> None:
    code, body, _ = await call(api, "GET", "/api/maintenance")
    assert code == 200 and body == {"on": False, "since": None, "by": None}
    code, body, _ = await call(api, "POST", "/api/maintenance", {"on": True}, headers=DASHBOARD)
    assert code == 200 and body["on"] is True and body["since"] and body["by"] == "dashboard"
    assert json.loads((tmp_path / "maintenance.json").read_text())["on"] is True
    assert (await call(api, "GET", "/api/maintenance"))[1]["on"] is True
    for bad, words in (({}, "'on' is required"), ({"on": "yes"}, "true or false"), ({"on": True, "until": 5}, "unknown field(s): until")):
        code, error, _ = await call(api, "POST", "/api/maintenance", bad)
        assert code == 400 and words in error["error"], (bad, error)
    code, body, _ = await call(api, "POST", "/api/maintenance", {"on": False})
    assert code == 200 and body["on"] is False and body["by"] == "API"


@pytest_twisted.ensureDeferred
async def test_everything_survives_a_restart(tmp_path: Path, reactor: Any) -> None:
    first = await make_api(tmp_path, reactor)
    try:
        task = await add(first, command="echo one")
        other = await add(first, command="echo other")
        path = f"/api/tasks/{task['id']}"
        await call(first, "PATCH", path, {"command": "echo edited", "env": {"K": "v"}})
        await call(first, "POST", path + "/pause", {"until": "2099-06-01T00:00:00+00:00", "reason": "until summer"})
        await call(first, "POST", "/api/maintenance", {"on": True})
        await call(first, "DELETE", f"/api/tasks/{other['id']}")
        revisions = (await call(first, "GET", path + "/revisions"))[1]
        tag = (await call(first, "GET", path))[2]["etag"]
    finally:
        await close_api(first)

    second = await make_api(tmp_path, reactor)
    try:
        code, again, headers = await call(second, "GET", path)
        assert code == 200
        assert again["id"] == task["id"] and again["command"] == "echo edited" and again["env"] == {"K": "v"}
        assert again["paused"] is True and again["pauseReason"] == "until summer"
        assert again["pausedUntil"] == "2099-06-01T00:00:00.000+00:00"
        assert headers["etag"] == tag  # the same task, the same tag
        assert (await call(second, "GET", path + "/revisions"))[1] == revisions
        assert (await call(second, "GET", "/api/maintenance"))[1]["on"] is True
        assert second.service.status()["paused"] == 1 and second.service.status()["maintenance"] == "on"
        # The removed task's history is still there to restore it from.
        removal = (await call(second, "GET", f"/api/tasks/{other['id']}/revisions"))[1][0]
        code, back, _ = await call(second, "POST", f"/api/tasks/{other['id']}/revisions/{removal['id']}/restore", raw=b"")
        assert code == 200 and back["id"] == other["id"]
        # New tasks do not take the old ids.
        assert (await add(second))["id"] > other["id"]
    finally:
        await close_api(second)


@pytest.mark.parametrize("route", ["pause", "resume", "run"])
@pytest_twisted.ensureDeferred
async def test_action_routes_take_a_json_body_with_its_content_type(api: Api, route: str) -> None:
    task = await add(api)
    code, _, _ = await call(api, "POST", f"/api/tasks/{task['id']}/{route}", {})
    assert code in (200, 202)


@pytest_twisted.ensureDeferred
async def test_a_job_runs_again_with_the_same_inputs_env_included(api: Api) -> None:
    task = await add(api)
    code, first, _ = await call(
        api, "POST", f"/api/tasks/{task['id']}/run", {"env": {"SECRET": "s3"}, "cwd": "there", "timeout": 7}
    )
    assert code == 202 and "env" not in first  # the job JSON does not show the environment
    code, again, _ = await call(api, "POST", f"/api/jobs/{first['id']}/rerun", raw=b"", headers=DASHBOARD)
    assert code == 202, again
    assert (again["taskId"], again["cwd"], again["timeout"], again["target"]) == (task["id"], "there", 7, "any")
    assert again["triggeredBy"]["kind"] == "dashboard"
    stored = await api.service.job_store.get(again["id"])
    assert stored is not None and dict(stored.env) == {"SECRET": "s3"}
    code, _, _ = await call(api, "POST", "/api/jobs/999999/rerun", raw=b"")
    assert code == 404


@pytest_twisted.ensureDeferred
async def test_a_pending_retry_survives_a_restart(tmp_path: Path, reactor: Any) -> None:
    from twisted.internet.task import deferLater

    from scheduler.jobs import Job, JobStatus

    first = await make_api(tmp_path, reactor)
    try:
        task = await add(first, schedule="0 0 1 1 *", retries=1, retryDelay=8)
        # Attempt 1 failed 7.5 s ago: its retry is due 0.5 s from now, and
        # its timer dies with this scheduler.
        ended = reactor.seconds() - 7.5
        await first.service.job_store.put(
            Job(
                1, "echo hi", created_at=ended - 1, task_id=task["id"], key=f"{task['id']}@1000",
                scheduled_at=1000.0, status=JobStatus.FAILED, exit_code=1, started_at=ended - 1, finished_at=ended,
            )
        )
    finally:
        await close_api(first)

    second = await make_api(tmp_path, reactor)
    second.service.startService()
    try:
        _, link = second.connect_worker()
        assert [m for m in link.sent if m["type"] == "run"] == []  # not before it is due
        retry = None
        for _ in range(40):
            retry = next((job for job in second.service.jobs if job.attempt == 2), None)
            if retry is not None:
                break
            await deferLater(reactor, 0.05, lambda: None)
        assert retry is not None and reactor.seconds() >= ended + 8
        assert retry.key == f"{task['id']}@1000#2" and retry.triggered_by is not None and retry.triggered_by.job == 1
        assert (await sent_run(link, retry.id))["job"] == retry.id
    finally:
        await second.service.stopService()
    # Once: the history now holds the retry, and a third start owes nothing.
    third = await make_api(tmp_path, reactor)
    try:
        assert third.service.job_store.unretried() == []
    finally:
        await close_api(third)


@pytest_twisted.ensureDeferred
async def test_a_kept_cancel_survives_a_restart(tmp_path: Path, reactor: Any) -> None:
    from twisted.internet.task import deferLater

    from scheduler.jobs import JobStatus
    from scheduler.worker_messages import Finished
    from scheduler.worker_registry import Worker

    first = await make_api(tmp_path, reactor)
    try:
        worker, link = first.connect_worker()
        code, job, _ = await call(first, "POST", "/api/jobs", {"command": "sleep 60"})
        assert code == 202
        await sent_run(link, job["id"])
        # The worker goes away; the cancel asked for now waits for it.
        first.service.dispatcher.disconnected(worker)
        code, kept, _ = await call(first, "POST", f"/api/jobs/{job['id']}/cancel", raw=b"")
        assert code == 202 and kept["status"] == "running" and kept["cancelRequestedAt"] is not None
    finally:
        await close_api(first)

    second = await make_api(tmp_path, reactor)
    try:
        code, again, _ = await call(second, "GET", f"/api/jobs/{job['id']}")
        assert code == 200 and again["status"] == "running" and again["cancelRequestedAt"] == kept["cancelRequestedAt"]
        # The worker comes back with the job: the cancel follows its welcome.
        worker_link = Link()
        worker = Worker("w1", frozenset({"linux"}), 2, worker_link, 0.0)
        second.service.dispatcher.hello(worker, {job["id"]: ("running", 0)})
        for _ in range(100):
            if worker_link.sent:
                break
            await deferLater(reactor, 0.01, lambda: None)
        assert worker_link.sent[0] == {"type": "cancel", "job": job["id"]}
        now = reactor.seconds()
        second.service.dispatcher.finished(worker, Finished(job["id"], None, 15, False, True, 0, now, now, ()))
        stored = await second.service.job_store.get(job["id"])
        assert stored is not None and stored.status is JobStatus.CANCELLED and stored.cancel_requested_at is not None
    finally:
        await close_api(second)
