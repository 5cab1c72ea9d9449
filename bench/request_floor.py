"""What the kept HTTP stack costs per request with nothing behind it.

    python bench/request_floor.py [--requests 5000] [--rounds 3] [--stack klein|web]

The issue's decision keeps Klein and Twisted Web.  This feeds the same
whole ``POST /api/jobs`` request that ``request_path.py`` sends into a
bare ``Site`` over an in-memory transport, kept alive, answering 202 with
a small JSON body: ``klein`` through one Klein route that reads the body
(``json.loads``) and answers (``json.dumps``), ``web`` through a plain
``twisted.web.resource.Resource`` doing the same.  No Guard, no access
log, no dispatcher.  The figure is the thread's CPU time per request;
under ``valgrind --tool=cachegrind`` the instruction counts of two sizes
give a figure the machine's load does not move (see docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def main(argv: list[str]) -> int:
    from in_process import jobs_post, memory_connection, timed_posts
    from klein import Klein
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stack", choices=("klein", "web"), default="klein")
    args = parser.parse_args(argv)

    answer = {"id": 1, "status": "queued", "command": "true", "target": "any"}

    def handle(request: Any) -> bytes:
        data = json.loads(request.content.read())
        if not isinstance(data, dict):
            request.setResponseCode(400)
            return b"{}"
        request.setResponseCode(202)
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(answer).encode()

    root: Any
    if args.stack == "klein":
        app = Klein()
        app.route("/api/jobs", methods=["POST"])(handle)
        root = app.resource()
    else:

        class Jobs(Resource):
            isLeaf = True

            def render_POST(self, request: Any) -> bytes:
                return handle(request)

        root = Resource()
        root.putChild(b"api", Resource())
        root.children[b"api"].putChild(b"jobs", Jobs())
    site = Site(root)
    site.log = lambda request: None  # no access log: the floor

    request = jobs_post()
    channel, transport = memory_connection(site)

    def round_of(count: int) -> float:
        return timed_posts(channel, transport, request, count) / count * 1e6

    round_of(200)  # warm-up
    rounds = [round_of(args.requests) for _ in range(args.rounds)]
    print(json.dumps({"stack": args.stack, "requests": args.requests, "us_per_request": sorted(rounds)[len(rounds) // 2], "rounds": rounds}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
