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

With a TCP token, a connection is unauthenticated until ``AUTH`` succeeds,
and unauthenticated connections hold nothing for long (see
:class:`TcpAuth`): they must authenticate within a deadline, may not start
a ``SESSION``, and only a few of them get a place at a time, so a crowd of
them cannot keep an operator with the token out.
"""

from __future__ import annotations

import ipaddress
import math
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
from scheduler.settings import Settings
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
SESSION                    keep this connection open (for typing; after AUTH); QUIT closes it
QUIT                       close the connection"""

# What an unauthenticated connection may still do.  Not SESSION: it would
# keep a connection that has shown no token open for the idle timeout.
_OPEN_VERBS = frozenset({"PING", "HELP", "QUIT"})

# Bounds on guessing the TCP token, per peer address and across connections
# (SECURITY.md lists them).  After AUTH_FREE_FAILURES wrong tokens an address
# waits AUTH_FIRST_WAIT before its next AUTH is even looked at, twice as
# long after each further wrong one, at most AUTH_MAX_WAIT.  An address that
# sends no wrong token for AUTH_FORGET_AFTER starts afresh.
AUTH_FREE_FAILURES = 5
AUTH_FIRST_WAIT = 1.0
AUTH_MAX_WAIT = 60.0
AUTH_FORGET_AFTER = 900.0
# Addresses remembered at most (the longest-quiet are forgotten first), so a
# guesser with many addresses cannot grow the table without bound.
AUTH_MAX_ADDRESSES = 10_000
# Wrong tokens are logged once, then summed up at most once per interval.
AUTH_LOG_INTERVAL = 60.0
# A connection that arrives while every unauthenticated place is taken gets
# this long to authenticate with its first line (an operator's piped
# ``AUTH <token>`` arrives with the connection), instead of a place.
OVER_CAP_GRACE = 2.0

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


# Characters a terminal acts on instead of showing: C0 and C1 controls (ESC
# starts escape sequences; TAB would split LIST's columns), DEL, bidi
# embeddings, overrides and isolates (which reorder what is shown),
# invisible marks and line separators, and lone surrogates (which cannot
# even be encoded as UTF-8, and JSON in tasks.db can hold them).
_HIDDEN = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u180e\u200b-\u200f\u2028-\u202e"
    "\u2060-\u206f\ufeff\ufff9-\ufffb\ud800-\udfff]"
)
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def visible(text: str) -> str:
    """*text* with every control or bidi character shown as an escape (``\\x1b``, ``\\u202e``).

    For replies that show stored text (commands, jobNames) on an operator's
    terminal; the stored task is unchanged.  Backslashes are left alone, so
    commands read as written; the REST API gives the exact text.
    """
    if _HIDDEN.search(text) is None:
        return text
    return _HIDDEN.sub(_escape, text)


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
            f"{task.id}\t{visible(task.job_name)}\t{visible(task.schedule.expression)}\t{when(task.id)}\t{visible(task.command)}"
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
            lambda task: f"OK removed id={task.id} jobName={visible(task.job_name)}", _error
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


def _address_key(host: str) -> str:
    """The unit guesses are counted by: an IPv4 address, or an IPv6 /64.

    One IPv6 host usually holds a whole /64, so counting single addresses
    would give it billions of fresh starts.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return host


@dataclass
class _Failures:
    count: int
    last: float
    until: float  # no AUTH from the address is looked at before this time


class AuthThrottle:
    """Wrong AUTH tokens per peer address, across its connections.

    The first AUTH_FREE_FAILURES cost nothing; then the address waits before
    its next AUTH is checked at all, doubling from AUTH_FIRST_WAIT up to
    AUTH_MAX_WAIT, so a guesser gets about one try a minute instead of
    thousands a second.  A right token clears the address's count.  Every
    wrong token is counted, but the log gets one line at the first and then
    at most one summary per AUTH_LOG_INTERVAL, so a flood of guesses cannot
    flood the log.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        # Oldest failure first: a failure moves its address to the end.
        self._failures: dict[str, _Failures] = {}
        self._unlogged = 0
        self._unlogged_from: set[str] = set()
        self._last_from = ""
        self._refused = 0
        self._log_timer: IDelayedCall | None = None

    def wait(self, host: str) -> float:
        """Seconds *host* must wait before an AUTH from it is checked (0: none)."""
        entry = self._current(_address_key(host))
        if entry is None:
            return 0.0
        return max(0.0, entry.until - self._clock.seconds())

    def failed(self, host: str) -> float:
        """Count a wrong token from *host*; returns how long it must now wait."""
        key = _address_key(host)
        now = self._clock.seconds()
        entry = self._current(key) or _Failures(0, now, now)
        self._failures.pop(key, None)
        entry.count += 1
        entry.last = now
        over = entry.count - AUTH_FREE_FAILURES
        if over >= 0:
            entry.until = now + min(AUTH_MAX_WAIT, AUTH_FIRST_WAIT * 2.0 ** min(over, 32))
        self._failures[key] = entry
        while len(self._failures) > AUTH_MAX_ADDRESSES:
            del self._failures[next(iter(self._failures))]
        self._note(host)
        return max(0.0, entry.until - now)

    def succeeded(self, host: str) -> None:
        self._failures.pop(_address_key(host), None)

    def refused(self, host: str) -> None:
        """Count an AUTH refused unchecked because *host* must still wait."""
        self._refused += 1
        if self._log_timer is None:
            self._log_timer = self._clock.callLater(AUTH_LOG_INTERVAL, self._summarise)

    def _current(self, key: str) -> _Failures | None:
        entry = self._failures.get(key)
        if entry is not None and self._clock.seconds() - entry.last > AUTH_FORGET_AFTER:
            del self._failures[key]
            return None
        return entry

    def _note(self, host: str) -> None:
        if self._log_timer is None:
            log.warn("wrong TCP token from {peer}", peer=host)
            self._log_timer = self._clock.callLater(AUTH_LOG_INTERVAL, self._summarise)
            return
        self._unlogged += 1
        self._last_from = host
        if len(self._unlogged_from) < 1000:
            self._unlogged_from.add(host)

    def _summarise(self) -> None:
        if not self._unlogged and not self._refused:
            self._log_timer = None
            return
        log.warn(
            "{count} more wrong TCP tokens in the last {interval:.0f} s from {addresses}"
            " address(es){last}, and {refused} AUTH refused unchecked while their address"
            " waited; an address waits up to {most:.0f} s between tries after {free} wrong ones",
            count=self._unlogged,
            interval=AUTH_LOG_INTERVAL,
            addresses=len(self._unlogged_from) if len(self._unlogged_from) < 1000 else "1000+",
            last=f", the last from {self._last_from}" if self._unlogged else "",
            refused=self._refused,
            most=AUTH_MAX_WAIT,
            free=AUTH_FREE_FAILURES,
        )
        self._unlogged = 0
        self._unlogged_from.clear()
        self._refused = 0
        self._log_timer = self._clock.callLater(AUTH_LOG_INTERVAL, self._summarise)


class TcpAuth:
    """The command port's token and who has not shown it yet.

    Shared by every connection of one listener.  A connection is
    unauthenticated from its start until ``AUTH`` succeeds; at most
    *max_unauthenticated* of them hold a place at a time, each for at most
    *timeout* seconds.  A connection that finds every place taken is on
    probation: only a right ``AUTH`` as its first line, within
    OVER_CAP_GRACE, lets it in; anything else gets ``ERR too many
    unauthenticated connections``.  So connections that never authenticate
    cannot keep an operator who has the token out.
    """

    def __init__(
        self, token: str, clock: IReactorTime, *, timeout: float, max_unauthenticated: int
    ) -> None:
        self.token = token
        self.timeout = timeout
        self.max_unauthenticated = max_unauthenticated
        self.unauthenticated = 0
        self.throttle = AuthThrottle(clock)
        self.on_probation = 0  # connections that found every place taken, so far

    def take_place(self) -> bool:
        """A place for a new unauthenticated connection; False if none is free."""
        if self.unauthenticated >= self.max_unauthenticated:
            self.on_probation += 1
            if self.on_probation % 100 == 1:
                # One line per hundred: a flood must not flood the log.
                log.warn(
                    "{count} connection(s) so far found all {limit} places for unauthenticated"
                    " connections taken on the command port",
                    count=self.on_probation,
                    limit=self.max_unauthenticated,
                )
            return False
        self.unauthenticated += 1
        return True

    def free_place(self) -> None:
        self.unauthenticated -= 1


TOO_MANY_UNAUTHENTICATED = (
    "ERR too many unauthenticated connections; send AUTH <token> as the first line, or try again later"
)


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
        auth: TcpAuth | None = None,
    ) -> None:
        self._commands = commands
        self._auth = auth
        self._authenticated = auth is None
        self._failed_auth = 0
        self._peer = "?"
        # Holds one of the places for unauthenticated connections; without
        # one, the connection is on probation (see TcpAuth).
        self._holds_place = False
        self._auth_timer: IDelayedCall | None = None
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
        peer = self.transport.getPeer()
        self._peer = str(getattr(peer, "host", None) or "local")
        if self._auth is not None:
            self._holds_place = self._auth.take_place()
            deadline = self._auth.timeout if self._holds_place else min(OVER_CAP_GRACE, self._auth.timeout)
            self._auth_timer = self._clock.callLater(deadline, self._auth_expired)

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
        self._leave_unauthenticated()

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
        if not self._authenticated and not self._holds_place and verb != "AUTH":
            return self._refuse(TOO_MANY_UNAUTHENTICATED)
        if verb == "AUTH":
            return self._check_auth(argument.strip())
        if not self._authenticated and verb not in _OPEN_VERBS:
            if verb == "SESSION":
                return "ERR authentication required: send AUTH <token> before SESSION"
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

    def _check_auth(self, given: str) -> str:
        auth = self._auth
        if auth is None:
            return "OK no token is needed here"
        throttle = auth.throttle
        wait = throttle.wait(self._peer)
        if wait > 0:
            # Not even compared: a guess while waiting must learn nothing.
            throttle.refused(self._peer)
            return self._refuse(
                f"ERR too many wrong tokens from {self._peer}; AUTH is refused for {math.ceil(wait)} s more"
            )
        if given and same(given, auth.token):
            throttle.succeeded(self._peer)
            self._authenticated = True
            self._leave_unauthenticated()
            return "OK authenticated"
        self._failed_auth += 1
        wait = throttle.failed(self._peer)
        if wait > 0:
            return self._refuse(
                f"ERR wrong token; too many from {self._peer}, so AUTH is refused for {math.ceil(wait)} s"
            )
        if not self._authenticated and not self._holds_place:
            return self._refuse("ERR wrong token")
        if self._failed_auth >= 3:
            return self._refuse("ERR wrong token; closing after 3 attempts")
        return "ERR wrong token"

    def _refuse(self, reply: str) -> str:
        """Send *reply* and close; for _answer to return."""
        self._send(reply)
        self._close()
        return ""

    def _auth_expired(self) -> None:
        self._auth_timer = None
        if self._authenticated or self._closing:
            return
        if self._holds_place:
            assert self._auth is not None
            self._refuse(f"ERR no AUTH within {self._auth.timeout:g} s; closing")
        else:
            self._refuse(TOO_MANY_UNAUTHENTICATED)

    def _leave_unauthenticated(self) -> None:
        if self._auth_timer is not None and self._auth_timer.active():
            self._auth_timer.cancel()
        self._auth_timer = None
        if self._holds_place:
            self._holds_place = False
            assert self._auth is not None
            self._auth.free_place()

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
        auth_timeout: float = Settings.tcp_auth_timeout,
        max_unauthenticated: int = Settings.tcp_max_unauthenticated,
    ) -> None:
        self.commands = commands
        self.auth = (
            TcpAuth(token, clock, timeout=auth_timeout, max_unauthenticated=max_unauthenticated)
            if token is not None
            else None
        )
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
            auth=self.auth,
        )
        protocol.factory = self
        return protocol
