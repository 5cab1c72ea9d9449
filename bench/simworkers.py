"""Many simulated workers in one process, speaking the real worker protocol.

Run by the benchmark with the project's interpreter (so it uses the same
``worker.agent`` and ``worker.connection`` as ``twistd worker``)::

    python bench/simworkers.py --url ws://127.0.0.1:3000/ws/worker --count 1000

The benchmark may run several of these side by side, each with its share
of the workers (``--first``: the index of its first worker's name), so
that one process's reactor does not start every job of a second one after
another (bench/common.py, ``SimWorkers(processes=N)``).

Each simulated worker is a real :class:`worker.agent.WorkerAgent` on a real
Autobahn connection (hello, welcome, pings every 20 s, run, started,
finished, ack); only the process runner is fake: a ``run`` "starts" at once
and "finishes" ``--hold`` seconds later with exit code 0, after writing
``--output`` to stdout (one chunk, on the reactor turn after its start) if
that is not empty.  Connections are opened with at most ``--in-flight``
handshakes pending at a time.

Reports go to stdout, one JSON object per line:

- ``{"event": "ready", "count": N, "seconds": S}`` once every worker has its welcome;
- ``{"event": "started", "job": J, "worker": W, "run_at": T1, "kernel_at": T0,
  "started_at": T2, "delay": D}`` for each job: when the frame holding its
  ``run`` was handed to the agent, when the kernel had received the data
  of the read that brought it (Linux's receive timestamp; null where there
  is none), when the worker started it (the ``at`` of its ``started``, or the
  ``startedAt`` of its ``finished`` if no ``started`` went first on that
  connection), both Unix time on the same clock the scheduler uses, and
  the run's ``delay`` (0 without one).  The scheduler computes the delay
  just before it sends the run, and the worker waits it out from when it
  reads the run, so ``run_at - (scheduled - delay)`` is the run's transit
  (the scheduler's send, the kernel, this process's queue) and
  ``started_at - (run_at + delay)`` how late this process's timer ran;
- ``{"event": "problem", "what": "..."}`` for failed or dropped connections;
- ``{"event": "counters", "sent": {...}, "received": {...}}`` in answer to a
  ``counters`` line on stdin: WebSocket ``frames``, ``messages`` and payload
  ``bytes`` so far over all the connections, sent (worker to scheduler) and
  received (scheduler to worker).  A frame holding ``{"type": "batch",
  "messages": [...]}`` counts as that many messages, any other as one;
  pings, pongs and closes are not counted.

A ``quit`` line (or end of file) on stdin stops the process.
"""

from __future__ import annotations

import argparse
import errno
import itertools
import json
import resource
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from autobahn.websocket.util import parse_url
from twisted.internet import main as _main
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.stdio import StandardIO
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from worker.agent import WorkerAgent
from worker.connection import WorkerClientFactory, WorkerProtocol
from worker.runner import OutputSink, RunResult

# The global reactor, typed loosely: its interfaces are zope's, not mypy's.
reactor: Any = _reactor
_pids = itertools.count(100_000)


class Control(LineReceiver):
    """stdin for commands, stdout for reports (written by the reactor, never blocking)."""

    delimiter = b"\n"

    def lineReceived(self, line: bytes) -> None:
        command = line.strip()
        if command == b"quit":
            self.stop()
        elif command == b"counters":
            emit({"event": "counters", "sent": sent.as_json(), "received": received.as_json()})

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.stop()

    def stop(self) -> None:
        global stopping
        if not stopping:
            stopping = True
            reactor.stop()


class Traffic:
    """Frames, messages and payload bytes one way, over every connection."""

    def __init__(self) -> None:
        self.frames = 0
        self.messages = 0
        self.bytes = 0

    def count(self, payload: bytes | str, messages: int | None = None) -> None:
        """One frame; *messages*: how many it holds, if the caller has decoded it already."""
        self.frames += 1
        self.bytes += len(payload.encode() if isinstance(payload, str) else payload)
        self.messages += messages_in(payload) if messages is None else messages

    def as_json(self) -> dict[str, int]:
        return {"frames": self.frames, "messages": self.messages, "bytes": self.bytes}


def messages_in(payload: bytes | str) -> int:
    """How many protocol messages one frame carries: a batch's length, else 1."""
    return max(1, len(decoded(payload)))


def decoded(payload: bytes | str) -> list[Any]:
    """The messages one frame carries: a batch's, else the frame's one (none if it is not JSON)."""
    try:
        value = json.loads(payload)
    except ValueError:
        return []
    if isinstance(value, dict) and value.get("type") == "batch" and isinstance(value.get("messages"), list):
        return list(value["messages"])
    return [value]


stopping = False
control = Control()
# Worker to scheduler, and scheduler to worker.
sent = Traffic()
received = Traffic()


def emit(event: dict[str, Any]) -> None:
    assert control.transport is not None
    control.transport.write(json.dumps(event).encode() + b"\n")


class FakeRun:
    """A JobRun stand-in: started at once, finished with exit 0 after ``hold`` seconds.

    With *output*, it writes that to stdout as one chunk on the reactor turn
    after its start (a real run's output never comes before its start is
    reported), and in any case before it finishes.
    """

    def __init__(self, hold: float, on_output: OutputSink, output: str = "") -> None:
        self.finished: Deferred[RunResult] = Deferred()
        self.pid: int | None = None
        self._hold = hold
        self._on_output = on_output
        self._output = output
        self._started_at = 0.0
        self._call: IDelayedCall | None = None
        self._output_call: IDelayedCall | None = None

    def start(self) -> None:
        self.pid = next(_pids)
        self._started_at = reactor.seconds()
        if self._output:
            self._output_call = reactor.callLater(0, self._write)
        self._call = reactor.callLater(self._hold, self._end, False)

    def cancel(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
            self._end(True)

    def _write(self) -> None:
        self._output_call = None
        self._on_output("stdout", self._output)

    def _end(self, cancelled: bool) -> None:
        if self._output_call is not None and self._output_call.active():
            self._output_call.cancel()
            self._write()
        self._call = None
        self.finished.callback(
            RunResult(
                exit_code=None if cancelled else 0,
                signal=15 if cancelled else None,
                timed_out=False,
                cancelled=cancelled,
                started_at=self._started_at,
                finished_at=reactor.seconds(),
            )
        )


def fake_runs(hold: float, output: str = "") -> Any:
    def make(
        command: str,
        on_output: OutputSink,
        *,
        env: Mapping[str, str] | None,
        cwd: str | None,
        timeout: float | None,
        kill_grace: float,
    ) -> FakeRun:
        return FakeRun(hold, on_output, output)

    return make


# Linux's receive timestamps (socket(7)): the kernel notes when each packet
# reached the socket, and recvmsg hands the time out with the data.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("qq")


def read_with_kernel_times(transport: Any, protocol: RecordingProtocol) -> None:
    """Make *transport* read with recvmsg, noting on *protocol* when the kernel
    received what each read returns (``kernel_at``), as Twisted's own
    ``doRead`` would otherwise read it with recv.

    So a run's arrival splits in two: until the kernel had it (the
    scheduler's send, loopback), and then until this process read it (this
    process's queue, and its wait for a core).  Where the kernel gives no
    time, ``kernel_at`` stays None.
    """
    sock = transport.getHandle()
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        return
    space = socket.CMSG_SPACE(_TIMESPEC.size)

    def do_read() -> object:
        try:
            data, ancillary, _flags, _address = sock.recvmsg(transport.bufferSize, space)
        except OSError as error:
            if error.args[0] in (errno.EAGAIN, errno.EWOULDBLOCK):
                return None
            return _main.CONNECTION_LOST
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= _TIMESPEC.size:
                seconds, nanoseconds = _TIMESPEC.unpack_from(value)
                protocol.kernel_at = seconds + nanoseconds / 1e9
        return transport._dataReceived(data)

    transport.doRead = do_read


class RecordingProtocol(WorkerProtocol):
    """The agent's wire, noting when each ``run`` arrives and when its job started.

    It also counts the frames, messages and bytes each way (``sent``,
    ``received``).
    """

    factory: RecordingFactory
    # When the kernel received the data of the last read (read_with_kernel_times).
    kernel_at: float | None = None

    def connectionMade(self) -> None:
        # Jobs with a started event on this connection and no finished yet.
        self._started: set[object] = set()
        # Each job run here and not yet reported started: when its run was
        # read, when the kernel had it, and its delay.
        self._runs: dict[object, tuple[float, float | None, float]] = {}
        read_with_kernel_times(self.transport, self)
        super().connectionMade()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        frame_at = time.time()
        messages = decoded(payload)
        received.count(payload, max(1, len(messages)))
        for message in messages:
            if isinstance(message, dict) and message.get("type") == "run":
                delay = message.get("delay")
                self._runs[message.get("job")] = (
                    frame_at,
                    self.kernel_at,
                    delay if isinstance(delay, int | float) else 0.0,
                )
        super().onMessage(payload, isBinary)

    def sendMessage(
        self,
        payload: bytes,
        isBinary: bool = False,
        fragmentSize: int | None = None,
        sync: bool = False,
        doNotCompress: bool = False,
    ) -> None:
        # Autobahn drops a message sent on a connection that is not open.
        if self.state == WorkerProtocol.STATE_OPEN:
            sent.count(payload)
        super().sendMessage(payload, isBinary, fragmentSize, sync, doNotCompress)

    def send(self, type: str, /, **fields: object) -> None:
        super().send(type, **fields)
        if type == "started":
            self._started.add(fields["job"])
            self._report_start(fields["job"], fields["at"])
        elif type == "finished":
            # A quick job's finished may stand for its started too.
            if fields["job"] in self._started:
                self._started.discard(fields["job"])
            elif fields.get("startedAt") is not None:
                self._report_start(fields["job"], fields["startedAt"])

    def _report_start(self, job: object, started_at: object) -> None:
        run_at, kernel_at, delay = self._runs.pop(job, (time.time(), None, 0.0))
        emit(
            {
                "event": "started",
                "job": job,
                "worker": self.factory.worker_name,
                "run_at": run_at,
                "kernel_at": kernel_at,
                "started_at": started_at,
                "delay": delay,
            }
        )

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        welcomed = self.factory.agent.welcomed
        super().onClose(wasClean, code, reason)
        self.factory.fleet.closed(self.factory, welcomed, f"{code}: {reason}")


class RecordingFactory(WorkerClientFactory):
    protocol = RecordingProtocol

    def __init__(self, fleet: Fleet, index: int, agent: WorkerAgent, url: str) -> None:
        super().__init__(agent, url, reactor=reactor)
        self.fleet = fleet
        self.index = index
        self.worker_name = fleet.name(index)


class Fleet:
    """Opens and keeps ``count`` worker connections."""

    def __init__(
        self,
        url: str,
        count: int,
        prefix: str,
        hold: float,
        slots: int,
        in_flight: int,
        output: str = "",
        first: int = 0,
    ) -> None:
        _secure, host, port, _, _, _ = parse_url(url)
        self.url = url
        self.endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=60)
        self.count = count
        self.prefix = prefix
        self.slots = slots
        self.runs = fake_runs(hold, output)
        self.limit = in_flight
        # Names prefix-first .. prefix-(first + count - 1): this process's share.
        self.pending: deque[int] = deque(range(first, first + count))
        self.in_flight = 0
        self.welcomed: set[int] = set()
        self.ready = False
        self.began = time.perf_counter()

    def name(self, index: int) -> str:
        return f"{self.prefix}-{index}"

    def start(self) -> None:
        self.began = time.perf_counter()
        self.fill()

    def fill(self) -> None:
        while self.pending and self.in_flight < self.limit:
            self.connect(self.pending.popleft())

    def connect(self, index: int) -> None:
        self.in_flight += 1
        agent = WorkerAgent(
            reactor,
            self.runs,
            name=self.name(index),
            slots=self.slots,
            workdir="/",
            on_welcome=lambda: self.on_welcome(index),
        )
        factory = RecordingFactory(self, index, agent, self.url)
        self.endpoint.connect(factory).addErrback(self.failed, index)

    def on_welcome(self, index: int) -> None:
        if index in self.welcomed:
            return
        self.welcomed.add(index)
        self.in_flight -= 1
        if not self.ready and len(self.welcomed) == self.count:
            self.ready = True
            emit({"event": "ready", "count": self.count, "seconds": time.perf_counter() - self.began})
        self.fill()

    def failed(self, failure: Failure, index: int) -> None:
        emit({"event": "problem", "what": f"{self.name(index)}: connect failed: {failure.getErrorMessage()}"})
        self.in_flight -= 1
        self.retry(index)

    def closed(self, factory: RecordingFactory, welcomed: bool, why: str) -> None:
        index = factory.index
        emit({"event": "problem", "what": f"{self.name(index)}: connection closed ({why})"})
        if index in self.welcomed:
            self.welcomed.discard(index)
        else:
            self.in_flight -= 1
        if not stopping:
            self.retry(index)

    def retry(self, index: int) -> None:
        def again() -> None:
            self.pending.append(index)
            self.fill()

        reactor.callLater(0.5, again)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--prefix", default="sim")
    parser.add_argument("--first", type=int, default=0, help="the index in the first worker's name")
    parser.add_argument("--hold", type=float, default=0.02, help="seconds a fake job runs")
    parser.add_argument("--slots", type=int, default=1)
    parser.add_argument("--in-flight", type=int, default=50, help="handshakes pending at once")
    parser.add_argument("--output", default="", help="one stdout chunk each fake job writes (default: none)")
    args = parser.parse_args()

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(LogLevel.warn)])],
        redirectStandardIO=False,
    )
    fleet = Fleet(
        args.url, args.count, args.prefix, args.hold, args.slots, args.in_flight, args.output, first=args.first
    )
    StandardIO(control)
    reactor.callWhenRunning(fleet.start)
    reactor.run()


if __name__ == "__main__":
    main()
