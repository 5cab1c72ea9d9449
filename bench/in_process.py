"""What the in-process bench scripts share (request_path.py, request_floor.py, job_life.py).

The ``POST /api/jobs`` they send, an HTTP connection in memory to feed it
into, a timed round of such requests, and the real scheduler service with
its log written nowhere, as under twistd.

The scripts measure another tree through PYTHONPATH, whose own ``bench``
package may be older than this file: they import this module by its plain
name from their own folder (first on ``sys.path``), and it imports the
scheduler only inside its functions, from the tree under test.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any


def jobs_post(per_post: int = 1) -> bytes:
    """A whole ``POST /api/jobs`` of ``true``: one job, or a batch of *per_post*."""
    one: Any = {"command": "true"}
    body = json.dumps(one if per_post == 1 else [one] * per_post).encode()
    return (
        b"POST /api/jobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


def memory_connection(factory: Any) -> tuple[Any, Any]:
    """(protocol, transport): *factory*'s protocol for a client on loopback,
    connected to a StringTransport that keeps what it answers."""
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    peer = IPv4Address("TCP", "127.0.0.1", 40000)
    channel = factory.buildProtocol(peer)
    transport = StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 3000), peerAddress=peer)
    channel.makeConnection(transport)
    return channel, transport


def timed_posts(channel: Any, transport: Any, request: bytes, count: int) -> float:
    """Seconds of this thread's CPU to feed *request* into *channel* *count*
    times, kept alive; raises unless every one was answered 202."""
    transport.clear()
    started = time.thread_time()
    for _ in range(count):
        channel.dataReceived(request)
    elapsed = time.thread_time() - started
    answers = transport.value().count(b"HTTP/1.1 202 ")
    if answers != count:
        raise RuntimeError(f"{answers} of {count} requests answered 202: {transport.value()[-400:]!r}")
    return elapsed


def quiet_service(reactor: Any, prefix: str, **settings: Any) -> Any:
    """The real SchedulerService on free ports and a tasks.db of its own, logging
    through twisted.logger's text observer to /dev/null (the cost of a log line
    is in the figure, as under twistd)."""
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from scheduler.service import SchedulerService
    from scheduler.settings import Settings

    sink = open(os.devnull, "w")
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sink)], redirectStandardIO=False)
    folder = Path(tempfile.mkdtemp(prefix=f"bench-{prefix}-"))
    return SchedulerService(
        reactor,
        Settings(
            tasks_file=str(folder / "tasks.db"),
            tcp="tcp:0:interface=127.0.0.1",
            http="tcp:0:interface=127.0.0.1",
            queue_limit=10**9,
            **settings,
        ),
    )


def tree_of_scheduler() -> str:
    """The source tree the scheduler package was imported from."""
    import scheduler

    return str(Path(scheduler.__file__).resolve().parent.parent)
