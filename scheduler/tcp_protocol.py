"""The command port's line protocol (port 5050) and its factory.

:class:`CommandLineProtocol` frames lines, answers them in order and decides
when to close; what a verb does is :class:`~scheduler.tcp_commands.TcpCommands`'s
business, and whether a connection may run it is
:class:`~scheduler.tcp_auth.ConnectionAuth`'s.  The protocol itself answers
only the verbs that act on the connection: AUTH (through ConnectionAuth),
SESSION and QUIT.

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
from dataclasses import dataclass
from typing import cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IConsumer,
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

from scheduler.access_tokens import Access
from scheduler.settings import Settings
from scheduler.tcp_auth import ConnectionAuth, TcpAuth
from scheduler.tcp_commands import TCP, VERBS, Chunks, Reply, TcpCommands, Verb, read_command
from scheduler.triggers import TriggeredBy

log = Logger()

_HTTP_START = re.compile(
    r"^(GET|POST|PUT|DELETE|HEAD|OPTIONS|PATCH|CONNECT|TRACE) \S", re.IGNORECASE
)


def _verb_of(raw: bytes | None) -> Verb | None:
    """The verb a framed line names, if it names one (None: overlong line)."""
    if raw is None:
        return None
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return VERBS.get(read_command(line)[0])


@dataclass
class _Slot:
    text: str | None = None
    # A reply of many lines, sent a chunk at a time (see _Stream).
    chunks: Chunks | None = None


# About what a streamed reply sends per reactor turn.
_TURN_BYTES = 16 * 1024


@implementer(IPushProducer)
class _Stream:
    """Sends a many-line reply a chunk per reactor turn, as fast as the peer reads.

    The first chunk goes out at once; each next one on a later turn, so
    other connections are served in between, and not while the transport
    has asked it to pause (its buffer full: a slow reader holds a chunk or
    two in memory, not the whole reply).
    """

    def __init__(self, protocol: CommandLineProtocol, chunks: Chunks, clock: IReactorTime) -> None:
        self._protocol = protocol
        self._chunks = chunks
        self._clock = clock
        self._paused = False
        self._done = False
        self._next: IDelayedCall | None = None

    def start(self) -> None:
        cast(IConsumer, self._protocol.transport).registerProducer(self, True)
        self._step()

    def _step(self) -> None:
        self._next = None
        budget = _TURN_BYTES
        while not self._paused and not self._done:
            try:
                chunk = next(self._chunks, None)
            except Exception:
                log.failure("a streamed reply failed")
                chunk = "ERR internal error (logged on the scheduler)"
                self._chunks = iter(())
            if chunk is None:
                self._finish()
                return
            data = chunk.encode("utf-8") + b"\n"
            self._protocol.transport.write(data)
            budget -= len(data)
            if budget <= 0:
                # The rest on a later turn (a short reply goes out in this one).
                if not self._paused and not self._done:
                    self._next = self._clock.callLater(0, self._step)
                return

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        cast(IConsumer, self._protocol.transport).unregisterProducer()
        self._protocol.stream_done()

    def pauseProducing(self) -> None:
        self._paused = True
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None

    def resumeProducing(self) -> None:
        if self._done or not self._paused:
            return
        self._paused = False
        self._next = self._clock.callLater(0, self._step)

    def stopProducing(self) -> None:
        # The connection is gone: nothing more to send.
        self.pauseProducing()
        self._done = True


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
        self._auth = ConnectionAuth(auth, clock, self._refuse)
        self._by = TCP
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
        # The many-line reply going out now, if any (it holds the first slot).
        self._stream: _Stream | None = None

    # -- framing -------------------------------------------------------

    def connectionMade(self) -> None:
        self._arm(self._idle_timeout)
        peer = self.transport.getPeer()
        host = str(getattr(peer, "host", None) or "local")
        self._auth.start(host)
        # Who changed a task or ran a job, in its revision or record.
        self._by = TriggeredBy("tcp", name=host, address=host)

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
        self._auth.stop()

    # -- answering -----------------------------------------------------

    def _process(self) -> None:
        while self._lines and not self._closing:
            self._flush()
            if not self._lines or self._closing:
                break  # a reply that finished in _flush went on with the lines
            raw = self._lines[0]
            if self._waiting:
                verb = _verb_of(raw)
                if verb is None or not verb.queues:
                    break  # anything else must see the pending changes first
            self._lines.popleft()
            slot = _Slot()
            self._waiting.append(slot)
            reply = self._answer(raw)
            if isinstance(reply, Deferred):
                reply.addCallback(self._replied, slot)
            elif isinstance(reply, str):
                slot.text = reply
            else:
                slot.chunks = reply
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
        while self._waiting and self._stream is None and not self._closing:
            head = self._waiting[0]
            if head.chunks is not None:
                # Stays first in line until its last chunk is out.
                self._stream = _Stream(self, head.chunks, self._clock)
                self._stream.start()
                return
            if head.text is None:
                return
            self._waiting.popleft()
            self._send(head.text)

    def stream_done(self) -> None:
        """The streamed reply at the head is out: on to the next."""
        self._stream = None
        self._waiting.popleft()
        self._process()

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
        word, argument = read_command(line)
        verb = VERBS.get(word)
        refusal = self._auth.refusal(word, verb is not None and verb.open_before_auth)
        if refusal is not None:
            return refusal
        if verb is not None and verb.handler is None:
            return self._answer_connection_verb(verb, argument)
        if "\0" in line:
            return "ERR line contains a NUL byte"
        try:
            return self._commands.answer(word, argument, self._by)
        except Exception:
            log.failure("command {line!r} failed", line=line[:200])
            return "ERR internal error (logged on the scheduler)"

    def _answer_connection_verb(self, verb: Verb, argument: str) -> str:
        """The verbs the table leaves to the connection (handler None)."""
        if verb.word == "AUTH":
            reply = self._auth.check(argument)
            caller = self._auth.caller
            if caller is not None and caller.name is not None:
                # Revisions and jobs name the token; the audit log keeps the address too.
                self._by = TriggeredBy("tcp", name=caller.name, address=self._by.address)
            return reply
        if verb.word == "SESSION":
            self._session = True
            return "OK session: the connection stays open; QUIT closes it"
        if verb.word == "QUIT":
            self._send("OK bye")
            self._close()
            return ""
        raise AssertionError(f"{verb.word} has no handler in the verb table nor in the protocol")

    def _refuse(self, reply: str) -> str:
        """Send *reply* and close; for _answer to return."""
        self._send(reply)
        self._close()
        return ""

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
        max_line: int = Settings.tcp_max_line,
        linger: float = Settings.tcp_linger,
        idle_timeout: float = Settings.tcp_idle_timeout,
        token: str | None = None,
        auth_timeout: float = Settings.tcp_auth_timeout,
        max_unauthenticated: int = Settings.tcp_max_unauthenticated,
        access: Access | None = None,
    ) -> None:
        self.commands = commands
        # The TCP token alone, or with the tokens file (access_tokens.Access).
        access = access if access is not None else Access(tcp_token=token)
        self.auth = (
            TcpAuth(access, clock, timeout=auth_timeout, max_unauthenticated=max_unauthenticated)
            if access.tcp_required
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
