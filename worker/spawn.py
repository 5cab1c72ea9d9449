"""Start a job's process as the leader of a new session, as cheaply as we can.

A job must run in a session (and so a process group) of its own, so that a
timeout or a cancel can signal the whole tree with ``os.killpg``.  Twisted's
``spawnProcess`` cannot ask for that, so the obvious way is to exec
util-linux ``setsid`` first, which then execs the shell.  That extra exec
more than doubled the CPU a short job costs the machine (``bench/``: 2.05
against 0.8 ms of CPU for a ``true`` job run by ``xargs``).

So on a POSIX reactor the child is started with ``posix_spawn(...,
setsid=True)``: one exec, and the session exists before the shell runs.
Twisted already uses ``posix_spawnp`` for plain children; ``_SessionProcess``
repeats that path with ``setsid=True`` added.  It leans on four private
names in ``twisted.internet.process``; should a Twisted release drop them,
or the reactor not be a POSIX one (a test's fake), the ``setsid`` binary is
used, then a tiny Python shim, as before.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet import process as _process
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.protocol import ProcessProtocol

__all__ = ["NoLauncher", "spawn_in_session"]

_null_input: int | None = None


def _child_fds() -> dict[int, str | int]:
    """stdout and stderr are pipes; stdin is /dev/null.

    Jobs get no input, and a pipe the agent closes at once would cost a
    pipe, a writer and two epoll changes per job for the same end of file.
    Opened once (close-on-exec, as Python opens everything) and kept.
    """
    global _null_input
    if _null_input is None:
        _null_input = os.open(os.devnull, os.O_RDONLY)
    return {0: _null_input, 1: "r", 2: "r"}


# Run by the last-resort launcher when util-linux setsid is missing.  -I -S
# keeps the interpreter start as cheap as it can be; os and sys need no
# imports from site-packages.
_SETSID_SHIM = "import os,sys; os.setsid(); os.execv(sys.argv[1], sys.argv[1:])"

_TWISTED_HELPERS = ("_listOpenFDs", "_getFileActions", "_PS_CLOSE", "_PS_DUP2")

# Whether _SessionProcess can work with the installed Twisted.  Tests turn it
# off to exercise the launcher-prefix fallbacks on a real reactor.
_DIRECT: bool = hasattr(os, "posix_spawn") and all(
    hasattr(_process, name) for name in _TWISTED_HELPERS
)


# Python ignores SIGPIPE (and perhaps more); the shell must start with every
# signal at its default.  Twisted asks signal.getsignal() about each of the
# 64 signals per spawn; resetting all of them costs nothing in the child.
_DEFAULT_SIGNALS = sorted(signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP})


class NoLauncher(Exception):
    """Nothing on this machine can start a process in a new session."""


def _launch_prefix(setsid_path: str | None, python: str | None) -> tuple[str, ...]:
    """Argv prefix that makes the spawned child a session (and group) leader.

    util-linux ``setsid`` calls setsid() and execs in place -- the pid does not
    change -- provided the child is not already a group leader, which holds
    for Twisted's children (neither posix_spawnp nor its fork path calls
    setpgid).  Were it a leader, setsid would fork and our pid would be wrong.
    """
    if setsid_path:
        return (setsid_path,)
    if python:
        return (python, "-I", "-S", "-c", _SETSID_SHIM)
    return ()


# Looked up once: PATH lookups per job would be wasted work, and the answer
# does not change while the worker runs.
_LAUNCH_PREFIX: tuple[str, ...] = _launch_prefix(shutil.which("setsid"), sys.executable or None)


class _SessionProcess(_process.Process):  # type: ignore[misc]
    """Twisted's POSIX ``Process``, whose child calls setsid() before its exec."""

    def _trySpawnInsteadOfFork(
        self,
        path: str | None,
        uid: int | None,
        gid: int | None,
        executable: str,
        args: list[str],
        environment: Mapping[str, str],
        kwargs: dict[str, Any],
    ) -> bool:
        # As Twisted's own version, which bails out to fork() for a cwd, a
        # uid or a gid; spawn_in_session never passes any, so this never does:
        # a forked child would not get its session.
        fd_state: list[tuple[int, bool]] = []
        for fd in _process._listOpenFDs():
            try:
                fd_state.append((fd, bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)))
            except OSError:  # closed since it was listed
                pass
        self.pid = os.posix_spawn(
            executable,
            args,
            environment,
            file_actions=_process._getFileActions(
                fd_state, kwargs["fdmap"], doClose=_process._PS_CLOSE, doDup2=_process._PS_DUP2
            ),
            setsigdef=_DEFAULT_SIGNALS,
            setsid=True,
        )
        self.status = -1
        return True


def spawn_in_session(
    reactor: Any, protocol: ProcessProtocol, argv: Sequence[str], env: Mapping[str, str]
) -> None:
    """Run *argv* (an absolute path first) as a new session's leader.

    The child's stdout and stderr are pipes to *protocol*, and its stdin
    reads /dev/null.  Raises what spawning raises (ENOENT, a NUL in an
    argument...), or NoLauncher.
    """
    if _DIRECT and isinstance(reactor, PosixReactorBase):
        _SessionProcess(reactor, argv[0], list(argv), dict(env), None, protocol, None, None, _child_fds())
        return
    if not _LAUNCH_PREFIX:
        raise NoLauncher("neither setsid nor a Python interpreter is available")
    full = [*_LAUNCH_PREFIX, *argv]
    reactor.spawnProcess(protocol, full[0], full, env=env, childFDs=_child_fds())
