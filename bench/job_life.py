"""A job's whole life on the scheduler, in process: its POST, its `run`, its end, its records.

    PYTHONPATH=<tree> python bench/job_life.py [--requests 2000] [--rounds 3] [--per-post 1]
    python bench/count_instructions.py --tree <tree> bench/job_life.py [--per-post 100]

``request_path.py`` stops at the answer to the POST.  This goes on to the
end of each job: the real SchedulerService (the Site, the Guard, Klein,
the dispatcher, the job store on its own thread with SQLite, the access
log into twisted.logger's text observer on /dev/null) with workers (four of
eight slots unless told) connected to its WorkerServerFactory in memory -- the
protocol object with ``sendMessage`` captured, as
tests/test_worker_conformance.py does, so no sockets and no WebSocket
framing.  The reactor runs: jobs are POSTed into an HTTP channel, and
each ``run`` the scheduler sends is answered in the next turn with the
``finished`` a protocol 2 worker sends for a job that ends within its
50 ms (no ``started`` before it).  A round ends when the scheduler has
sent the ``ack`` of every job, that is when every end is on disk.

The figure is the process's CPU time per job (both threads), so it
moves with the machine's load; under ``count_instructions.py`` the
instruction count of the whole process per job does not.  The fake
workers' share is small (a JSON document per message).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def main(argv: list[str]) -> int:
    # After PYTHONPATH: the tree under test is the one given there.
    sys.path.append(str(Path(__file__).resolve().parent.parent))
    from in_process import jobs_post, memory_connection, quiet_service, tree_of_scheduler
    from twisted.internet import reactor

    from scheduler.worker_protocol import WorkerServerProtocol

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="POSTs per round")
    parser.add_argument("--per-post", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--slots", type=int, default=8, help="per worker")
    args = parser.parse_args(argv)

    service = quiet_service(reactor, "job-life")
    request = jobs_post(args.per_post)
    channel, transport = memory_connection(service.http_limits)

    class Round:
        """The jobs of the round in progress: how many to post, how many acknowledged."""

        posted = 0
        to_post = 0
        acked = 0
        done: Any = None

    state = Round()

    def post() -> None:
        # Keep the workers' slots full: a POST whenever a job has ended.
        while state.posted < state.to_post and state.posted - state.acked < args.workers * args.slots:
            channel.dataReceived(request)
            state.posted += args.per_post

    class Worker:
        def __init__(self, name: str) -> None:
            protocol = WorkerServerProtocol()
            protocol.factory = service.worker_factory
            protocol.state = protocol.STATE_OPEN
            protocol.peer = f"tcp:127.0.0.1:{41000 + len(workers)}"
            protocol.sendMessage = self.received  # type: ignore[method-assign]
            protocol.sendPing = lambda *a, **k: None  # type: ignore[method-assign]
            protocol._allowed_name = None
            self.protocol = protocol
            self.welcomed = False
            protocol.onOpen()
            hello = {
                "type": "hello",
                "protocol": 2,
                "name": name,
                "labels": [],
                "slots": args.slots,
                "instance": f"bench-{name}",
                "time": time.time(),
                "jobs": [],
            }
            protocol.onMessage(json.dumps(hello).encode(), False)

        def received(self, payload: bytes, isBinary: bool = False, *rest: Any, **more: Any) -> None:
            frame = json.loads(payload)
            messages = frame["messages"] if frame.get("type") == "batch" else [frame]
            ends = []
            for message in messages:
                kind = message.get("type")
                if kind == "welcome":
                    self.welcomed = True
                elif kind == "run":
                    now = time.time()
                    ends.append(
                        {
                            "type": "finished",
                            "job": message["job"],
                            "exitCode": 0,
                            "signal": None,
                            "timedOut": False,
                            "cancelled": False,
                            "seq": 0,
                            "startedAt": now,
                            "finishedAt": now,
                        }
                    )
                elif kind == "ack":
                    state.acked += len(message["jobs"])
            if ends:
                answer = ends[0] if len(ends) == 1 else {"type": "batch", "messages": ends}
                reactor.callLater(0, self.protocol.onMessage, json.dumps(answer).encode(), False)
            if state.acked >= state.to_post and state.done is not None:
                done, state.done = state.done, None
                reactor.callLater(0, done)
            else:
                post()

    workers: list[Worker] = []
    for index in range(args.workers):
        workers.append(Worker(f"w{index + 1}"))
    results: list[float] = []
    sizes = [200 * args.per_post] + [args.requests * args.per_post] * args.rounds  # a warm-up, then the rounds

    def next_round() -> None:
        if not all(worker.welcomed for worker in workers):
            reactor.stop()
            raise RuntimeError("a simulated worker was not welcomed")
        if results or state.to_post:
            elapsed = time.process_time() - started[0]
            results.append(elapsed / (state.to_post - started[1]) * 1e6)
        if not sizes:
            reactor.stop()
            return
        started[:] = [time.process_time(), state.to_post]
        state.to_post += sizes.pop(0)
        state.done = next_round
        post()

    started = [0.0, 0]
    # The welcomes go out at the end of the first turn.
    reactor.callWhenRunning(reactor.callLater, 0.05, next_round)
    reactor.run()
    answers = transport.value().count(b"HTTP/1.1 202 ")
    if answers * args.per_post != state.to_post:
        raise RuntimeError(f"{answers} requests answered 202 of {state.to_post // args.per_post}")
    rounds = results[1:]  # the warm-up left out
    print(
        json.dumps(
            {
                "tree": tree_of_scheduler(),
                "per_post": args.per_post,
                "requests": args.requests,
                "us_per_job": sorted(rounds)[len(rounds) // 2],
                "rounds": rounds,
            }
        )
    )
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
