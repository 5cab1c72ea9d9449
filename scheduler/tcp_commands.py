"""The seed's line protocol on port 5050 (ADD, LIST, REMOVE, ... PING).

The wire is thin: :class:`CommandLineProtocol` frames lines and keeps
replies in order; :class:`TcpCommands` turns one line into one reply using
the task state.  Replies are ``OK ...``, ``ERR <reason>`` or ``PONG``;
multi-line replies (LIST, HELP) end with an ``OK`` line.

Connections are one-shot by default, because the seed's one-liners
(``echo PING | nc localhost 5050``) use a netcat that never half-closes:
once every line received so far is answered and nothing more arrives for
``linger`` seconds, the server closes.  A client that half-closes (``nc
-N``) is answered and closed at once.  ``SESSION`` keeps the connection
open for a person typing, until ``QUIT`` or the idle timeout.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableProtocol,
    IPushProducer,
    IReactorTime,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from scheduler.access import same
from scheduler.cron import iso
from scheduler.state import TaskState
from scheduler.store import LoadError, StoreError
from scheduler.taskbook import TaskBook, TaskNotFound
from scheduler.tasks import Task, TaskError

log = Logger()

Reply = str | Deferred[str]

HELP = """\
ADD <schedule> <command>   add a task; schedule is 5 cron fields, a @macro, or 6 fields with seconds last
LIST                       one line per task: id, jobName, schedule, next run, command (tab-separated)
REMOVE <id|jobName>        remove a task
CLEAR                      remove every task
STATUS                     counts of tasks, workers and jobs
SAVE                       write the tasks to the tasks file
LOAD                       replace the tasks with the tasks file's
PING                       answers PONG
AUTH <token>               authenticate (needed first when the scheduler has a TCP token)
SESSION                    keep this connection open (for typing); QUIT closes it
QUIT                       close the connection"""

# What an unauthenticated connection may still do.
_OPEN_VERBS = frozenset({"PING", "HELP", "QUIT", "SESSION"})

_CRON_FIELD = re.compile(r"^[0-9*/,\-]+$")
_HTTP_START = re.compile(
    r"^(GET|POST|PUT|DELETE|HEAD|OPTIONS|PATCH|CONNECT|TRACE) \S", re.IGNORECASE
)


def split_add(argument: str) -> tuple[str, str]:
    """Split ``ADD``'s argument into (schedule, command).

    A ``@macro`` is one word; otherwise five fields, or six when the sixth
    looks like a cron field (seconds, croniter's convention) and a command
    still follows it.
    """
    words = argument.split()
    if not words:
        raise TaskError("ADD needs a schedule and a command, e.g. ADD */5 * * * * echo hi")
    if words[0].startswith("@"):
        count = 1
    elif len(words) >= 6 and _CRON_FIELD.match(words[5]):
        count = 6
    else:
        count = 5
    if len(words) <= count:
        raise TaskError(
            "ADD needs a schedule and a command, e.g. ADD */5 * * * * echo hi"
            f" (got {len(words)} word{'s' if len(words) != 1 else ''})"
        )
    # Keep the command's own spacing: cut after the schedule's last word.
    match = re.match(rf"\s*(?:\S+\s+){{{count}}}(.*)$", argument, re.DOTALL)
    assert match is not None
    return " ".join(words[:count]), match.group(1).strip()


def _iso(timestamp: float | None, book: TaskBook) -> str:
    return iso(timestamp, book.tz) or "-"


class TcpCommands:
    """Executes one command line against the scheduler's state."""

    def __init__(
        self,
        state: TaskState,
        next_run: Callable[[int], float | None],
        status: Callable[[], dict[str, int]],
    ) -> None:
        self._state = state
        self._next_run = next_run
        self._status = status

    def handle(self, line: str) -> Reply:
        verb, _, argument = line.strip().partition(" ")
        verb = verb.upper()
        handler = getattr(self, f"do_{verb}", None) if verb.isalpha() else None
        if not verb:
            return "ERR empty line (try HELP)"
        if handler is None:
            shown = verb if len(verb) <= 40 else verb[:40] + "..."
            return f"ERR unknown command '{shown}' (try HELP)"
        result: Reply = handler(argument.strip())
        return result

    def do_PING(self, argument: str) -> Reply:
        return "PONG"

    def do_HELP(self, argument: str) -> Reply:
        return HELP + "\nOK"

    def do_ADD(self, argument: str) -> Reply:
        try:
            schedule, command = split_add(argument)
        except TaskError as error:
            return f"ERR {error}"

        def add(book: TaskBook) -> Task:
            return book.add(schedule, command)

        return self._state.edit(add).addCallbacks(
            lambda task: (
                f"OK id={task.id} jobName={task.job_name}"
                f" next={_iso(self._next_run(task.id), self._state.book)}"
            ),
            _error,
        )

    def do_LIST(self, argument: str) -> Reply:
        book = self._state.book
        # Tasks on one schedule share their next run, and formatting a time
        # costs more than the rest of a line: format each time once.
        formatted: dict[float | None, str] = {}

        def when(task_id: int) -> str:
            timestamp = self._next_run(task_id)
            text = formatted.get(timestamp)
            if text is None:
                text = formatted[timestamp] = _iso(timestamp, book)
            return text

        lines = [
            f"{task.id}\t{task.job_name}\t{task.schedule.expression}\t{when(task.id)}\t{task.command}"
            for task in book
        ]
        lines.append(f"OK {len(book)} task{'' if len(book) == 1 else 's'}")
        return "\n".join(lines)

    def do_REMOVE(self, argument: str) -> Reply:
        if not argument:
            return "ERR REMOVE needs a task id or jobName, e.g. REMOVE 2"

        def remove(book: TaskBook) -> Task:
            return book.remove(book.find(argument).id)

        return self._state.edit(remove).addCallbacks(
            lambda task: f"OK removed id={task.id} jobName={task.job_name}", _error
        )

    def do_CLEAR(self, argument: str) -> Reply:
        return self._state.edit(lambda book: len(book.clear())).addCallbacks(
            lambda count: f"OK cleared {count} task{'' if count == 1 else 's'}", _error
        )

    def do_STATUS(self, argument: str) -> Reply:
        counts = self._status()
        return "OK " + " ".join(f"{name}={value}" for name, value in counts.items())

    def do_SAVE(self, argument: str) -> Reply:
        if argument:
            return "ERR SAVE takes no argument (the file is set when the scheduler starts)"
        return self._state.save().addCallbacks(
            lambda count: f"OK saved {count} task{'' if count == 1 else 's'}", _error
        )

    def do_LOAD(self, argument: str) -> Reply:
        if argument:
            return "ERR LOAD takes no argument (the file is set when the scheduler starts)"
        return self._state.load().addCallbacks(
            lambda count: f"OK loaded {count} task{'' if count == 1 else 's'}", _error
        )


def _error(failure: Failure) -> str:
    error = failure.value
    if isinstance(error, TaskNotFound):
        return f"ERR {error.args[0]}"
    if isinstance(error, TaskError | LoadError | StoreError):
        return f"ERR {error}"
    log.failure("command failed", failure)
    return "ERR internal error (logged on the scheduler)"


# Commands that go through the task state's queue, which keeps their order:
# a run of them can be in flight together.
_QUEUED_VERBS = frozenset({b"ADD", b"REMOVE", b"CLEAR", b"SAVE", b"LOAD"})


def _joins_the_queue(raw: bytes | None) -> bool:
    return raw is not None and raw.strip().split(b" ", 1)[0].upper() in _QUEUED_VERBS


@dataclass
class _Slot:
    text: str | None = None


@implementer(IHalfCloseableProtocol)
class CommandLineProtocol(Protocol):
    """Frames lines, answers them in order, and decides when to close."""

    transport: ITCPTransport  # type: ignore[assignment]

    def __init__(
        self,
        commands: TcpCommands,
        clock: IReactorTime,
        *,
        max_line: int,
        linger: float,
        idle_timeout: float,
        token: str | None = None,
    ) -> None:
        self._commands = commands
        self._token = token
        self._authenticated = token is None
        self._failed_auth = 0
        self._clock = clock
        self._max_line = max_line
        self._linger = linger
        self._idle_timeout = idle_timeout
        self._buffer = b""
        self._discarding = False
        # None stands for a line that was too long.
        self._lines: deque[bytes | None] = deque()
        # Replies owed, oldest first.  Changes (ADD, REMOVE, ...) piped in one
        # go are all handed to the task state at once, so it writes the file
        # once for the lot rather than once per line.
        self._waiting: deque[_Slot] = deque()
        self._session = False
        self._input_closed = False
        self._closing = False
        self._first = True
        self._timer: IDelayedCall | None = None
        self._paused = False

    # -- framing -------------------------------------------------------

    def connectionMade(self) -> None:
        self._arm(self._idle_timeout)

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self._cancel_timer()
        self._buffer += data
        while True:
            newline = self._buffer.find(b"\n")
            if newline < 0:
                break
            line, self._buffer = self._buffer[:newline], self._buffer[newline + 1 :]
            if self._discarding:
                # The tail of an overlong line: its error went out already.
                self._discarding = False
                continue
            if len(line) > self._max_line:
                self._lines.append(None)
                continue
            self._lines.append(line[:-1] if line.endswith(b"\r") else line)
        if len(self._buffer) > self._max_line and not self._discarding:
            self._lines.append(None)
            self._discarding = True
        if self._discarding:
            self._buffer = b""
        if len(self._lines) > 1000 and not self._paused:
            # Replies are slower than input (disk writes): stop reading.
            self._paused = True
            cast(IPushProducer, self.transport).pauseProducing()
        self._process()

    def readConnectionLost(self) -> None:
        self._input_closed = True
        if self._buffer and not self._discarding:
            # A last line without a newline still counts.
            self._lines.append(self._buffer)
            self._buffer = b""
        self._process()

    def writeConnectionLost(self) -> None:
        self._close()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._closing = True
        self._cancel_timer()

    # -- answering -----------------------------------------------------

    def _process(self) -> None:
        while self._lines and not self._closing:
            self._flush()
            raw = self._lines[0]
            if self._waiting and not _joins_the_queue(raw):
                break  # anything else must see the pending changes first
            self._lines.popleft()
            slot = _Slot()
            self._waiting.append(slot)
            reply = self._answer(raw)
            if isinstance(reply, Deferred):
                reply.addCallback(self._replied, slot)
            else:
                slot.text = reply
        self._flush()
        if self._paused and len(self._lines) < 100 and not self._closing:
            self._paused = False
            cast(IPushProducer, self.transport).resumeProducing()
        if self._lines or self._waiting or self._closing:
            return
        if self._input_closed:
            self._close()
        elif self._session:
            self._arm(self._idle_timeout)
        else:
            self._arm(self._linger)

    def _replied(self, reply: str, slot: _Slot) -> None:
        slot.text = reply
        self._process()

    def _flush(self) -> None:
        """Send the replies that are ready, in the order of their lines."""
        while self._waiting and self._waiting[0].text is not None:
            text = self._waiting.popleft().text
            assert text is not None
            self._send(text)

    def _answer(self, raw: bytes | None) -> Reply:
        first, self._first = self._first, False
        if raw is None:
            return f"ERR line longer than {self._max_line} bytes (ignored up to the next newline)"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            return "ERR line is not valid UTF-8"
        if (first and _HTTP_START.match(line)) or line.lower().startswith("host:"):
            # A browser tricked into talking to this port: run nothing.
            log.warn("closing a connection that speaks HTTP to the command port")
            self._close()
            return ""
        verb, _, argument = line.strip().partition(" ")
        verb = verb.upper()
        if verb == "AUTH":
            return self._auth(argument.strip())
        if not self._authenticated and verb not in _OPEN_VERBS:
            return "ERR authentication required: send AUTH <token> first"
        if verb == "SESSION":
            self._session = True
            return "OK session: the connection stays open; QUIT closes it"
        if verb == "QUIT":
            self._send("OK bye")
            self._close()
            return ""
        if "\0" in line:
            return "ERR line contains a NUL byte"
        try:
            return self._commands.handle(line)
        except Exception:
            log.failure("command {line!r} failed", line=line[:200])
            return "ERR internal error (logged on the scheduler)"

    def _auth(self, given: str) -> str:
        if self._token is None:
            return "OK no token is needed here"
        if given and same(given, self._token):
            self._authenticated = True
            return "OK authenticated"
        self._failed_auth += 1
        log.warn(
            "wrong TCP token from {peer} (attempt {count})",
            peer=getattr(self.transport.getPeer(), "host", "?"),
            count=self._failed_auth,
        )
        if self._failed_auth >= 3:
            self._send("ERR wrong token; closing after 3 attempts")
            self._close()
            return ""
        return "ERR wrong token"

    def _send(self, reply: str) -> None:
        if reply and not self._closing:
            self.transport.write(reply.encode("utf-8") + b"\n")

    # -- closing -------------------------------------------------------

    def _arm(self, delay: float) -> None:
        self._cancel_timer()
        self._timer = self._clock.callLater(delay, self._close)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._cancel_timer()
        self._lines.clear()
        self.transport.loseConnection()


class CommandFactory(Factory):
    noisy = False
    def __init__(
        self,
        commands: TcpCommands,
        clock: IReactorTime,
        *,
        max_line: int = 32 * 1024,
        linger: float = 0.3,
        idle_timeout: float = 300.0,
        token: str | None = None,
    ) -> None:
        self.commands = commands
        self.token = token
        self.clock = clock
        self.max_line = max_line
        self.linger = linger
        self.idle_timeout = idle_timeout

    def buildProtocol(self, addr: object) -> CommandLineProtocol:
        protocol = CommandLineProtocol(
            self.commands,
            self.clock,
            max_line=self.max_line,
            linger=self.linger,
            idle_timeout=self.idle_timeout,
            token=self.token,
        )
        protocol.factory = self
        return protocol
