"""Many simulated workers in one process, speaking the real worker protocol.

Run by the benchmark with the project's interpreter (so it uses the same
``worker.agent`` and ``worker.connection`` as ``twistd worker``)::

    python bench/simworkers.py --url ws://127.0.0.1:3000/ws/worker --count 1000

Each simulated worker is a real :class:`worker.agent.WorkerAgent` on a real
Autobahn connection (hello, welcome, pings every 20 s, run, started,
finished, ack); only the process runner is fake: a ``run`` "starts" at once
and "finishes" ``--hold`` seconds later with exit code 0.  Connections are
opened with at most ``--in-flight`` handshakes pending at a time.

Reports go to stdout, one JSON object per line:

- ``{"event": "ready", "count": N, "seconds": S}`` once every worker has its welcome;
- ``{"event": "started", "job": J, "worker": W, "run_at": T1, "started_at": T2}``
  for each job: when its ``run`` frame arrived and when ``started`` was sent
  (Unix time, the same clock the scheduler uses);
- ``{"event": "problem", "what": "..."}`` for failed or dropped connections.

A ``quit`` line (or end of file) on stdin stops the process.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import sys
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from autobahn.websocket.util import parse_url
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
        if line.strip() == b"quit":
            self.stop()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.stop()

    def stop(self) -> None:
        global stopping
        if not stopping:
            stopping = True
            reactor.stop()


stopping = False
control = Control()


def emit(event: dict[str, Any]) -> None:
    assert control.transport is not None
    control.transport.write(json.dumps(event).encode() + b"\n")


class FakeRun:
    """A JobRun stand-in: started at once, finished with exit 0 after ``hold`` seconds."""

    def __init__(self, hold: float) -> None:
        self.finished: Deferred[RunResult] = Deferred()
        self.pid: int | None = None
        self._hold = hold
        self._started_at = 0.0
        self._call: IDelayedCall | None = None

    def start(self) -> None:
        self.pid = next(_pids)
        self._started_at = reactor.seconds()
        self._call = reactor.callLater(self._hold, self._end, False)

    def cancel(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
            self._end(True)

    def _end(self, cancelled: bool) -> None:
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


def fake_runs(hold: float) -> Any:
    def make(
        command: str,
        on_output: OutputSink,
        *,
        env: Mapping[str, str] | None,
        cwd: str | None,
        timeout: float | None,
        kill_grace: float,
    ) -> FakeRun:
        return FakeRun(hold)

    return make


class RecordingProtocol(WorkerProtocol):
    """The agent's wire, noting when each ``run`` arrives and its ``started`` leaves."""

    factory: RecordingFactory
    _frame_at = 0.0

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self._frame_at = time.time()
        super().onMessage(payload, isBinary)

    def send(self, type: str, /, **fields: object) -> None:
        super().send(type, **fields)
        if type == "started":
            emit(
                {
                    "event": "started",
                    "job": fields["job"],
                    "worker": self.factory.worker_name,
                    "run_at": self._frame_at,
                    "started_at": time.time(),
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

    def __init__(self, url: str, count: int, prefix: str, hold: float, slots: int, in_flight: int) -> None:
        _secure, host, port, _, _, _ = parse_url(url)
        self.url = url
        self.endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=60)
        self.count = count
        self.prefix = prefix
        self.slots = slots
        self.runs = fake_runs(hold)
        self.limit = in_flight
        self.pending: deque[int] = deque(range(count))
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
    parser.add_argument("--hold", type=float, default=0.02, help="seconds a fake job runs")
    parser.add_argument("--slots", type=int, default=1)
    parser.add_argument("--in-flight", type=int, default=50, help="handshakes pending at once")
    args = parser.parse_args()

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(LogLevel.warn)])],
        redirectStandardIO=False,
    )
    fleet = Fleet(args.url, args.count, args.prefix, args.hold, args.slots, args.in_flight)
    StandardIO(control)
    reactor.callWhenRunning(fleet.start)
    reactor.run()


if __name__ == "__main__":
    main()
