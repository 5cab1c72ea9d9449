"""Tests for worker.runner.

Real processes run on the real reactor; pure timer and buffering logic is
driven with ``task.Clock`` by calling the ProcessProtocol methods directly, so
those tests are deterministic and instant.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet import reactor as _global_reactor
from twisted.internet import task
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.python.failure import Failure

from worker import runner, spawn
from worker.runner import JobRun, RunnerReactor, RunResult

# The reactor module is not statically typed as a reactor.
reactor = cast(RunnerReactor, _global_reactor)

# Upper bound for any real-process test: a bug must fail the test, not hang it.
SAFETY_TIMEOUT = 10.0


class Output:
    """Collects on_output calls, keeping each chunk for size assertions."""

    def __init__(self) -> None:
        self.chunks: list[tuple[str, str]] = []

    def __call__(self, stream: str, text: str) -> None:
        self.chunks.append((stream, text))

    def text(self, stream: str) -> str:
        return "".join(t for s, t in self.chunks if s == stream)

    def sizes(self, stream: str) -> list[int]:
        return [len(t) for s, t in self.chunks if s == stream]


async def run_job(command: str, **kwargs: Any) -> tuple[RunResult, Output, JobRun]:
    out = Output()
    run = JobRun(reactor, command, out, **kwargs)
    return await finish(run), out, run


async def finish(run: JobRun) -> RunResult:
    safety = reactor.callLater(SAFETY_TIMEOUT, _last_resort, run)
    try:
        run.start()
        return await run.finished
    finally:
        if safety.active():
            safety.cancel()


def _last_resort(run: JobRun) -> None:
    # If the runner's own killing is what broke, cancel() alone would leave
    # the test hanging on a live group; SIGKILL it so the test fails instead.
    run.cancel()
    if run.pid is not None and not run.finished.called:
        with contextlib.suppress(OSError):
            os.killpg(run.pid, signal.SIGKILL)


def live_group_members(pgid: int) -> list[int]:
    """Pids in process group ``pgid`` that are not zombies.

    ``os.killpg(pgid, 0)`` would be the natural check, but it succeeds while
    an orphaned member is a zombie waiting for PID 1 to reap it, which in a
    container can take seconds.  A zombie has already released everything.
    """
    live = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # exited while we were looking
        # comm may contain spaces and parens; the fields after the last ")"
        # are fixed: state, ppid, pgrp, ...
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            live.append(int(entry))
    return live


async def wait_group_gone(pgid: int) -> list[int]:
    """Live members of the group, allowing a moment for dying ones to exit.

    Pipes close during exit slightly before the task turns into a zombie, so
    processEnded can beat the final state change by a hair.
    """
    for _ in range(50):
        members = live_group_members(pgid)
        if not members:
            return members
        await task.deferLater(_global_reactor, 0.02, lambda: None)
    return live_group_members(pgid)


needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")


# -- real processes -----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_stdout_and_stderr_captured() -> None:
    result, out, run = await run_job("echo out; echo err >&2")
    assert out.text("stdout") == "out\n"
    assert out.text("stderr") == "err\n"
    assert result.exit_code == 0
    assert result.signal is None
    assert not result.timed_out and not result.cancelled
    assert result.finished_at >= result.started_at
    assert run.pid is not None


@pytest_twisted.ensureDeferred
async def test_exit_code_reported() -> None:
    result, _, _ = await run_job("exit 3")
    assert result.exit_code == 3
    assert result.signal is None


@pytest_twisted.ensureDeferred
async def test_signal_reported() -> None:
    result, _, _ = await run_job("kill -TERM $$")
    assert result.exit_code is None
    assert result.signal == signal.SIGTERM
    assert not result.timed_out and not result.cancelled


@pytest.mark.parametrize("launcher", ["posix_spawn", "setsid", "python-fallback"])
@pytest_twisted.ensureDeferred
async def test_pid_is_process_group_and_session_leader(
    launcher: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if launcher == "posix_spawn":
        assert spawn._DIRECT, "this Twisted lacks the helpers _SessionProcess uses"
        # With no fallback launcher, only _SessionProcess can start it.
        monkeypatch.setattr(spawn, "_LAUNCH_PREFIX", ())
    else:
        monkeypatch.setattr(spawn, "_DIRECT", False)
    if launcher == "setsid":
        if shutil.which("setsid") is None:
            pytest.skip("util-linux setsid not installed")
        assert spawn._LAUNCH_PREFIX == (shutil.which("setsid"),)
    elif launcher == "python-fallback":
        monkeypatch.setattr(
            spawn, "_LAUNCH_PREFIX", spawn._launch_prefix(None, sys.executable)
        )

    seen: list[tuple[int, int, int]] = []
    run: JobRun

    def on_output(stream: str, text: str) -> None:
        # By the time "ready" is printed, setsid (or the shim) has run.
        if stream == "stdout" and "ready" in text and not seen:
            assert run.pid is not None
            seen.append((run.pid, os.getpgid(run.pid), os.getsid(run.pid)))
            run.cancel()

    run = JobRun(reactor, "echo ready; sleep 100", on_output)
    result = await finish(run)
    assert seen, "command never printed ready"
    pid, pgid, sid = seen[0]
    assert pgid == pid
    assert sid == pid
    assert pgid != os.getpgid(0)
    assert result.cancelled
    assert result.signal == signal.SIGTERM


@needs_proc
@pytest_twisted.ensureDeferred
async def test_timeout_kills_whole_process_group() -> None:
    # The background sleep holds the pipes, so the run only ends once it too
    # is dead; its pid is printed so we can check it by name as well.
    result, out, run = await run_job(
        "sleep 100 & echo $!; sleep 100", timeout=0.5, kill_grace=0.5
    )
    assert result.timed_out
    assert not result.cancelled
    assert result.exit_code is None
    assert result.signal == signal.SIGTERM
    assert result.finished_at - result.started_at >= 0.45
    assert run.pid is not None
    assert await wait_group_gone(run.pid) == []
    background = int(out.text("stdout").split()[0])
    assert background not in live_group_members(run.pid)


@needs_proc
@pytest_twisted.ensureDeferred
async def test_sigterm_ignored_gets_sigkill_after_grace() -> None:
    result, _, run = await run_job(
        "trap '' TERM; sleep 100 & sleep 100", timeout=0.5, kill_grace=0.5
    )
    assert result.timed_out
    assert result.exit_code is None
    assert result.signal == signal.SIGKILL
    assert result.finished_at - result.started_at >= 0.95
    assert run.pid is not None
    assert await wait_group_gone(run.pid) == []


@pytest_twisted.ensureDeferred
async def test_cancel_is_idempotent() -> None:
    run: JobRun

    def on_output(stream: str, text: str) -> None:
        run.cancel()
        run.cancel()

    run = JobRun(reactor, "echo ready; sleep 100", on_output, kill_grace=5.0)
    result = await finish(run)
    assert result.cancelled
    assert not result.timed_out
    assert result.signal == signal.SIGTERM
    # Well inside kill_grace: SIGTERM did the job, SIGKILL was never needed.
    assert result.finished_at - result.started_at < 4.0
    run.cancel()  # after the end: a no-op, and finished does not fire again
    assert run.finished.called


@pytest_twisted.ensureDeferred
async def test_cancel_right_after_start() -> None:
    # The child may not have reached setsid() yet, so there is no group to
    # signal; the runner must still stop it promptly.
    out = Output()
    run = JobRun(reactor, "sleep 100", out, kill_grace=5.0)
    run.start()
    run.cancel()
    result = await run.finished
    assert result.cancelled
    assert result.signal == signal.SIGTERM
    assert result.finished_at - result.started_at < 4.0


def test_cancel_before_start_finishes_immediately() -> None:
    clock = task.Clock()
    out = Output()
    run = JobRun(cast(RunnerReactor, clock), "echo never", out)
    run.cancel()
    result = _result(run)
    assert result.cancelled
    assert result.exit_code is None and result.signal is None
    run.start()  # too late: nothing is spawned
    assert run.pid is None
    assert out.chunks == []


@pytest_twisted.ensureDeferred
async def test_large_output_complete_and_coalesced() -> None:
    reads = 0

    class CountingRun(JobRun):
        def childDataReceived(self, childFD: int, data: bytes) -> None:
            nonlocal reads
            reads += 1
            super().childDataReceived(childFD, data)

    size = 200 * 1024
    max_chunk = 32 * 1024
    out = Output()
    run = CountingRun(
        reactor,
        f"head -c {size} /dev/zero | tr '\\0' x",
        out,
        max_chunk=max_chunk,
    )
    result = await finish(run)
    assert result.exit_code == 0
    text = out.text("stdout")
    assert len(text) == size
    assert set(text) == {"x"}
    sizes = out.sizes("stdout")
    assert max(sizes) <= max_chunk
    assert max_chunk in sizes  # the size trigger, not only the timer, flushed
    assert len(sizes) * 3 <= reads, (len(sizes), reads)


@pytest_twisted.ensureDeferred
async def test_bad_cwd_exits_127_with_message() -> None:
    result, out, run = await run_job("echo hi", cwd="/nonexistent/dir/for/test")
    assert result.exit_code == 127
    assert result.signal is None
    assert "/nonexistent/dir/for/test" in out.text("stderr")
    assert out.text("stdout") == ""
    assert run.pid is None


@pytest_twisted.ensureDeferred
async def test_cwd_is_applied(tmp_path: Path) -> None:
    # Spaces, "$" and a leading "-" must reach `cd` literally.
    workdir = tmp_path / "-dir with $HOME and 'quotes'"
    workdir.mkdir()
    result, out, _ = await run_job("pwd; echo $$ $0", cwd=str(workdir))
    assert result.exit_code == 0
    lines = out.text("stdout").splitlines()
    assert os.path.realpath(lines[0]) == os.path.realpath(workdir)
    assert lines[1].split()[1] == "/bin/sh"


@pytest_twisted.ensureDeferred
async def test_job_starts_with_no_signal_ignored() -> None:
    # Python ignores SIGPIPE; `yes | head -1` must not see EPIPE forever.
    result, out, _ = await run_job("grep SigIgn /proc/self/status; yes | head -n 1")
    assert result.exit_code == 0
    label, mask, line = out.text("stdout").split()
    # Signals 1-31; glibc's posix_spawn leaves its own 32 and 33 as they are.
    assert (label, int(mask, 16) & 0x7FFFFFFF, line) == ("SigIgn:", 0, "y")


@pytest_twisted.ensureDeferred
async def test_unspawnable_command_exits_127() -> None:
    # posix_spawn rejects a NUL in an argument; start() must not raise.
    result, out, _ = await run_job("echo a\0b")
    assert result.exit_code == 127
    assert "failed to start job" in out.text("stderr")


@pytest_twisted.ensureDeferred
async def test_no_launcher_exits_127(monkeypatch: pytest.MonkeyPatch) -> None:
    assert spawn._launch_prefix(None, None) == ()
    monkeypatch.setattr(spawn, "_DIRECT", False)
    monkeypatch.setattr(spawn, "_LAUNCH_PREFIX", ())
    result, out, _ = await run_job("echo hi")
    assert result.exit_code == 127
    assert "setsid" in out.text("stderr")


@pytest_twisted.ensureDeferred
async def test_env_is_merged_over_worker_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RUNNER_TEST_BASE", "base")
    monkeypatch.setenv("RUNNER_TEST_OVERRIDDEN", "worker")
    result, out, _ = await run_job(
        'printf "%s %s %s" "$RUNNER_TEST_BASE" "$RUNNER_TEST_OVERRIDDEN" "$RUNNER_TEST_JOB"',
        env={"RUNNER_TEST_JOB": "job", "RUNNER_TEST_OVERRIDDEN": "job-wins"},
    )
    assert result.exit_code == 0
    assert out.text("stdout") == "base job-wins job"


@pytest_twisted.ensureDeferred
async def test_stdin_reads_nothing() -> None:
    result, out, _ = await run_job("cat; echo done", timeout=5)
    assert result.exit_code == 0
    assert not result.timed_out
    assert out.text("stdout") == "done\n"


@pytest_twisted.ensureDeferred
async def test_failing_sink_does_not_break_the_run() -> None:
    calls = 0

    def bad_sink(stream: str, text: str) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("sink is broken")

    run = JobRun(reactor, "echo a; echo b >&2", bad_sink)
    result = await finish(run)
    assert result.exit_code == 0
    assert calls >= 2


# -- Clock-driven: buffering and timers ---------------------------------------


def _result(run: JobRun) -> RunResult:
    results: list[RunResult] = []
    run.finished.addCallback(results.append)
    assert results, "finished has not fired"
    return results[0]


def _clock_run(**kwargs: Any) -> tuple[task.Clock, Output, JobRun]:
    clock = task.Clock()
    out = Output()
    run = JobRun(cast(RunnerReactor, clock), "unused", out, **kwargs)
    return clock, out, run


def test_output_is_coalesced_until_flush_interval() -> None:
    clock, out, run = _clock_run(flush_interval=0.05)
    for _ in range(100):
        run.childDataReceived(1, b"ab")
    run.childDataReceived(2, b"oops")
    assert out.chunks == []
    assert len(clock.getDelayedCalls()) == 1  # one timer for both streams
    clock.advance(0.049)
    assert out.chunks == []
    clock.advance(0.001)
    assert out.chunks == [("stdout", "ab" * 100), ("stderr", "oops")]
    assert clock.getDelayedCalls() == []
    run.childDataReceived(3, b"ignored: not an output fd")
    assert clock.getDelayedCalls() == []


def test_max_chunk_flushes_without_waiting_for_timer() -> None:
    clock, out, run = _clock_run(max_chunk=4096)
    for _ in range(10):
        run.childDataReceived(1, b"y" * 1000)
    assert out.sizes("stdout") == [4096, 4096]
    clock.advance(0.05)
    assert out.sizes("stdout") == [4096, 4096, 10000 - 8192]
    assert out.text("stdout") == "y" * 10000


def test_split_utf8_character_decoded() -> None:
    euro = "€".encode()
    assert len(euro) == 3
    clock, out, run = _clock_run()
    # Split across reads within one flush window...
    run.childDataReceived(1, b"price: " + euro[:1])
    run.childDataReceived(1, euro[1:2])
    run.childDataReceived(1, euro[2:] + b"!")
    clock.advance(0.05)
    assert out.text("stdout") == "price: €!"
    # ...and across a flush: the partial character waits for its tail.
    run.childDataReceived(1, b"x" + euro[:2])
    clock.advance(0.05)
    run.childDataReceived(1, euro[2:])
    clock.advance(0.05)
    assert out.text("stdout") == "price: €!x€"
    assert "\ufffd" not in out.text("stdout")


def test_max_chunk_counts_bytes_held_by_decoder() -> None:
    _, out, run = _clock_run(max_chunk=4)
    text = "€a€bc€"
    for byte in text.encode():
        run.childDataReceived(1, bytes([byte]))
    run.processEnded(Failure(ProcessDone(0)))
    assert out.text("stdout") == text
    assert all(len(t.encode()) <= 4 for s, t in out.chunks)


def test_truncated_character_at_exit_is_replaced_not_dropped() -> None:
    _, out, run = _clock_run()
    run.childDataReceived(2, b"end" + "€".encode()[:2])
    run.processEnded(Failure(ProcessTerminated(exitCode=1)))
    assert out.text("stderr") == "end\ufffd"
    assert _result(run).exit_code == 1


def test_everything_flushed_before_finished_fires() -> None:
    clock, out, run = _clock_run()
    delivered_at_finish: list[str] = []

    def on_finished(result: RunResult) -> RunResult:
        delivered_at_finish.append(out.text("stdout"))
        return result

    run.finished.addCallback(on_finished)
    run.childDataReceived(1, b"last words")
    run.processEnded(Failure(ProcessDone(0)))
    assert delivered_at_finish == ["last words"]
    assert clock.getDelayedCalls() == []  # the flush timer was cancelled
    result = _result(run)
    assert result.exit_code == 0 and result.signal is None
    # Late data or a second processEnded must not produce anything.
    run.childDataReceived(1, b"after the end")
    run.processEnded(Failure(ProcessDone(0)))
    clock.advance(1)
    assert out.text("stdout") == "last words"


def test_invalid_arguments_rejected() -> None:
    clock = cast(RunnerReactor, task.Clock())
    with pytest.raises(ValueError):
        JobRun(clock, "x", Output(), max_chunk=3)
    with pytest.raises(ValueError):
        JobRun(clock, "x", Output(), timeout=-1)


class _FakeTransport:
    def __init__(self, pid: int) -> None:
        self.pid: int | None = pid


class _SpawnClock(task.Clock):
    """A Clock that pretends to spawn, for testing kill timing without processes."""

    def __init__(self) -> None:
        super().__init__()
        self.transport = _FakeTransport(4242)
        self.spawned: list[dict[str, Any]] = []

    def spawnProcess(
        self,
        processProtocol: Any,
        executable: str,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        path: str | None = None,
        uid: int | None = None,
        gid: int | None = None,
        usePTY: bool = False,
        childFDs: Mapping[int, str | int] | None = None,
    ) -> _FakeTransport:
        self.spawned.append(
            {
                "executable": executable,
                "args": list(args),
                "env": env,
                "path": path,
                "childFDs": childFDs,
            }
        )
        processProtocol.makeConnection(self.transport)
        return self.transport


@pytest.fixture
def signals(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, int]]:
    """Record killpg/kill calls instead of sending anything."""
    sent: list[tuple[str, int, int]] = []
    monkeypatch.setattr(
        os, "killpg", lambda pid, sig: sent.append(("killpg", pid, sig))
    )
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append(("kill", pid, sig)))
    return sent


def test_spawn_arguments() -> None:
    clock = _SpawnClock()
    run = JobRun(cast(RunnerReactor, clock), "echo hi", Output(), env={"A": "1"})
    run.start()
    (call,) = clock.spawned
    # Not a POSIX reactor, so the launcher-prefix fallback.
    assert call["args"] == [*spawn._LAUNCH_PREFIX, "/bin/sh", "-c", "echo hi"]
    assert call["executable"] == call["args"][0]
    stdin = call["childFDs"][0]
    assert os.path.samefile(f"/proc/self/fd/{stdin}", os.devnull)
    assert (call["childFDs"][1], call["childFDs"][2]) == ("r", "r")
    assert call["path"] is None  # cwd goes through the shell, keeping posix_spawn
    assert call["env"]["A"] == "1"
    assert call["env"]["PATH"] == os.environ["PATH"]
    assert run.pid == 4242
    assert clock.getDelayedCalls() == []  # no timeout requested, no timer


@pytest.mark.parametrize("cwd", [None, ".", os.getcwd()])
def test_job_in_own_directory_needs_no_cd(cwd: str | None) -> None:
    clock = _SpawnClock()
    JobRun(cast(RunnerReactor, clock), "echo hi", Output(), cwd=cwd).start()
    (call,) = clock.spawned
    assert call["args"][-3:] == ["/bin/sh", "-c", "echo hi"]


def test_job_elsewhere_gets_cd_wrapper(tmp_path: Path) -> None:
    clock = _SpawnClock()
    JobRun(cast(RunnerReactor, clock), "echo hi", Output(), cwd=str(tmp_path)).start()
    (call,) = clock.spawned
    assert call["args"][-6:] == ["/bin/sh", "-c", runner._CD_THEN_RUN, "/bin/sh", str(tmp_path), "echo hi"]


def test_timeout_sends_sigterm_then_sigkill(
    signals: list[tuple[str, int, int]],
) -> None:
    clock = _SpawnClock()
    run = JobRun(cast(RunnerReactor, clock), "x", Output(), timeout=10, kill_grace=5)
    run.start()
    clock.advance(9.9)
    assert signals == []
    clock.advance(0.1)
    assert signals == [("killpg", 4242, signal.SIGTERM)]
    run.cancel()  # already terminating: no second SIGTERM, and it stays a timeout
    clock.advance(4.9)
    assert signals == [("killpg", 4242, signal.SIGTERM)]
    clock.advance(0.1)
    assert signals[1:] == [("killpg", 4242, signal.SIGKILL)]
    run.processEnded(Failure(ProcessTerminated(signal=signal.SIGKILL)))
    result = _result(run)
    assert result.timed_out and not result.cancelled  # the first of the two decides
    assert result.signal == signal.SIGKILL and result.exit_code is None
    assert result.finished_at - result.started_at == pytest.approx(15)


def test_a_cancel_before_the_timeout_stays_a_cancel(signals: list[tuple[str, int, int]]) -> None:
    clock = _SpawnClock()
    run = JobRun(cast(RunnerReactor, clock), "x", Output(), timeout=10, kill_grace=5)
    run.start()
    clock.advance(9)
    run.cancel()
    clock.advance(1)  # the timeout falls due while the cancel's SIGTERM works
    run.processEnded(Failure(ProcessTerminated(signal=signal.SIGTERM)))
    result = _result(run)
    assert result.cancelled and not result.timed_out
    assert signals == [("killpg", 4242, signal.SIGTERM)]


def test_no_signal_after_process_ended(signals: list[tuple[str, int, int]]) -> None:
    clock = _SpawnClock()
    run = JobRun(cast(RunnerReactor, clock), "x", Output(), timeout=10, kill_grace=5)
    run.start()
    clock.advance(10)
    run.processEnded(Failure(ProcessTerminated(signal=signal.SIGTERM)))
    assert clock.getDelayedCalls() == []  # the SIGKILL timer is gone
    clock.advance(100)
    run.cancel()
    # The pgid may have been reused by now: only the one SIGTERM, ever.
    assert signals == [("killpg", 4242, signal.SIGTERM)]
    assert not _result(run).cancelled


def test_exit_before_timeout_cancels_timer(signals: list[tuple[str, int, int]]) -> None:
    clock = _SpawnClock()
    run = JobRun(cast(RunnerReactor, clock), "x", Output(), timeout=10)
    run.start()
    clock.advance(1)
    run.processEnded(Failure(ProcessDone(0)))
    assert clock.getDelayedCalls() == []
    clock.advance(100)
    assert signals == []
    assert not _result(run).timed_out


def test_missing_group_falls_back_to_pid_until_reaped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent: list[tuple[str, int, int]] = []

    def no_group(pid: int, sig: int) -> None:
        raise ProcessLookupError

    monkeypatch.setattr(os, "killpg", no_group)
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append(("kill", pid, sig)))
    clock = _SpawnClock()
    run = JobRun(cast(RunnerReactor, clock), "x", Output(), kill_grace=5)
    run.start()
    run.cancel()
    # Before setsid() the child is alone and still ours: signal it directly.
    assert sent == [("kill", 4242, signal.SIGTERM)]
    # Once reaped its pid may be recycled, so the direct fallback stops.
    run.processExited(Failure(ProcessTerminated(signal=signal.SIGTERM)))
    clock.advance(5)
    assert sent == [("kill", 4242, signal.SIGTERM)]
