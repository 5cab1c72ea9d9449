"""The cost of one ``POST /api/jobs`` on the scheduler's reactor thread, in process.

    PYTHONPATH=<tree> python bench/request_path.py [--requests 5000] [--per-post 1] [--profile out.pstats]

Builds the real SchedulerService (the Site, the Guard, Klein's routes, the
dispatcher, the job store, the access log) and feeds whole HTTP requests
into one of its HTTP channels over an in-memory transport, with logging
going through twisted.logger's text observer to /dev/null as under twistd.
No sockets and no workers: what is timed is parsing, routing, checks,
the job's creation and recording (queued to the store's thread), the
audit entry, the answer and the access log line.  The figure is the
calling thread's CPU time (``time.thread_time``) per job, so the job
store's own thread and the kernel's socket work stay out of it.

Give another tree with PYTHONPATH to compare before and after; run the
two alternately a few times (``--rounds``), as the machine is shared.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    # After PYTHONPATH: the tree under test is the one given there.
    sys.path.append(str(Path(__file__).resolve().parent.parent))
    from in_process import jobs_post, memory_connection, quiet_service, timed_posts, tree_of_scheduler
    from twisted.internet import reactor

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--per-post", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", type=Path, help="write cProfile stats of the last round here")
    parser.add_argument("--access-log", default="-", help="as the scheduler's --access-log: '-' the main log, 'none'")
    args = parser.parse_args(argv)

    service = quiet_service(reactor, "request-path", access_log=args.access_log)
    request = jobs_post(args.per_post)
    channel, transport = memory_connection(service.http_limits)

    def round_of(count: int) -> float:
        # Kept alive: the answers go into the transport's buffer.
        return timed_posts(channel, transport, request, count) / (count * args.per_post) * 1e6

    round_of(200)  # warm-up
    rounds = [round_of(args.requests) for _ in range(args.rounds)]
    if args.profile is not None:
        profiler = cProfile.Profile()
        profiler.enable()
        round_of(args.requests)
        profiler.disable()
        profiler.dump_stats(str(args.profile))
    service.dispatcher.stop()
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
    # The job store's thread waits on a reactor that never ran: no clean stop to wait for.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
