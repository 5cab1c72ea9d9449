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
