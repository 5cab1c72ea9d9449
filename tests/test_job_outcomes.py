"""The start-up read the alert watch restores from: each task's last success, last job and bad ends since."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from scheduler.job_history.sqlite import SqliteDatabase
from scheduler.job_history.sqlite_schema import UPSERT, job_row
from scheduler.jobs import Job, JobStatus


def database(path: Path, jobs: list[Job]) -> SqliteDatabase:
    db = SqliteDatabase(str(path), output_cap=1 << 20, keep_per_task=100, keep_seconds=1e9, connect=sqlite3.connect)
    db.open()
    assert db.connection is not None
    db.connection.executemany(UPSERT, [(*job_row(job), 0) for job in jobs])
    return db


def job(job_id: int, task_id: int | None, status: JobStatus, at: float, attempt: int = 1) -> Job:
    return Job(job_id, "x", at, task_id=task_id, status=status, attempt=attempt, finished_at=at + 5)


def test_outcomes_are_the_last_success_and_the_bad_ends_after_it(tmp_path: Path) -> None:
    db = database(
        tmp_path / "jobs.sqlite",
        [
            job(1, 1, JobStatus.FAILED, 100),
            job(2, 1, JobStatus.SUCCEEDED, 200),
            job(3, 1, JobStatus.FAILED, 300),
            job(4, 1, JobStatus.FAILED, 310, attempt=2),
            job(5, 1, JobStatus.CANCELLED, 320),
            job(6, 1, JobStatus.TIMED_OUT, 400),
            job(7, 2, JobStatus.LOST, 500),
            job(8, 3, JobStatus.SUCCEEDED, 600),
            job(9, None, JobStatus.FAILED, 700),
            job(10, 3, JobStatus.MISSED, 650),
        ],
    )
    outcomes = db.outcomes()
    assert sorted(outcomes) == [1, 2, 3]
    first = outcomes[1]
    assert first.last_success == 205 and first.last_job == 400
    assert first.bad_ends == [(JobStatus.FAILED, 1, 305), (JobStatus.FAILED, 2, 315), (JobStatus.TIMED_OUT, 1, 405)]
    assert outcomes[2].last_success is None and outcomes[2].bad_ends == [(JobStatus.LOST, 1, 505)]
    assert outcomes[3].last_success == 605 and outcomes[3].bad_ends == [] and outcomes[3].last_job == 650
    assert db.last_at_work() == 705
    db.close()


def test_an_empty_history_has_no_outcomes(tmp_path: Path) -> None:
    db = database(tmp_path / "jobs.sqlite", [])
    assert db.outcomes() == {} and db.last_at_work() is None
    db.close()
