"""The worker agent: the jobs, and what to tell the scheduler about them.

The worker side of docs/protocol.md.  ``WorkerAgent`` holds the jobs, their
output buffers (``worker.output_buffer``) and the slots.  It sees the
connection only as a ``Link`` (``send(type, **fields)`` and
``close(reason)``) and gets frames from it (``receive``), so tests drive it
synchronously with a fake link, a fake JobRun factory and ``task.Clock``.
The Autobahn wire is ``worker.connection``; shutdown order is
``worker.service``.
"""

from __future__ import annotations

import os.path
import secrets
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from scheduler.worker_messages import (
    PROTOCOL_VERSION,
    STARTED_HOLD,
    BadMessage,
    Link,
    OutputMask,
    as_entry,
    as_message,
    decode,
    error_fields,
    parse_ack,
    parse_cancel,
    parse_drop,
    parse_error,
    parse_refused,
    parse_run,
    parse_welcome,
    unbatch,
)
from worker.output_buffer import DEFAULT_OUTPUT_BUFFER, Chunk, OutputBuffer
from worker.runner import JobRun, OutputSink, RunnerReactor, RunResult

__all__ = ["RunFactory", "RunHandle", "WorkerAgent", "job_runs"]

_agent_log = Logger(namespace="worker.agent")

# Until the welcome, the protocol allows the worker to send nothing but its
# hello, so these are the only messages it acts on before then.
_HANDSHAKE_TYPES = frozenset({"welcome", "refused"})
# A scheduler clock further off than this is worth a warning in our log.
_CLOCK_WARNING = 1.0
# Characters of output a finished may carry; past this, started and the
# output go out as they are.  A chunk is at most 64 KiB, so output over
# this is already several messages.
_MAX_INLINE_OUTPUT = 64 * 1024


# -- collaborators ------------------------------------------------------------


class RunHandle(Protocol):
    """What the agent uses of a JobRun (so tests can hand it a fake)."""

    finished: Deferred[RunResult]
    pid: int | None

    def start(self) -> None: ...

    def cancel(self) -> None: ...


class RunFactory(Protocol):
    def __call__(
        self,
        command: str,
        on_output: OutputSink,
        *,
        env: Mapping[str, str] | None,
        cwd: str | None,
        timeout: float | None,
        kill_grace: float,
    ) -> RunHandle: ...


def job_runs(reactor: RunnerReactor) -> RunFactory:
    """The production RunFactory: real JobRuns on ``reactor``."""

    def make(
        command: str,
        on_output: OutputSink,
        *,
        env: Mapping[str, str] | None,
        cwd: str | None,
        timeout: float | None,
        kill_grace: float,
    ) -> RunHandle:
        return JobRun(
            reactor, command, on_output, env=env, cwd=cwd, timeout=timeout, kill_grace=kill_grace
        )

    return make


# -- per-job state --------------------------------------------------------------


@dataclass(eq=False)
class _Job:
    id: int
    output: OutputBuffer
    run: RunHandle | None = None
    seq: int = 0  # last output chunk produced
    pid: int | None = None  # once started
    started_at: float | None = None
    start_call: IDelayedCall | None = None  # a start on its second, pending
    # While ``started`` is held back (STARTED_HOLD): the call that sends it,
    # and the chunks that wait with it.  A job that ends first sends them in
    # its ``finished``.
    started_call: IDelayedCall | None = None
    held: list[Chunk] | None = None
    result: RunResult | None = None
    # Whether the scheduler on the current connection wants to hear about
    # this job; otherwise sends for it only go to the buffer.
    live: bool = False
    # Dropped by the scheduler while its process still runs: it keeps its
    # slot until it exits, but nothing about it is kept or sent.
    forgotten: bool = False
    # The run's secrets, masked before the output is buffered or sent.
    mask: OutputMask | None = None


def _outcome(result: RunResult) -> str:
    """How a run ended, for the log: "exit code 0", "timed out (killed by SIGTERM)"..."""
    if result.signal is not None:
        ending = f"killed by {_signal_name(result.signal)}"
    else:
        ending = f"exit code {result.exit_code}"
    if result.timed_out:
        return f"timed out ({ending})"
    if result.cancelled:
        return f"cancelled ({ending})"
    return ending


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


# -- the domain object ----------------------------------------------------------


class WorkerAgent:
    """Runs the scheduler's jobs and keeps what it owes the scheduler.

    Knows nothing of WebSockets: the wire layer calls ``connected``,
    ``receive``/``malformed`` and ``disconnected``, and the agent answers
    through the ``Link`` it was given.  Jobs outlive connections; anything
    sent for a job stays in its buffer until the scheduler's ``ack``.
    """

    def __init__(
        self,
        clock: IReactorTime,
        runs: RunFactory,
        *,
        name: str,
        labels: Sequence[str] = (),
        slots: int,
        workdir: str,
        kill_grace: float = 5.0,
        output_buffer: int = DEFAULT_OUTPUT_BUFFER,
        welcome_timeout: float = 30.0,
        on_welcome: Callable[[], object] = lambda: None,
        instance: str | None = None,
    ) -> None:
        self._clock = clock
        # Sent in every hello: the scheduler lets the same process take its
        # name back at once after a dead connection, and tells a second
        # process started under the same name from it.
        self.instance = instance or secrets.token_hex(8)
        self._runs = runs
        self._name = name
        self._labels = list(labels)
        self._slots = slots
        self._workdir = workdir
        self._kill_grace = kill_grace
        self._output_buffer = output_buffer
        self._welcome_timeout = welcome_timeout
        self._on_welcome = on_welcome

        self._jobs: dict[int, _Job] = {}
        self._running: set[_Job] = set()  # includes forgotten jobs still alive
        self._link: Link | None = None
        self._welcomed = False
        self._welcome_call: IDelayedCall | None = None
        self._stopping = False
        self._idle_waiters: list[Deferred[None]] = []
        self._give_up_call: IDelayedCall | None = None

        self._handlers: Mapping[str, Callable[[dict[str, Any]], None]] = {
            "welcome": self._on_welcome_message,
            "refused": self._on_refused,
            "run": self._on_run,
            "cancel": self._on_cancel,
            "ack": self._on_ack,
            "drop": self._on_drop,
            "error": self._on_error,
        }

    # -- introspection (tests, logs) ----------------------------------------

    @property
    def running(self) -> int:
        """Slots in use: JobRuns whose process has not ended."""
        return len(self._running)

    @property
    def welcomed(self) -> bool:
        return self._welcomed

    def job_ids(self) -> list[int]:
        """Jobs the agent still runs or holds a result for."""
        return sorted(self._jobs)

    # -- connection events ----------------------------------------------------

    def connected(self, link: Link) -> None:
        """A connection is open: introduce ourselves and wait for the welcome."""
        self._end_session()
        self._link = link
        link.send(
            "hello",
            protocol=PROTOCOL_VERSION,
            name=self._name,
            labels=list(self._labels),
            slots=self._slots,
            instance=self.instance,
            time=self._clock.seconds(),
            jobs=[
                {"job": job.id, "state": "running" if job.result is None else "finished", "seq": job.seq}
                for job in sorted(self._jobs.values(), key=lambda j: j.id)
            ],
        )
        self._welcome_call = self._clock.callLater(self._welcome_timeout, self._welcome_overdue)

    def disconnected(self, link: Link) -> None:
        # A late notice from an older connection must not end the current one.
        if link is self._link:
            self._end_session()

    def receive(self, payload: str | bytes, *, binary: bool = False) -> None:
        """One frame from the scheduler.  Never raises."""
        received: object = None
        try:
            received = decode(payload, binary=binary)
            entries = unbatch(as_message(received))
        except BadMessage as e:
            self.malformed(str(e), received)
            return
        for entry in entries:
            try:
                message = as_entry(entry)
            except BadMessage as e:
                self.malformed(str(e), entry)
                continue
            self._handle(message)

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if not self._welcomed and kind not in _HANDSHAKE_TYPES:
            _agent_log.warn("ignoring {type!r} from the scheduler before its welcome", type=kind)
            return
        handler = self._handlers.get(kind)
        if handler is None:
            _agent_log.info("ignoring unknown message type {type!r} from the scheduler", type=kind)
            return
        try:
            handler(message)
        except BadMessage as e:
            self.malformed(str(e), message)
        except Exception:  # logged with its traceback; one message must not end the agent
            _agent_log.failure("handling {type!r} from the scheduler failed", type=kind)

    def malformed(self, reason: str, received: object = None) -> None:
        """Answer a message we cannot use with ``error``."""
        _agent_log.warn("malformed message from the scheduler: {reason}", reason=reason)
        if self._link is None or not self._welcomed:
            # Until the welcome the worker may send nothing but its hello.
            return
        self._link.send("error", **error_fields(reason, received))

    # -- shutdown ---------------------------------------------------------------

    def stop(self) -> Deferred[None]:
        """Cancel every running job; fire when they ended or after kill_grace + 1 s.

        New runs are rejected from now on.  The wait is bounded because a
        process stuck in uninterruptible sleep ignores even SIGKILL, and the
        worker must still be able to exit.
        """
        self._stopping = True
        for job in list(self._running):
            if job.run is not None:
                job.run.cancel()
        if not self._running:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle_waiters.append(waiter)
        if self._give_up_call is None:
            self._give_up_call = self._clock.callLater(self._kill_grace + 1.0, self._give_up_waiting)
        return waiter

    def close_connection(self, reason: str) -> None:
        """Start a clean WebSocket close, so the scheduler sees a goodbye."""
        if self._link is not None:
            self._link.close(reason)

    # -- message handlers -------------------------------------------------------

    def _on_welcome_message(self, message: dict[str, Any]) -> None:
        link = self._link
        if link is None:
            return
        if self._welcomed:
            _agent_log.warn("ignoring a second welcome on one connection")
            return
        try:
            welcome = parse_welcome(message)
        except BadMessage as e:
            # Without a usable welcome the session cannot start; reconnecting
            # (with backoff) is the only way forward.
            _agent_log.error("malformed welcome from the scheduler: {reason}", reason=str(e))
            link.send("error", **error_fields(str(e), message))
            link.close("malformed welcome")
            return
        resume, drop = welcome.resume, welcome.drop
        self._welcomed = True
        self._cancel_welcome_call()
        self._on_welcome()
        if abs(welcome.clock_offset) > _CLOCK_WARNING:
            _agent_log.warn(
                "this machine's clock is {seconds:.3f} s {direction} the scheduler's; the scheduler "
                "corrects the job times we report, but check time synchronisation here",
                seconds=abs(welcome.clock_offset),
                direction="behind" if welcome.clock_offset > 0 else "ahead of",
            )
        _agent_log.info(
            "welcomed by the scheduler: resuming {resume} job(s), dropping {drop}",
            resume=len(resume),
            drop=len(drop),
        )
        # Drop first: a job in both lists is one the scheduler has no use for.
        for job_id in drop:
            self._forget(job_id)
        for job_id, seq in sorted(resume.items()):
            job = self._jobs.get(job_id)
            if job is None:
                _agent_log.warn("welcome resumes job {job}, which this worker does not have", job=job_id)
                continue
            job.live = True
            for chunk in job.output.after(seq):
                link.send("output", job=job.id, stream=chunk.stream, seq=chunk.seq, data=chunk.data)
            if job.result is not None:
                link.send("finished", **self._finished_fields(job))
        for job in self._jobs.values():
            if not job.live:
                # Neither resumed nor dropped: keep it and ask again in the
                # next hello rather than guess what the scheduler wants.
                _agent_log.warn("welcome neither resumes nor drops job {job}; holding it", job=job.id)

    def _on_refused(self, message: dict[str, Any]) -> None:
        refused = parse_refused(message)
        # Error level: a refused worker does no work until someone acts.  We
        # keep retrying (with growing backoff, as no welcome resets it)
        # because a scheduler upgrade may fix it.
        _agent_log.error(
            "the scheduler refused this worker ({name}, instance {instance}): {reason}",
            name=self._name,
            instance=self.instance,
            reason=refused.reason,
        )
        if self._link is not None:
            self._link.close("refused")

    def _on_run(self, message: dict[str, Any]) -> None:
        order = parse_run(message)
        job_id = order.job
        if job_id in self._jobs:
            _agent_log.warn("ignoring run for job {job}: this worker already has it", job=job_id)
            return
        if self._stopping:
            self._send("rejected", job=job_id, reason="worker is shutting down")
            return
        if len(self._running) >= self._slots:
            self._send("rejected", job=job_id, reason="no free slot")
            return

        job = _Job(job_id, OutputBuffer(self._output_buffer), live=True)
        if order.mask:
            job.mask = OutputMask(order.mask)
        # A relative cwd is relative to --workdir, not to wherever twistd
        # happened to be started.
        directory = self._workdir if order.cwd is None else os.path.join(self._workdir, order.cwd)
        run = self._runs(
            order.command,
            lambda stream, text: self._on_output(job, stream, text),
            env=order.env,
            cwd=directory,
            timeout=order.timeout,
            kill_grace=self._kill_grace,
        )
        job.run = run
        self._jobs[job_id] = job
        self._running.add(job)
        run.finished.addCallback(self._on_run_ended, job).addErrback(self._on_run_failed, job)
        if order.delay > 0:
            # A cron fire sent ahead of its second: the slot is taken now,
            # the command starts on the second.
            job.start_call = self._clock.callLater(order.delay, self._start, job)
        else:
            self._start(job)

    def _start(self, job: _Job) -> None:
        # A job that ends while it waits (a cancel) cancels this call, in
        # _on_run_ended, so this runs only for a job still to start.
        job.start_call = None
        run = job.run
        assert run is not None
        job.started_at = self._clock.seconds()
        run.start()
        # A command that could not even be spawned has already finished
        # (exit 127, reason on stderr): the protocol sends no started then.
        if job.result is None and job in self._running:
            # No log line here: one per job, at its end, is what an operator
            # reads, and a second cost ~10 % of the agent's CPU for short jobs.
            job.pid = run.pid
            # Held back a little: a job that ends by then is reported by
            # one message, not three (docs/protocol.md, ``started``).
            job.held = []
            job.started_call = self._clock.callLater(STARTED_HOLD, self._report_started, job)

    def _report_started(self, job: _Job) -> None:
        job.started_call = None
        held, job.held = job.held or [], None
        self._send_for(job, "started", job=job.id, pid=job.pid, at=job.started_at)
        for chunk in held:
            self._send_output(job, chunk)

    def _on_cancel(self, message: dict[str, Any]) -> None:
        job = self._jobs.get(parse_cancel(message).job)
        if job is not None and job.result is None and job.run is not None:
            _agent_log.info("cancelling job {job}", job=job.id)
            job.run.cancel()

    def _on_ack(self, message: dict[str, Any]) -> None:
        for job_id in parse_ack(message).jobs:
            job = self._jobs.get(job_id)
            if job is None:
                continue  # a repeated ack: nothing left to forget
            if job.result is None:
                _agent_log.warn("ignoring ack for job {job}, which is still running", job=job_id)
                continue
            del self._jobs[job_id]

    def _on_drop(self, message: dict[str, Any]) -> None:
        drop = parse_drop(message)
        for job_id in drop.jobs:
            if job_id in self._jobs:
                _agent_log.info(
                    "the scheduler dropped job {job}: {reason}", job=job_id, reason=drop.reason[:200] or "-"
                )
                self._forget(job_id)

    def _on_error(self, message: dict[str, Any]) -> None:
        error = parse_error(message)
        _agent_log.warn(
            "the scheduler reported an error: {reason} (about {message})",
            reason=error.reason,
            message=error.message,
        )

    # -- job events ---------------------------------------------------------------

    def _on_output(self, job: _Job, stream: str, text: str) -> None:
        if job.forgotten:
            return
        if job.mask is not None:
            # Before the buffer: what is resent after a reconnect is clean too.
            text = job.mask.feed(stream, text)
            if not text:
                return
        self._add_output(job, stream, text)

    def _add_output(self, job: _Job, stream: str, text: str) -> None:
        job.seq += 1
        chunk = Chunk(job.seq, stream, text)
        job.output.append(chunk)
        if job.held is None:
            self._send_output(job, chunk)
            return
        job.held.append(chunk)
        if sum(len(held.data) for held in job.held) > _MAX_INLINE_OUTPUT:
            # A fast writer: its output must not pile up into one finished
            # larger than a frame may be.
            assert job.started_call is not None
            job.started_call.cancel()
            self._report_started(job)

    def _send_output(self, job: _Job, chunk: Chunk) -> None:
        self._send_for(job, "output", job=job.id, stream=chunk.stream, seq=chunk.seq, data=chunk.data)

    def _on_run_ended(self, result: RunResult, job: _Job) -> None:
        if job.mask is not None and not job.forgotten:
            # The ends held back in case they began a secret.
            for stream in ("stdout", "stderr"):
                rest = job.mask.flush(stream)
                if rest:
                    self._add_output(job, stream, rest)
        if job.start_call is not None and job.start_call.active():
            job.start_call.cancel()  # cancelled before its start
        job.start_call = None
        if job.started_call is not None and job.started_call.active():
            job.started_call.cancel()  # ended quickly: finished says it all
        job.started_call = None
        held, job.held = job.held, None
        self._running.discard(job)
        if not job.forgotten:
            job.result = result
            _agent_log.info(
                "job {job} ({process}) ended after {seconds:.3f} s: {outcome}",
                job=job.id,
                process="never started" if job.pid is None else f"pid {job.pid}",
                seconds=result.finished_at - result.started_at,
                outcome=_outcome(result),
            )
            fields = self._finished_fields(job)
            if held:
                fields["output"] = [{"stream": c.stream, "seq": c.seq, "data": c.data} for c in held]
            self._send_for(job, "finished", **fields)
        self._check_idle()

    def _on_run_failed(self, failure: Failure, job: _Job) -> None:
        # JobRun never errbacks; should that break, free the slot rather
        # than leak it, and say why.
        _agent_log.failure("job {job}: run ended abnormally", failure, job=job.id)
        self._running.discard(job)
        self._check_idle()

    # -- internals --------------------------------------------------------------------

    def _finished_fields(self, job: _Job) -> dict[str, object]:
        result = job.result
        assert result is not None
        return {
            "job": job.id,
            "exitCode": result.exit_code,
            "signal": result.signal,
            "timedOut": result.timed_out,
            "cancelled": result.cancelled,
            "seq": job.seq,
            "startedAt": result.started_at,
            "finishedAt": result.finished_at,
        }

    def _send(self, type: str, /, **fields: object) -> None:
        if self._link is not None and self._welcomed:
            self._link.send(type, **fields)

    def _send_for(self, job: _Job, type: str, /, **fields: object) -> None:
        # Output and results are already in the job's buffer; a job the
        # current scheduler has not resumed gets them after a later welcome.
        if job.live:
            self._send(type, **fields)

    def _forget(self, job_id: int) -> None:
        job = self._jobs.pop(job_id, None)
        if job is None:
            return
        job.forgotten = True
        if job.result is None and job.run is not None:
            _agent_log.info("scheduler dropped running job {job}: cancelling it", job=job_id)
            job.run.cancel()

    def _end_session(self) -> None:
        self._cancel_welcome_call()
        self._link = None
        self._welcomed = False
        for job in self._jobs.values():
            job.live = False
            if job.started_call is not None and job.started_call.active():
                # The next hello says it runs, and its buffer has the chunks.
                job.started_call.cancel()
            job.started_call = None
            job.held = None

    def _welcome_overdue(self) -> None:
        self._welcome_call = None
        if self._link is not None and not self._welcomed:
            _agent_log.warn(
                "no welcome within {timeout} s of the hello; reconnecting", timeout=self._welcome_timeout
            )
            self._link.close("no welcome")

    def _cancel_welcome_call(self) -> None:
        if self._welcome_call is not None and self._welcome_call.active():
            self._welcome_call.cancel()
        self._welcome_call = None

    def _check_idle(self) -> None:
        if self._running or not self._idle_waiters:
            return
        if self._give_up_call is not None and self._give_up_call.active():
            self._give_up_call.cancel()
        self._give_up_call = None
        self._fire_idle_waiters()

    def _give_up_waiting(self) -> None:
        self._give_up_call = None
        _agent_log.warn(
            "{n} job(s) still running {grace} s after cancelling; stopping anyway",
            n=len(self._running),
            grace=self._kill_grace + 1.0,
        )
        self._fire_idle_waiters()

    def _fire_idle_waiters(self) -> None:
        waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            waiter.callback(None)

