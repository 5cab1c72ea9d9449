"""Tests for worker.agent, worker.connection, worker.service and worker.tap.

Three tiers: the WorkerAgent synchronously (fake JobRuns, a fake link,
task.Clock); the Autobahn layer in memory (iosim pumps a real handshake
between our client protocol and an Autobahn server protocol); and one real
run against a stand-in scheduler on a loopback port.  The reconnect
backoff and the output buffer have files of their own
(test_worker_backoff.py, test_worker_output_buffer.py), and so do the
messages both ends share (test_worker_messages.py).
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.application.service import Service
from twisted.internet import reactor as _global_reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.test import iosim

from scheduler.worker_messages import STARTED_HOLD
from tests.fakes import FakeLink
from worker import tap
from worker.agent import WorkerAgent
from worker.connection import WorkerClientFactory
from worker.runner import OutputSink, RunResult
from worker.service import WorkerService

reactor: Any = _global_reactor

# Upper bound for anything waiting on the real reactor: a bug must fail the
# test, not hang it.
SAFETY_TIMEOUT = 10.0

WORKDIR = "/srv/work"


# -- doubles ----------------------------------------------------------------------


class FakeRun:
    """Stands in for JobRun; the test decides when output comes and it ends."""

    def __init__(
        self,
        command: str,
        on_output: OutputSink,
        *,
        env: Mapping[str, str] | None,
        cwd: str | None,
        timeout: float | None,
        kill_grace: float,
        pid: int,
        spawn_fails: bool = False,
    ) -> None:
        self.command = command
        self.on_output = on_output
        self.env = env
        self.cwd = cwd
        self.timeout = timeout
        self.kill_grace = kill_grace
        self.finished: Deferred[RunResult] = Deferred()
        self.pid: int | None = None
        self._pid = pid
        self._spawn_fails = spawn_fails
        self.started = False
        self.cancels = 0

    def start(self) -> None:
        self.started = True
        if self._spawn_fails:
            self.on_output("stderr", "failed to start job: nope\n")
            self.end(127)
            return
        self.pid = self._pid

    def cancel(self) -> None:
        self.cancels += 1

    def emit(self, text: str, stream: str = "stdout") -> None:
        self.on_output(stream, text)

    def end(self, exit_code: int | None = 0, *, signal: int | None = None, cancelled: bool = False) -> None:
        self.finished.callback(
            RunResult(
                exit_code=exit_code,
                signal=signal,
                timed_out=False,
                cancelled=cancelled,
                started_at=100.0,
                finished_at=101.5,
            )
        )


class FakeRuns:
    """A RunFactory recording every run it made, by job order."""

    def __init__(self) -> None:
        self.made: list[FakeRun] = []
        self.spawn_fails = False

    def __call__(
        self,
        command: str,
        on_output: OutputSink,
        *,
        env: Mapping[str, str] | None,
        cwd: str | None,
        timeout: float | None,
        kill_grace: float,
    ) -> FakeRun:
        run = FakeRun(
            command,
            on_output,
            env=env,
            cwd=cwd,
            timeout=timeout,
            kill_grace=kill_grace,
            pid=4000 + len(self.made),
            spawn_fails=self.spawn_fails,
        )
        self.made.append(run)
        return run

    @property
    def last(self) -> FakeRun:
        return self.made[-1]


class Harness:
    def __init__(self, **kw: Any) -> None:
        self.clock = Clock()
        self.runs = FakeRuns()
        self.welcomes = 0
        options: dict[str, Any] = {
            "name": "build-1",
            "labels": ["linux", "gpu"],
            "slots": 2,
            "workdir": WORKDIR,
            "kill_grace": 5.0,
        }
        options.update(kw)
        self.agent = WorkerAgent(self.clock, self.runs, on_welcome=self._welcomed, **options)
        self.link = FakeLink()

    def _welcomed(self) -> None:
        self.welcomes += 1

    def receive(self, type: str, /, **fields: object) -> list[dict[str, Any]]:
        self.agent.receive(json.dumps({"type": type, **fields}))
        return self.link.take()

    def connect(self, resume: Mapping[int, int] | None = None, drop: list[int] | None = None) -> dict[str, Any]:
        """Open a link and complete the handshake; returns the hello."""
        self.link = FakeLink()
        self.agent.connected(self.link)
        hello = self.link.take()
        assert [m["type"] for m in hello] == ["hello"]
        self.welcome(resume, drop)
        return hello[0]

    def welcome(self, resume: Mapping[int, int] | None = None, drop: list[int] | None = None) -> None:
        self.agent.receive(
            json.dumps(
                {
                    "type": "welcome",
                    "protocol": 2,
                    "name": "build-1",
                    "resume": {str(k): v for k, v in (resume or {}).items()},
                    "drop": drop or [],
                    "clockOffset": 0,
                }
            )
        )

    def disconnect(self) -> None:
        self.agent.disconnected(self.link)

    def run(self, job: int, command: str = "make", **fields: object) -> list[dict[str, Any]]:
        return self.receive("run", job=job, command=command, **fields)


@pytest.fixture
def h() -> Harness:
    return Harness()


@pytest.fixture
def logged() -> Iterator[list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observer)


def agent_events(events: list[dict[str, Any]], level: LogLevel) -> list[str]:
    return [
        formatEvent(e) for e in events if e.get("log_namespace") == "worker.agent" and e.get("log_level") == level
    ]


def finished_msg(job: int, seq: int, **over: object) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "type": "finished",
        "job": job,
        "exitCode": 0,
        "signal": None,
        "timedOut": False,
        "cancelled": False,
        "seq": seq,
        "startedAt": 100.0,
        "finishedAt": 101.5,
    }
    msg.update(over)
    return msg


def output_msg(job: int, seq: int, data: str, stream: str = "stdout") -> dict[str, Any]:
    return {"type": "output", "job": job, "stream": stream, "seq": seq, "data": data}


# -- hello and welcome ---------------------------------------------------------------


def test_first_hello_introduces_the_worker(h: Harness) -> None:
    hello = h.connect()
    assert hello == {
        "type": "hello",
        "protocol": 2,
        "name": "build-1",
        "labels": ["linux", "gpu"],
        "slots": 2,
        "instance": h.agent.instance,
        "time": 0.0,
        "jobs": [],
    }
    assert h.agent.welcomed
    assert h.welcomes == 1


def test_hello_lists_running_and_unacknowledged_jobs_with_last_seq(h: Harness) -> None:
    h.connect()
    h.run(12)
    h.run(17)
    h.runs.made[0].emit("a")
    h.runs.made[0].end()
    for text in "xyz":
        h.runs.made[1].emit(text)
    h.disconnect()
    hello = h.connect(resume={12: 1, 17: 3})
    assert hello["jobs"] == [
        {"job": 12, "state": "finished", "seq": 1},
        {"job": 17, "state": "running", "seq": 3},
    ]


def test_nothing_but_the_hello_goes_out_before_the_welcome(h: Harness, logged: list[dict[str, Any]]) -> None:
    h.agent.connected(h.link)
    assert h.link.types() == ["hello"]
    h.link.take()
    # A run before the welcome breaks the handshake rule; a malformed message
    # would normally get an error, but before the welcome only a log line.
    assert h.run(1) == []
    h.agent.receive("not json")
    assert h.link.sent == []
    assert h.runs.made == []
    assert any("before its welcome" in line for line in agent_events(logged, LogLevel.warn))


def test_a_welcome_resets_the_backoff_each_time(h: Harness) -> None:
    h.connect()
    h.disconnect()
    h.connect()
    assert h.welcomes == 2


def test_a_second_welcome_on_one_connection_is_ignored(h: Harness) -> None:
    h.connect()
    h.welcome()
    assert h.welcomes == 1
    assert h.link.sent == []


def test_malformed_welcome_answers_error_and_reconnects(h: Harness, logged: list[dict[str, Any]]) -> None:
    h.agent.connected(h.link)
    h.link.take()
    sent = h.receive("welcome", protocol=2, resume={"17": "x"}, drop=[], clockOffset=0)
    assert sent == [
        {
            "type": "error",
            "reason": "field 'resume' must map job ids to integer seqs",
            "message": {"type": "welcome"},
        }
    ]
    assert h.link.closes == ["malformed welcome"]
    assert not h.agent.welcomed
    assert h.welcomes == 0
    assert agent_events(logged, LogLevel.error)


def test_refused_logs_an_error_closes_and_does_not_reset_backoff(
    h: Harness, logged: list[dict[str, Any]]
) -> None:
    h.agent.connected(h.link)
    h.link.take()
    assert h.receive("refused", reason="protocol 2 is not supported") == []
    assert h.link.closes == ["refused"]
    assert h.welcomes == 0
    errors = agent_events(logged, LogLevel.error)
    assert any("protocol 2 is not supported" in line for line in errors)


def test_missing_welcome_times_out_and_closes(h: Harness) -> None:
    h.agent.connected(h.link)
    h.clock.advance(29.9)
    assert h.link.closes == []
    h.clock.advance(0.2)
    assert h.link.closes == ["no welcome"]


def test_welcome_in_time_cancels_the_timeout(h: Harness) -> None:
    h.connect()
    h.clock.advance(60)
    assert h.link.closes == []
    assert h.clock.getDelayedCalls() == []


# -- run, started, output, finished -------------------------------------------------


def test_run_streams_started_output_and_finished(h: Harness) -> None:
    h.connect()
    h.clock.advance(1764195600.0)
    sent = h.run(18, "echo hello", env={"A": "1"}, cwd=None, timeout=30.0)
    run = h.runs.last
    assert run.started
    assert (run.command, run.env, run.cwd, run.timeout, run.kill_grace) == (
        "echo hello",
        {"A": "1"},
        WORKDIR,
        30.0,
        5.0,
    )
    assert sent == []  # held back, in case the job ends at once
    run.emit("hello\n")
    h.clock.advance(STARTED_HOLD)
    assert h.link.take() == [
        {"type": "started", "job": 18, "pid": 4000, "at": 1764195600.0},
        output_msg(18, 1, "hello\n"),
    ]
    run.emit("oops\n", "stderr")
    run.end(0)
    assert h.link.take() == [output_msg(18, 2, "oops\n", "stderr"), finished_msg(18, 2)]


def test_a_job_that_ends_at_once_sends_one_finished_with_its_output(h: Harness) -> None:
    h.connect()
    h.clock.advance(1764195600.0)
    h.run(18, "echo hello")
    run = h.runs.last
    run.emit("hello\n")
    h.clock.advance(STARTED_HOLD / 2)
    run.end(0)
    assert h.link.take() == [
        {**finished_msg(18, 1), "output": [{"stream": "stdout", "seq": 1, "data": "hello\n"}]}
    ]
    h.clock.advance(STARTED_HOLD)
    assert h.link.take() == []  # and no started after all


def test_one_log_line_per_job_says_how_it_ended(h: Harness, logged: list[dict[str, Any]]) -> None:
    h.connect()
    logged.clear()
    h.run(18)
    assert agent_events(logged, LogLevel.info) == []
    h.runs.last.end(0)
    h.run(19)
    h.runs.last.end(None, signal=signal.SIGKILL, cancelled=True)
    h.runs.spawn_fails = True
    h.run(20)
    assert agent_events(logged, LogLevel.info) == [
        "job 18 (pid 4000) ended after 1.500 s: exit code 0",
        "job 19 (pid 4001) ended after 1.500 s: cancelled (killed by SIGKILL)",
        "job 20 (never started) ended after 1.500 s: exit code 127",
    ]


def test_a_fast_writer_reports_started_before_its_output_piles_up(h: Harness) -> None:
    h.connect()
    h.run(18)
    run = h.runs.last
    run.emit("x" * 40_000)
    assert h.link.take() == []
    run.emit("y" * 40_000)  # more than a finished may carry
    assert [m["type"] for m in h.link.take()] == ["started", "output", "output"]
    run.end(0)
    h.clock.advance(STARTED_HOLD)
    assert h.link.take() == [finished_msg(18, 2)]


def test_a_run_with_a_delay_starts_on_its_second(h: Harness) -> None:
    h.connect()
    assert h.run(18, delay=0.04) == []
    run = h.runs.last
    assert not run.started
    assert h.agent.running == 1  # the slot is taken while it waits
    h.clock.advance(0.039)
    assert not run.started
    h.clock.advance(0.001)
    assert run.started
    started_at = h.clock.seconds()
    h.clock.advance(STARTED_HOLD)
    assert h.link.take() == [{"type": "started", "job": 18, "pid": 4000, "at": pytest.approx(started_at)}]


def test_a_run_cancelled_before_its_second_never_starts(h: Harness) -> None:
    h.connect()
    h.run(18, delay=0.04)
    run = h.runs.last
    h.receive("cancel", job=18)
    assert run.cancels == 1
    run.end(None, cancelled=True)  # as JobRun.cancel() does before a start
    h.clock.advance(1)
    assert not run.started
    assert [m["type"] for m in h.link.take()] == ["finished"]


def test_a_run_delay_out_of_bounds_is_refused(h: Harness) -> None:
    h.connect()
    (error,) = h.run(18, delay=60)
    assert (error["type"], error["reason"]) == ("error", "field 'delay' must be at most 5 seconds")
    assert h.runs.made == []


def test_run_fields_default_and_relative_cwd_is_under_workdir(h: Harness) -> None:
    h.connect()
    h.run(1)
    assert (h.runs.last.env, h.runs.last.cwd, h.runs.last.timeout) == (None, WORKDIR, None)
    h.run(2, cwd="sub/dir")
    assert h.runs.last.cwd == os.path.join(WORKDIR, "sub/dir")
    h.runs.last.end()
    h.run(3, cwd="/elsewhere")
    assert h.runs.last.cwd == "/elsewhere"


def test_seq_counts_from_one_per_job(h: Harness) -> None:
    h.connect()
    h.run(1)
    h.run(2)
    h.clock.advance(STARTED_HOLD)
    h.runs.made[0].emit("a")
    h.runs.made[1].emit("b")
    h.runs.made[0].emit("c")
    assert [(m["job"], m["seq"]) for m in h.link.take() if m["type"] == "output"] == [(1, 1), (2, 1), (1, 2)]


def test_spawn_failure_sends_output_and_finished_but_no_started(h: Harness) -> None:
    h.connect()
    h.runs.spawn_fails = True
    sent = h.run(5, "whatever")
    assert sent == [
        output_msg(5, 1, "failed to start job: nope\n", "stderr"),
        finished_msg(5, 1, exitCode=127),
    ]
    assert h.agent.running == 0


def test_no_free_slot_is_rejected(h: Harness) -> None:
    h.connect()
    h.run(1)
    h.run(2)
    assert h.run(3) == [{"type": "rejected", "job": 3, "reason": "no free slot"}]
    assert len(h.runs.made) == 2
    assert h.agent.job_ids() == [1, 2]


def test_held_results_do_not_use_a_slot(h: Harness) -> None:
    h.connect()
    h.run(1)
    h.run(2)
    h.runs.made[0].end()
    h.link.take()
    # Job 1 still waits for its ack, but its process is gone.
    h.run(3)
    h.clock.advance(STARTED_HOLD)
    assert [m["type"] for m in h.link.take()] == ["started", "started"]
    assert h.agent.running == 2
    assert h.agent.job_ids() == [1, 2, 3]


def test_run_for_a_known_job_is_ignored(h: Harness, logged: list[dict[str, Any]]) -> None:
    h.connect()
    h.run(1)
    assert h.run(1, "rm -rf /") == []
    assert len(h.runs.made) == 1
    h.runs.last.end()
    h.link.take()
    # Still held (not acked): still "known".
    assert h.run(1) == []
    assert len(h.runs.made) == 1
    assert any("already has it" in line for line in agent_events(logged, LogLevel.warn))


# -- cancel and ack ----------------------------------------------------------------------


def test_cancel_cancels_the_run_and_unknown_job_is_a_no_op(h: Harness) -> None:
    h.connect()
    h.run(1)
    assert h.receive("cancel", job=1) == []
    assert h.runs.last.cancels == 1
    assert h.receive("cancel", job=99) == []
    h.runs.last.end(None, signal=15, cancelled=True)
    assert h.link.take() == [finished_msg(1, 0, exitCode=None, signal=15, cancelled=True)]
    # Cancelling a finished job does nothing either.
    assert h.receive("cancel", job=1) == []
    assert h.runs.last.cancels == 1


def test_ack_forgets_finished_jobs_only(h: Harness) -> None:
    h.connect()
    h.run(1)
    h.run(2)
    h.receive("ack", jobs=[1])
    assert h.agent.job_ids() == [1, 2]
    h.runs.made[0].end()
    h.runs.made[1].end()
    h.receive("ack", jobs=[1, 2])
    assert h.agent.job_ids() == []
    assert h.receive("ack", jobs=[1]) == []  # a repeat is harmless
    h.disconnect()
    assert h.connect()["jobs"] == []


# -- disconnects and resume ----------------------------------------------------------------


def test_sends_while_disconnected_are_buffered_and_resumed_after_seq(h: Harness) -> None:
    h.connect()
    h.run(7)
    run = h.runs.last
    run.emit("one")
    h.link.take()
    h.disconnect()
    old_link = h.link
    for text in ("two", "three", "four"):
        run.emit(text)
    run.end(0)
    assert old_link.sent == []
    assert h.agent.job_ids() == [7]

    # The scheduler got chunk 1 and 2 (say, 2 was in flight and arrived).
    hello = h.connect(resume={7: 2})
    assert hello["jobs"] == [{"job": 7, "state": "finished", "seq": 4}]
    assert h.link.take() == [
        output_msg(7, 3, "three"),
        output_msg(7, 4, "four"),
        finished_msg(7, 4),
    ]


def test_resumed_running_job_streams_live_again(h: Harness) -> None:
    h.connect()
    h.run(7)
    run = h.runs.last
    h.disconnect()
    run.emit("while away")
    hello = h.connect(resume={7: 0})
    assert hello["jobs"] == [{"job": 7, "state": "running", "seq": 1}]
    assert h.link.take() == [output_msg(7, 1, "while away")]
    run.emit("back")
    run.end()
    assert h.link.take() == [output_msg(7, 2, "back"), finished_msg(7, 2)]


def test_output_during_the_handshake_is_resent_on_resume(h: Harness) -> None:
    h.connect()
    h.run(7)
    run = h.runs.last
    h.disconnect()
    h.link = FakeLink()
    h.agent.connected(h.link)
    assert h.link.take()[0]["jobs"] == [{"job": 7, "state": "running", "seq": 0}]
    run.emit("between hello and welcome")
    assert h.link.sent == []
    h.welcome(resume={7: 0})
    assert h.link.take() == [output_msg(7, 1, "between hello and welcome")]


def test_drop_cancels_running_jobs_and_forgets_them(h: Harness) -> None:
    h.connect()
    h.run(1)
    h.run(2)
    h.runs.made[1].end()
    h.disconnect()
    h.connect(drop=[1, 2, 99])
    assert h.runs.made[0].cancels == 1
    assert h.agent.job_ids() == []
    # Its process still occupies a slot until it is gone ...
    assert h.agent.running == 1
    # ... and nothing about it is sent or kept.
    h.runs.made[0].emit("late")
    h.runs.made[0].end(None, signal=15, cancelled=True)
    assert h.link.sent == []
    assert h.agent.running == 0
    h.disconnect()
    assert h.connect()["jobs"] == []


def test_job_neither_resumed_nor_dropped_is_held_quietly(h: Harness, logged: list[dict[str, Any]]) -> None:
    h.connect()
    h.run(1)
    h.disconnect()
    h.connect()
    h.runs.last.emit("unasked")
    h.runs.last.end()
    assert h.link.sent == []
    assert any("neither resumes nor drops job 1" in line for line in agent_events(logged, LogLevel.warn))
    h.disconnect()
    h.connect(resume={1: 0})
    assert h.link.take() == [output_msg(1, 1, "unasked"), finished_msg(1, 1)]


def test_stale_disconnect_does_not_end_the_current_session(h: Harness) -> None:
    h.connect()
    old = h.link
    h.connect()  # e.g. the old connection's close notice comes late
    h.agent.disconnected(old)
    assert h.agent.welcomed


# -- output buffer cap ---------------------------------------------------------------------


def test_output_buffer_cap_applies_through_the_agent() -> None:
    h = Harness(output_buffer=6)
    h.connect()
    h.run(3)
    h.disconnect()
    for text in ("111", "222", "333", "444"):
        h.runs.last.emit(text)
    h.runs.last.end()
    h.connect(resume={3: 0})
    sent = h.link.take()
    assert [m["seq"] for m in sent[:-1]] == [2, 3, 4]
    assert sent[0]["stream"] == "stderr" and "6 bytes" in sent[0]["data"]
    assert sent[1:] == [output_msg(3, 3, "333"), output_msg(3, 4, "444"), finished_msg(3, 4)]


# -- malformed and unknown messages --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reason", "echo"),
    [
        ("{not json", "not valid JSON", False),
        ("[1, 2]", "a message must be a JSON object", False),
        ('"run"', "a message must be a JSON object", False),
        ('{"job": 1}', "field 'type' must be a string", True),
        ('{"type": 7}', "field 'type' must be a string", True),
        ('{"type": "run", "command": "x"}', "field 'job' must be an integer", True),
        ('{"type": "run", "job": 0, "command": "x"}', "field 'job' must be an integer from 1", True),
        ('{"type": "run", "job": 1}', "field 'command' must be a string", True),
        ('{"type": "run", "job": "1", "command": "x"}', "field 'job' must be an integer", True),
        ('{"type": "run", "job": true, "command": "x"}', "field 'job' must be an integer", True),
        ('{"type": "run", "job": 1.5, "command": "x"}', "field 'job' must be an integer", True),
        ('{"type": "run", "job": 1, "command": ["x"]}', "field 'command' must be a string", True),
        ('{"type": "run", "job": 1, "command": "x", "env": {"A": 1}}', "field 'env'", True),
        ('{"type": "run", "job": 1, "command": "x", "env": "A=1"}', "field 'env'", True),
        ('{"type": "run", "job": 1, "command": "x", "cwd": 3}', "field 'cwd'", True),
        ('{"type": "run", "job": 1, "command": "x", "timeout": -1}', "field 'timeout'", True),
        ('{"type": "run", "job": 1, "command": "x", "timeout": "30"}', "field 'timeout'", True),
        ('{"type": "run", "job": 1, "command": "x", "timeout": NaN}', "field 'timeout'", True),
        ('{"type": "cancel"}', "field 'job' must be an integer", True),
        ('{"type": "ack", "job": 1}', "field 'jobs' must be a non-empty list of job ids", True),
        ("[" * 100_000, "not valid JSON", False),
    ],
)
def test_malformed_messages_are_answered_with_error(h: Harness, text: str, reason: str, echo: bool) -> None:
    h.connect()
    h.agent.receive(text)
    sent = h.link.take()
    assert len(sent) == 1
    error = sent[0]
    assert error["type"] == "error"
    assert reason in error["reason"]
    if echo:
        # Only the type and the job, whatever else the message held.
        sent_message = json.loads(text)
        assert error["message"] == {
            key: value
            for key, value in sent_message.items()
            if (key == "type" and isinstance(value, str))
            or (key == "job" and isinstance(value, int) and not isinstance(value, bool))
        }
    else:
        assert "message" not in error
    assert h.runs.made == []
    assert h.link.closes == []


def test_error_echoes_only_type_and_job_of_a_huge_message(h: Harness) -> None:
    h.connect()
    h.agent.receive(json.dumps({"type": "run", "job": 3, "command": ["x" * 1_000_000]}))
    (error,) = h.link.take()
    assert error["message"] == {"type": "run", "job": 3}
    assert len(json.dumps(error)) < 200


def test_every_agent_has_an_instance_id_of_its_own(h: Harness) -> None:
    other = WorkerAgent(Clock(), FakeRuns(), name="build-1", slots=1, workdir="/")  # type: ignore[arg-type]
    assert h.agent.instance != other.instance and len(other.instance) >= 16


def test_unknown_message_types_are_ignored_with_a_log_line(h: Harness, logged: list[dict[str, Any]]) -> None:
    h.connect()
    assert h.receive("reticulate", splines=3) == []
    assert any("reticulate" in line for line in agent_events(logged, LogLevel.info))


def test_error_from_the_scheduler_is_logged(h: Harness, logged: list[dict[str, Any]]) -> None:
    h.connect()
    assert h.receive("error", reason="field 'job' must be an integer", message={"type": "started"}) == []
    assert any("must be an integer" in line for line in agent_events(logged, LogLevel.warn))


# -- stopping --------------------------------------------------------------------------------------


def test_stop_cancels_running_jobs_and_waits_for_them(h: Harness) -> None:
    h.connect()
    h.run(1)
    h.run(2)
    h.runs.made[1].end()
    h.link.take()
    stopped = h.agent.stop()
    assert h.runs.made[0].cancels == 1
    assert h.runs.made[1].cancels == 0
    assert not stopped.called
    h.runs.made[0].end(None, signal=15, cancelled=True)
    assert stopped.called
    # The result still went out while the connection was up.
    assert h.link.take() == [finished_msg(1, 0, exitCode=None, signal=15, cancelled=True)]
    assert h.clock.getDelayedCalls() == []


def test_stop_gives_up_after_kill_grace_plus_a_second(h: Harness) -> None:
    h.connect()
    h.run(1)
    stopped = h.agent.stop()
    h.clock.advance(5.9)
    assert not stopped.called
    h.clock.advance(0.2)
    assert stopped.called


def test_stop_with_nothing_running_is_immediate_and_rejects_new_runs(h: Harness) -> None:
    h.connect()
    assert h.agent.stop().called
    assert h.run(1) == [{"type": "rejected", "job": 1, "reason": "worker is shutting down"}]
    assert h.runs.made == []


def test_worker_service_stops_jobs_before_the_connection(h: Harness) -> None:
    order: list[str] = []

    class Connection(Service):
        def startService(self) -> None:
            order.append("connect")

        def stopService(self) -> Deferred[None]:
            order.append("disconnect")
            return succeed(None)

    service = WorkerService(h.agent, Connection())
    service.startService()
    h.connect()
    h.run(1)
    stopped = service.stopService()
    assert order == ["connect"]
    h.runs.last.end(None, signal=15, cancelled=True)
    assert order == ["connect", "disconnect"]
    assert h.link.closes == ["worker stopping"]
    assert stopped.called


# -- the Autobahn layer, in memory ---------------------------------------------------------------------


class RecordingScheduler(WebSocketServerProtocol):
    def __init__(self) -> None:
        super().__init__()
        self.request: Any = None
        self.received: list[dict[str, Any]] = []
        self.closed = False

    def onConnect(self, request: Any) -> None:
        self.request = request

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.received.append(json.loads(payload))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.closed = True

    def send_json(self, message: object) -> None:
        self.sendMessage(json.dumps(message).encode(), isBinary=False)

    def take(self) -> list[dict[str, Any]]:
        received, self.received = self.received, []
        return received


def connect_in_memory(
    agent: WorkerAgent, token: str | None, clock: Clock | None = None
) -> tuple[RecordingScheduler, Any, iosim.IOPump]:
    factory = WorkerClientFactory(agent, "ws://scheduler.test:3000/ws/worker", token=token, reactor=clock)
    client = factory.buildProtocol(None)
    server_factory = WebSocketServerFactory("ws://scheduler.test:3000")
    server_factory.protocol = RecordingScheduler
    server = cast(RecordingScheduler, server_factory.buildProtocol(None))
    client_address = IPv4Address("TCP", "127.0.0.1", 31337)
    server_address = IPv4Address("TCP", "127.0.0.1", 3000)
    pump = iosim.connect(
        server,
        iosim.FakeTransport(server, isServer=True, hostAddress=server_address, peerAddress=client_address),
        client,
        iosim.FakeTransport(client, isServer=False, hostAddress=client_address, peerAddress=server_address),
    )
    pump.flush()
    return server, client, pump


def test_factory_sets_pings_limits_and_the_bearer_header() -> None:
    factory = WorkerClientFactory(Harness().agent, "ws://s:3000/ws/worker", token="t0k")
    assert factory.headers == {"Authorization": "Bearer t0k"}
    assert (factory.autoPingInterval, factory.autoPingTimeout) == (20, 20)
    assert factory.maxMessagePayloadSize > 0
    assert "t0k" not in factory.url
    assert WorkerClientFactory(Harness().agent, "ws://s:3000/ws/worker").headers == {}


def test_protocol_in_memory_handshake_hello_welcome_run_and_errors() -> None:
    h = Harness()
    server, _client, pump = connect_in_memory(h.agent, token="s3cret", clock=h.clock)
    assert server.request.headers["authorization"] == "Bearer s3cret"
    assert server.request.path == "/ws/worker"
    h.clock.advance(0)
    pump.flush()
    (hello,) = server.take()
    assert hello["type"] == "hello" and hello["name"] == "build-1"

    server.send_json(
        {"type": "batch", "messages": [
            {"type": "welcome", "protocol": 2, "name": "build-1", "resume": {}, "drop": [], "clockOffset": 0},
            {"type": "run", "job": 9, "command": "echo hi", "env": {}, "cwd": None, "timeout": None},
            {"type": "run", "job": 10, "command": "echo hi"},
        ]}
    )
    pump.flush()
    assert h.agent.welcomed
    h.clock.advance(STARTED_HOLD)
    pump.flush()
    # Both starts in one frame.
    assert [[m["type"] for m in frame["messages"]] for frame in server.take()] == [["started", "started"]]

    h.runs.made[0].emit("héllo\n")
    h.runs.made[0].end()
    h.clock.advance(0)
    pump.flush()
    assert server.take() == [{"type": "batch", "messages": [output_msg(9, 1, "héllo\n"), finished_msg(9, 1)]}]

    server.sendMessage(b"{nope", isBinary=False)
    server.sendMessage(b"\x00\x01", isBinary=True)
    pump.flush()
    h.clock.advance(0)
    pump.flush()
    errors = [m for frame in server.take() for m in frame.get("messages", [frame])]
    assert [m["type"] for m in errors] == ["error", "error"]
    assert errors[0]["reason"] == "not valid JSON"
    assert errors[1]["reason"] == "messages must be JSON text frames"

    server.send_json({"type": "ack", "jobs": [9]})
    server.sendClose(1000, "bye")
    pump.flush()
    assert server.closed
    assert not h.agent.welcomed
    assert h.agent.job_ids() == [10]


def test_protocol_send_after_close_is_dropped_not_raised() -> None:
    h = Harness()
    server, client, pump = connect_in_memory(h.agent, token=None)
    assert "authorization" not in server.request.headers
    server.sendClose(1000)
    pump.flush()
    client.send("output", job=1, stream="stdout", seq=1, data="x")  # no exception


# -- options -----------------------------------------------------------------------------------------------


def parse(*args: str, env: Mapping[str, str] | None = None) -> tap.Options:
    options = tap.Options()
    saved = os.environ.pop("WORKER_TOKEN", None)
    try:
        if env:
            os.environ.update(env)
        options.parseOptions(list(args))
    finally:
        os.environ.pop("WORKER_TOKEN", None)
        if saved is not None:
            os.environ["WORKER_TOKEN"] = saved
    return options


def test_the_service_drops_token_variables_from_what_jobs_inherit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 20, item 8: ``echo $WORKER_TOKEN`` in a job printed the worker's token."""
    monkeypatch.setenv("WORKER_TOKEN", "worker-token-0123456789")
    for name in ("SCHEDULER_API_TOKEN", "SCHEDULER_TCP_TOKEN", "SCHEDULER_WORKER_TOKEN"):
        monkeypatch.setenv(name, "scheduler-token-0123456789")
    monkeypatch.setenv("SCHEDULER_TOKENS_NOTE", "kept: not a token variable")
    options = tap.Options()
    options.parseOptions(["--workdir", str(tmp_path)])
    assert options["token"] == "worker-token-0123456789"
    tap.makeService(options)
    assert not {"WORKER_TOKEN", "SCHEDULER_API_TOKEN", "SCHEDULER_TCP_TOKEN", "SCHEDULER_WORKER_TOKEN"} & set(os.environ)
    assert os.environ["SCHEDULER_TOKENS_NOTE"] == "kept: not a token variable"


def test_options_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    options = parse()
    assert (options["host"], options["port"], options["secure"]) == ("127.0.0.1", 3000, False)
    assert options["workdir"] == str(tmp_path)
    assert options["labels"] == []
    assert options["slots"] >= 1
    assert options["output-buffer"] == 1024 * 1024
    assert options["kill-grace"] == 5.0
    assert options["token"] is None


def test_options_parse_labels_tls_url_and_relative_workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "jobs").mkdir()
    monkeypatch.chdir(tmp_path)
    options = parse("--url", "wss://sched.example/ws/worker", "--labels", " linux, gpu,,", "--workdir", "jobs")
    assert (options["host"], options["port"], options["secure"]) == ("sched.example", 443, True)
    assert options["labels"] == ["linux", "gpu"]
    assert options["workdir"] == str(tmp_path / "jobs")


def test_token_from_file_is_stripped_and_file_wins_over_env(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("  s3cret\n")
    options = parse("--token-file", str(token_file), "--workdir", str(tmp_path), env={"WORKER_TOKEN": "other"})
    assert options["token"] == "s3cret"
    assert parse("--workdir", str(tmp_path), env={"WORKER_TOKEN": "envtok\n"})["token"] == "envtok"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--token-file", "/nonexistent/token"], "--token-file /nonexistent/token: No such file or directory"),
        (["--url", "http://x/ws"], "--url"),
        (["--url", "ws://x:99999/ws"], "--url"),
        (["--slots", "0"], "--slots"),
        (["--output-buffer", "-1"], "--output-buffer"),
        (["--kill-grace", "-1"], "--kill-grace"),
        (["--kill-grace", "nan"], "--kill-grace"),
        (["--workdir", "/nonexistent/dir"], "--workdir"),
        (["--name", "  "], "--name"),
    ],
)
def test_bad_options_are_usage_errors(args: list[str], message: str) -> None:
    with pytest.raises(usage.UsageError, match=message.replace("(", r"\(")):
        parse(*args)


def test_token_errors_never_show_the_token(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("abc def")
    with pytest.raises(usage.UsageError) as raised:
        parse("--token-file", str(token_file))
    assert "abc" not in str(raised.value)
    token_file.write_text("\n")
    with pytest.raises(usage.UsageError, match="is empty"):
        parse("--token-file", str(token_file))


# -- the real thing -----------------------------------------------------------------------------------------


class SchedulerScript:
    """A stand-in scheduler: welcome, run ``echo``, ack, then a probe."""

    def __init__(self) -> None:
        self.authorization: str | None = None
        self.received: list[dict[str, Any]] = []
        self.done: Deferred[None] = Deferred()
        self.closed: Deferred[None] = Deferred()

    def on_message(self, proto: ScriptedScheduler, message: dict[str, Any]) -> None:
        self.received.append(message)
        kind = message["type"]
        if kind == "hello":
            proto.send_json(
                {"type": "welcome", "protocol": 2, "name": message["name"], "resume": {}, "drop": [], "clockOffset": 0}
            )
            proto.send_json(
                {"type": "run", "job": 7, "command": 'echo "$GREETING"; pwd', "env": {"GREETING": "hi"}, "cwd": None, "timeout": 10}
            )
        elif kind == "finished":
            proto.send_json({"type": "ack", "jobs": [7]})
            # Answered with an error, which proves the ack before it (same
            # ordered stream) has been handled.
            proto.send_json({"type": "cancel", "job": "probe"})
        elif kind == "error" and not self.done.called:
            self.done.callback(None)


class ScriptedScheduler(WebSocketServerProtocol):
    def script(self) -> SchedulerScript:
        script: SchedulerScript = self.factory.script
        return script

    def onConnect(self, request: Any) -> None:
        self.script().authorization = request.headers.get("authorization")

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        frame = json.loads(payload)
        for message in frame["messages"] if frame["type"] == "batch" else [frame]:
            self.script().on_message(self, message)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.script().closed.called:
            self.script().closed.callback(None)

    def send_json(self, message: object) -> None:
        self.sendMessage(json.dumps(message).encode(), isBinary=False)


class SchedulerFactory(WebSocketServerFactory):
    protocol = ScriptedScheduler

    def __init__(self, script: SchedulerScript) -> None:
        super().__init__()
        self.script = script


def _with_timeout(d: Deferred[Any]) -> Deferred[Any]:
    return d.addTimeout(SAFETY_TIMEOUT, reactor)


@pytest_twisted.ensureDeferred
async def test_real_worker_runs_echo_for_a_scheduler_on_loopback(
    tmp_path: Path, logged: list[dict[str, Any]]
) -> None:
    script = SchedulerScript()
    server_factory = SchedulerFactory(script)
    port = reactor.listenTCP(0, server_factory, interface="127.0.0.1")
    try:
        token_file = tmp_path / "token"
        token_file.write_text("top-s3cret-token\n")
        options = parse(
            "--url",
            f"ws://127.0.0.1:{port.getHost().port}/ws/worker",
            "--name",
            "loopback-1",
            "--labels",
            "test",
            "--slots",
            "1",
            "--token-file",
            str(token_file),
            "--workdir",
            str(tmp_path),
        )
        service = cast(WorkerService, tap.makeService(options))
        service.startService()
        try:
            await _with_timeout(script.done)
            assert service.agent.job_ids() == []
        finally:
            await _with_timeout(service.stopService())
            await _with_timeout(script.closed)
    finally:
        await port.stopListening()

    assert script.authorization == "Bearer top-s3cret-token"
    kinds = [m["type"] for m in script.received]
    assert kinds[0] == "hello" and kinds[-2:] == ["finished", "error"]
    # A job this short is usually reported by its finished alone; on a
    # loaded machine it may outlast the started hold.
    assert set(kinds[1:-2]) <= {"started", "output"}
    hello = script.received[0]
    assert (hello["name"], hello["labels"], hello["slots"], hello["jobs"]) == ("loopback-1", ["test"], 1, [])
    finished = script.received[-2]
    outputs = [m for m in script.received if m["type"] == "output"] + finished.get("output", [])
    assert [m["seq"] for m in outputs] == list(range(1, len(outputs) + 1))
    assert "".join(m["data"] for m in outputs) == f"hi\n{tmp_path}\n"
    assert (finished["exitCode"], finished["signal"], finished["seq"]) == (0, None, len(outputs))
    assert finished["finishedAt"] >= finished["startedAt"]
    assert not any("top-s3cret-token" in formatEvent(e) for e in logged)
