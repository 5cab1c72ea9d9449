"""POST /api/jobs with a list: a batch of jobs, all checked before any is made."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.logger import LogEvent, globalLogPublisher

from scheduler.access_tokens import TokenBook, token_hash
from scheduler.http_api import MAX_BATCH
from tests.test_http_api import Api, close_api, make_api

GPU = "gpu-token-0123456789abcdef"  # may run commands, only on label:gpu


@pytest_twisted.async_yield_fixture
async def api(tmp_path: Path, reactor: Any) -> AsyncIterator[Api]:
    made = await make_api(tmp_path, reactor, queue_limit=5)
    yield made
    await close_api(made)


async def no_jobs_made(api: Api) -> None:
    assert not list(api.service.dispatcher.jobs)
    assert (await api.call("GET", "/api/jobs"))[1] == []


@pytest_twisted.ensureDeferred
async def test_a_batch_makes_its_jobs_in_order_each_audited(api: Api) -> None:
    items = [
        {"command": "echo 0"},
        {"command": "echo 1", "env": {"A": "1"}, "timeout": 5, "target": "label:gpu"},
        {"command": "echo 2", "cwd": "/tmp", "timeout": None},
    ]
    lines: list[LogEvent] = []

    def observe(event: LogEvent) -> None:
        if "audit_action" in event:
            lines.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        code, jobs = await api.call("POST", "/api/jobs", items)
    finally:
        globalLogPublisher.removeObserver(observe)
    assert code == 202, jobs
    # One line in the main log for the request, naming every job.
    assert [(e["audit_action"], e["audit_jobs"]) for e in lines] == [("job.run", [job["id"] for job in jobs])]
    assert [job["command"] for job in jobs] == ["echo 0", "echo 1", "echo 2"]
    assert [job["target"] for job in jobs] == ["any", "label:gpu", "any"]
    assert jobs[1]["timeout"] == 5 and jobs[2]["cwd"] == "/tmp"
    assert [job["id"] for job in jobs] == sorted(job["id"] for job in jobs)
    assert all(job["status"] == "queued" for job in jobs)
    assert all(job["triggeredBy"] == {"kind": "api", "name": None, "job": None} for job in jobs)
    # Recorded, as a single run is, and one audit entry per job.
    stored = await api.service.job_store.get(jobs[1]["id"])
    assert stored is not None and dict(stored.env) == {"A": "1"}
    code, entries = await api.call("GET", "/api/audit?action=job.run")
    assert code == 200
    assert sorted((e["jobId"], e["detail"]["command"], e["detail"]["target"]) for e in entries) == [
        (jobs[0]["id"], "echo 0", "any"),
        (jobs[1]["id"], "echo 1", "label:gpu"),
        (jobs[2]["id"], "echo 2", "any"),
    ]


@pytest_twisted.ensureDeferred
async def test_target_all_in_a_batch_gives_one_job_per_worker(api: Api) -> None:
    api.connect_worker("w1", slots=0)
    api.connect_worker("w2", slots=0)
    code, jobs = await api.call("POST", "/api/jobs", [{"command": "uptime", "target": "all"}, {"command": "date"}])
    assert code == 202, jobs
    assert [(job["command"], job["target"]) for job in jobs] == [
        ("uptime", "worker:w1"),
        ("uptime", "worker:w2"),
        ("date", "any"),
    ]


@pytest.mark.parametrize(
    ("items", "status", "message"),
    [
        ([{"command": "true"}, {"command": "true"}, {"command": ""}], 400, "job 2: command is empty"),
        ([{"command": "true"}, "true"], 400, "job 1: must be a JSON object"),
        ([{"command": "true"}, {"command": "x", "retries": 1}], 400, "job 1: unknown field(s): retries"),
        ([{"command": "x", "timeout": -1}, {"command": ""}], 400, "job 0: timeout must be"),
        ([{"command": "true"}, {"command": "x", "target": "somewhere"}], 400, "job 1: target must be"),
        ([], 400, "the list of jobs is empty"),
        ([{"command": "true"}] * (MAX_BATCH + 1), 400, f"at most {MAX_BATCH} jobs ({MAX_BATCH + 1} sent)"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_bad_batch_makes_no_job_and_names_the_first_bad_item(
    api: Api, items: list[Any], status: int, message: str
) -> None:
    code, error = await api.call("POST", "/api/jobs", items)
    assert code == status and message in error["error"], error
    await no_jobs_made(api)


@pytest_twisted.ensureDeferred
async def test_the_queue_limit_is_checked_for_the_whole_batch(api: Api) -> None:
    code, error = await api.call("POST", "/api/jobs", [{"command": f"echo {n}"} for n in range(6)])
    assert code == 503 and "queue is full (0 queued, limit 5, 6 asked for)" in error["error"]
    await no_jobs_made(api)
    code, jobs = await api.call("POST", "/api/jobs", [{"command": f"echo {n}"} for n in range(5)])
    assert code == 202 and len(jobs) == 5
    code, error = await api.call("POST", "/api/jobs", [{"command": "one more"}])
    assert code == 503 and "queue is full (5 queued, limit 5)" in error["error"]


@pytest_twisted.ensureDeferred
async def test_the_single_form_is_unchanged(api: Api) -> None:
    code, job = await api.call("POST", "/api/jobs", {"command": "true"})
    assert code == 202 and isinstance(job, dict) and job["command"] == "true"
    code, error = await api.call("POST", "/api/jobs", raw=b'"true"', headers={b"Content-Type": [b"application/json"]})
    assert code == 400 and "a JSON object (one job) or a list of them" in error["error"]


@pytest_twisted.async_yield_fixture
async def scoped(tmp_path: Path, reactor: Any) -> AsyncIterator[Api]:
    path = tmp_path / "tokens"
    path.write_text(f"gpu run,read {token_hash(GPU)} labels=gpu\n")
    book = TokenBook(str(path))
    book.load()
    made = await make_api(tmp_path, reactor, tokens=book)
    yield made
    await close_api(made)


@pytest_twisted.ensureDeferred
async def test_the_run_scope_covers_every_item(scoped: Api) -> None:
    bearer = {b"Authorization": [f"Bearer {GPU}".encode()]}
    items = [{"command": "nvidia-smi", "target": "label:gpu"}, {"command": "id"}]
    code, error = await scoped.call("POST", "/api/jobs", items, headers=dict(bearer))
    assert code == 403 and error["error"].startswith("job 1: ") and "label:gpu" in error["error"]
    assert not list(scoped.service.dispatcher.jobs)
    code, jobs = await scoped.call("POST", "/api/jobs", items[:1], headers=dict(bearer))
    assert code == 202 and jobs[0]["triggeredBy"] == {"kind": "api", "name": "gpu", "job": None}
