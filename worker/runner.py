"""Run one shell command for the worker agent.

Each job runs as ``/bin/sh -c <command>`` in a fresh session (and therefore a
fresh process group whose id is the child's pid), so a timeout or a cancel can
signal the whole tree with ``os.killpg`` -- ``sleep 100 & sleep 100`` must not
leave an orphan behind.  Output is streamed to the caller but coalesced, since
one callback per pipe read would swamp the agent's connection to the
scheduler.
"""

from __future__ import annotations

import codecs
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from worker.spawn import spawn_in_session

__all__ = ["EXIT_SPAWN_FAILED", "JobRun", "OutputSink", "RunResult", "RunnerReactor"]

_log = Logger()

# Same code the shell uses for "command not found", so the scheduler can treat
# "could not even start" uniformly however it happened.
EXIT_SPAWN_FAILED = 127

OutputSink = Callable[[str, str], None]
"""``(stream, text)`` where stream is ``"stdout"`` or ``"stderr"``."""

_STREAMS: Mapping[int, str] = {1: "stdout", 2: "stderr"}

# A UTF-8 character is at most 4 bytes, so the decoder can hold back up to 3;
# a smaller max_chunk could leave no room to make progress.
_MIN_CHUNK = 4

# cwd is applied by the shell rather than by spawnProcess(path=...): the
# child is started with posix_spawn, which cannot change directory (and
# Twisted would otherwise fork the whole worker interpreter).  The user
# command then gets a pristine `sh -c` of its own, and exec keeps the pid
# (= pgid).  A job running in the agent's own directory, the usual case,
# needs neither the cd nor the second exec.
_CD_THEN_RUN = 'cd -- "$1" || exit 127; exec /bin/sh -c "$2"'


class _Timer(Protocol):
    def active(self) -> bool: ...

    def cancel(self) -> None: ...


class _ProcessTransport(Protocol):
    pid: int | None


class RunnerReactor(Protocol):
    """The reactor features JobRun needs (IReactorTime + IReactorProcess).

    Twisted's zope interfaces are not usable as static types without the
    mypy-zope plugin, hence this structural stand-in.  ``task.Clock`` covers
    the timer half, which is all that tests driving the protocol by hand use.
    """

    def seconds(self) -> float: ...

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: object, **kw: object
    ) -> Any: ...

    def spawnProcess(
        self,
        processProtocol: Any,
        executable: str,
        args: Sequence[str] = ...,
        env: Mapping[str, str] | None = ...,
        path: str | None = ...,
        uid: int | None = ...,
        gid: int | None = ...,
        usePTY: bool = ...,
        childFDs: Mapping[int, str | int] | None = ...,
    ) -> Any: ...


@dataclass(frozen=True)
class RunResult:
    exit_code: int | None  # None when killed by a signal
    signal: int | None  # signal number that ended it, else None
    timed_out: bool
    cancelled: bool
    started_at: float  # reactor.seconds() at spawn
    finished_at: float


class JobRun(ProcessProtocol):
    """One execution of one shell command.

    ``finished`` fires exactly once with a RunResult and never errbacks for a
    normal exit, a kill or a failure to spawn.  Everything written by the
    command has been passed to ``on_output`` by then.

    This object is also the process's ProcessProtocol, so tests can drive the
    output path (``childDataReceived``/``processEnded``) with a Clock and no
    real process.
    """

    def __init__(
        self,
        reactor: RunnerReactor,
        command: str,
        on_output: OutputSink,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        kill_grace: float = 5.0,
        flush_interval: float = 0.05,
        max_chunk: int = 64 * 1024,
    ) -> None:
        if max_chunk < _MIN_CHUNK:
            raise ValueError(
                f"max_chunk must be at least {_MIN_CHUNK}, got {max_chunk}"
            )
        if flush_interval < 0:
            raise ValueError(f"flush_interval must be >= 0, got {flush_interval}")
        if kill_grace < 0:
            raise ValueError(f"kill_grace must be >= 0, got {kill_grace}")
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be >= 0 or None, got {timeout}")
        self._reactor = reactor
        self._command = command
        self._on_output = on_output
        self._env = env
        self._cwd = cwd
        self._timeout = timeout
        self._kill_grace = kill_grace
        self._flush_interval = flush_interval
        self._max_chunk = max_chunk

        self.finished: Deferred[RunResult] = Deferred()
        self.pid: int | None = None

        self._buffers: dict[int, bytearray] = {fd: bytearray() for fd in _STREAMS}
        self._decoders = {
            fd: codecs.getincrementaldecoder("utf-8")(errors="replace")
            for fd in _STREAMS
        }
        self._started = False
        self._started_at: float | None = None
        # Set by processExited: until then the pid is our unreaped child and
        # cannot have been recycled, so signalling it directly is safe.
        self._reaped = False
        # Set once processEnded (or a spawn failure) has concluded the run;
        # from then on the pgid may belong to someone else.
        self._done = False
        self._terminating = False
        self._timed_out = False
        self._cancelled = False
        self._flush_call: _Timer | None = None
        self._timeout_call: _Timer | None = None
        self._kill_call: _Timer | None = None

    # -- public API ---------------------------------------------------------

    def start(self) -> None:
        """Spawn the command.  Never raises: failures end the run with 127."""
        if self._started or self._done:
            return
        self._started = True
        self._started_at = self._reactor.seconds()

        # Absolute so CDPATH in the job's environment cannot redirect `cd`.
        cwd = None if self._cwd is None else os.path.abspath(self._cwd)
        if cwd is not None and cwd != os.getcwd():
            # Checked here for a clear message; the shell's `cd` still backs
            # this up (exit 127) if the directory vanishes in between.
            if not os.path.isdir(cwd):
                self._fail_to_spawn(f"working directory {cwd!r} does not exist")
                return
            if not os.access(cwd, os.X_OK):
                self._fail_to_spawn(f"working directory {cwd!r} is not accessible")
                return
            shell = ["/bin/sh", "-c", _CD_THEN_RUN, "/bin/sh", cwd, self._command]
        else:
            shell = ["/bin/sh", "-c", self._command]
        env = dict(os.environ)
        if self._env:
            env.update(self._env)

        try:
            spawn_in_session(self._reactor, self, shell, env)
        # Whatever goes wrong (ENOENT, E2BIG, a NUL in the command...) is the
        # job's failure, reported through the result, never the agent's.
        except Exception as e:
            self._fail_to_spawn(f"{type(e).__name__}: {e}")
            return

        if self._timeout is not None and not self._done:
            self._timeout_call = self._reactor.callLater(
                self._timeout, self._on_timeout
            )

    def cancel(self) -> None:
        """SIGTERM the process group, SIGKILL it after kill_grace.  Idempotent.

        A run whose timeout already fired stays timed out: whichever of the
        two came first is what the job's result says (docs/protocol.md).
        """
        if self._done or self._timed_out:
            return
        self._cancelled = True
        if not self._started:
            # Nothing to kill; report the cancellation straight away so the
            # caller never waits on a run that will not happen.
            self._started = True
            self._finish(exit_code=None, sig=None)
            return
        self._terminate()

    # -- ProcessProtocol ----------------------------------------------------

    def connectionMade(self) -> None:
        # Captured here, not after spawnProcess returns: Twisted may reap a
        # very short-lived child inside spawnProcess and clear transport.pid.
        self.pid = cast(_ProcessTransport, self.transport).pid

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD not in _STREAMS or self._done:
            return
        buf = self._buffers[childFD]
        buf += data
        self._drain(childFD, everything=False)
        if buf and self._flush_call is None:
            self._flush_call = self._reactor.callLater(
                self._flush_interval, self._flush_due
            )

    def processExited(self, reason: Failure) -> None:
        self._reaped = True

    def processEnded(self, reason: Failure) -> None:
        # Twisted calls this only after the child is reaped and every pipe has
        # closed, so no more output can arrive and the buffers are final.
        if self._done:
            return
        self._reaped = True
        value = reason.value
        exit_code = getattr(value, "exitCode", None)
        sig = getattr(value, "signal", None)
        self._finish(
            exit_code=exit_code if isinstance(exit_code, int) else None,
            sig=sig if isinstance(sig, int) else None,
        )

    # -- internals ----------------------------------------------------------

    def _on_timeout(self) -> None:
        self._timeout_call = None
        if self._done or self._cancelled:
            return
        self._timed_out = True
        self._terminate()

    def _terminate(self) -> None:
        if self._terminating or self._done:
            return
        self._terminating = True
        self._signal_group(signal.SIGTERM)
        self._kill_call = self._reactor.callLater(
            self._kill_grace, self._on_grace_expired
        )

    def _on_grace_expired(self) -> None:
        self._kill_call = None
        self._signal_group(signal.SIGKILL)

    def _signal_group(self, sig: signal.Signals) -> None:
        if self._done or self.pid is None:
            return
        try:
            os.killpg(self.pid, sig)
            return
        except ProcessLookupError:
            pass
        except OSError as e:
            _log.warn(
                "killpg({pid}, {sig}) failed: {err}", pid=self.pid, sig=sig.name, err=e
            )
            return
        # No such group yet: the child has not reached setsid() (e.g. cancel
        # right after start).  It is still our unreaped child, so its pid is
        # safe to signal and it has no descendants to miss.
        if not self._reaped:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def _flush_due(self) -> None:
        self._flush_call = None
        for fd in _STREAMS:
            self._drain(fd, everything=True)

    def _drain(self, fd: int, *, everything: bool, final: bool = False) -> None:
        """Pass buffered bytes of one stream to on_output.

        With ``everything`` false, only whole max_chunk pieces go out (the
        rest waits for the timer).  Pieces are sized so that bytes held back
        by the decoder plus the new bytes never exceed max_chunk, keeping each
        callback at most max_chunk characters (and bytes, for valid UTF-8).
        """
        buf = self._buffers[fd]
        decoder = self._decoders[fd]
        stream = _STREAMS[fd]
        while buf:
            room = self._max_chunk - len(decoder.getstate()[0])
            if not everything and len(buf) < room:
                break
            piece = bytes(buf[:room])
            del buf[:room]
            text = decoder.decode(piece)
            if text:
                self._emit(stream, text)
        if final:
            # A character cut off by the process exiting becomes U+FFFD
            # rather than vanishing silently.
            tail = decoder.decode(b"", final=True)
            if tail:
                self._emit(stream, tail)

    def _emit(self, stream: str, text: str) -> None:
        # A faulty sink must not break the pipe readers or leave the run
        # without a result; the process would then outlive its supervision.
        try:
            self._on_output(stream, text)
        except Exception:  # logged with its traceback below
            _log.failure(
                "output sink raised; {n} characters of {stream} dropped",
                n=len(text),
                stream=stream,
            )

    def _fail_to_spawn(self, reason: str) -> None:
        self._emit("stderr", f"failed to start job: {reason}\n")
        self._finish(exit_code=EXIT_SPAWN_FAILED, sig=None)

    def _finish(self, *, exit_code: int | None, sig: int | None) -> None:
        self._done = True
        for call in (self._flush_call, self._timeout_call, self._kill_call):
            if call is not None and call.active():
                call.cancel()
        self._flush_call = self._timeout_call = self._kill_call = None
        for fd in _STREAMS:
            self._drain(fd, everything=True, final=True)
        finished_at = self._reactor.seconds()
        started_at = self._started_at if self._started_at is not None else finished_at
        self.finished.callback(
            RunResult(
                exit_code=exit_code,
                signal=sig,
                timed_out=self._timed_out,
                cancelled=self._cancelled,
                started_at=started_at,
                finished_at=finished_at,
            )
        )
