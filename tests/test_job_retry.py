"""scheduler.job_retry and scheduler.job_output: the pieces the dispatcher delegates to."""

from __future__ import annotations

from scheduler.job_output import OutputTails
from scheduler.job_retry import retry_delay, retry_key
from scheduler.jobs import Job
from scheduler.tasks import TaskOptions


def test_the_backoff_doubles_from_retry_delay() -> None:
    options = TaskOptions(retries=3, retryDelay=10.0)
    assert [retry_delay(options, attempt) for attempt in (1, 2, 3)] == [10.0, 20.0, 40.0]


def test_a_retry_key_names_the_fire_and_the_attempt() -> None:
    first = Job(id=7, command="x", created_at=0.0, task_id=1, key="1@60")
    assert retry_key(first) == "1@60#2"
    assert retry_key(Job(id=8, command="x", created_at=0.0, attempt=2)) == "8#3"


def test_tails_keep_the_end_and_ignore_resends() -> None:
    tails = OutputTails(cap=10)
    tails.open(1)
    assert tails.add(1, 1, "stdout", "hello ")
    assert tails.add(1, 2, "stdout", "world\n")
    assert not tails.add(1, 2, "stdout", "world\n")
    assert tails.last_seq(1) == 2
    assert tails.text(1) == "[... 6 bytes of earlier output dropped ...]\nworld\n"
    tails.close(1)
    assert tails.text(1) is None and tails.last_seq(1) == 0
    tails.open(2, last_seq=5)
    assert not tails.add(2, 5, "stderr", "again") and tails.add(2, 6, "stderr", "new")


def test_keyed_timers_keep_one_call_per_key_and_stop_them_all() -> None:
    from twisted.internet.task import Clock

    from scheduler.timers import KeyedTimers

    clock = Clock()
    calls: list[str] = []
    timers = KeyedTimers(clock)
    timers.start(1, 5, calls.append, "first")
    timers.start(1, 1, calls.append, "ignored: 1 is pending")
    timers.start(2, 3, calls.append, "two")
    assert 1 in timers
    clock.advance(3)
    assert calls == ["two"] and 2 not in timers
    timers.start(3, 1, calls.append, "cancelled")
    timers.cancel(3)
    timers.stop()
    clock.advance(10)
    assert calls == ["two"] and 1 not in timers


def test_retries_owed_before_a_restart_are_armed_again_due_when_they_were() -> None:
    from datetime import UTC

    from twisted.internet.task import Clock

    from scheduler import cron
    from scheduler.job_book import JobBook
    from scheduler.job_retry import Retries
    from scheduler.jobs import JobStatus
    from scheduler.tasks import Task

    clock = Clock()
    clock.advance(1000)
    every_minute = cron.parse("* * * * *", UTC)
    tasks = {
        1: Task(1, "task_1", every_minute, "a", TaskOptions(retries=1, retryDelay=8.0)),
        2: Task(2, "task_2", every_minute, "b", TaskOptions(retries=2, retryDelay=10.0)),
        3: Task(3, "task_3", every_minute, "c", TaskOptions(retries=1, retryDelay=8.0)),
        4: Task(4, "task_4", every_minute, "d", TaskOptions(retries=0)),
    }
    submitted: list[Job] = []

    def submit(job: Job) -> Job:
        submitted.append(job)
        return job

    retries = Retries(clock, JobBook(clock, next_id=100), tasks.get, submit)

    def ended(job_id: int, task_id: int, status: JobStatus, finished_at: float, attempt: int = 1) -> Job:
        return Job(
            job_id, "x", created_at=finished_at - 1, task_id=task_id, key=f"{task_id}@960",
            scheduled_at=960.0, attempt=attempt, status=status, finished_at=finished_at,
        )

    retries.resume(
        [
            ended(1, 1, JobStatus.FAILED, 995.0),  # due at 1003
            ended(2, 2, JobStatus.TIMED_OUT, 950.0, attempt=2),  # 20 s backoff, due at 970: at once
            ended(3, 3, JobStatus.FAILED, 990.0, attempt=2),  # its one retry has run
            ended(4, 4, JobStatus.LOST, 999.0),  # no retries
            ended(5, 9, JobStatus.FAILED, 999.0),  # its task is gone
            ended(6, 1, JobStatus.SUCCEEDED, 999.0),  # not a status that retries
        ]
    )
    clock.advance(0)
    assert [(job.task_id, job.attempt, job.key) for job in submitted] == [(2, 3, "2@960#3")]
    clock.advance(2.9)
    assert len(submitted) == 1
    clock.advance(0.1)
    assert [(job.task_id, job.attempt, job.key) for job in submitted[1:]] == [(1, 2, "1@960#2")]
    assert submitted[1].triggered_by is not None and submitted[1].triggered_by.job == 1
    # One timer per job: a job's retry armed twice (as it ends, and from
    # the history) still runs once.
    again = ended(7, 1, JobStatus.FAILED, clock.seconds())
    retries.after(again)
    retries.resume([again])
    clock.advance(100)
    assert [job.key for job in submitted[2:]] == ["1@960#2"] and submitted[2].attempt == 2


def test_retries_are_the_leaders_and_a_job_retried_is_not_armed_again() -> None:
    from datetime import UTC

    from twisted.internet.task import Clock

    from scheduler import cron
    from scheduler.job_book import JobBook
    from scheduler.job_retry import Retries
    from scheduler.jobs import JobStatus
    from scheduler.tasks import Task

    clock = Clock()
    clock.advance(1000)
    tasks = {1: Task(1, "task_1", cron.parse("* * * * *", UTC), "a", TaskOptions(retries=3, retryDelay=5.0))}
    submitted: list[Job] = []
    leading = {"now": False}

    def submit(job: Job) -> Job:
        submitted.append(job)
        return job

    retries = Retries(clock, JobBook(clock, next_id=100), tasks.get, submit, leading=lambda: leading["now"])
    failed = Job(1, "x", created_at=990.0, task_id=1, key="1@960", status=JobStatus.FAILED, finished_at=999.0)
    # A follower arms nothing.
    retries.after(failed)
    clock.advance(60)
    assert submitted == []
    # The leader does, once, however often the sweep hands it the job
    # before the retry's record commits.
    leading["now"] = True
    retries.resume([failed])
    clock.advance(0)
    retries.resume([failed])
    clock.advance(60)
    assert [job.key for job in submitted] == ["1@960#2"]
    # A leader that stops leading drops what it armed, and its timers fire no retry.
    second = Job(2, "x", created_at=1060.0, task_id=1, key="1@960#2", attempt=2, status=JobStatus.FAILED, finished_at=1060.0)
    retries.after(second)
    leading["now"] = False
    clock.advance(60)
    assert len(submitted) == 1
