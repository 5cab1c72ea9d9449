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
import time
from typing import Any


def main(argv: list[str]) -> int:
    from klein import Klein
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport
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

    body = json.dumps({"command": "true"}).encode()
    request = (
        b"POST /api/jobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    peer = IPv4Address("TCP", "127.0.0.1", 40000)
    channel = site.buildProtocol(peer)
    transport = StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 3000), peerAddress=peer)
    channel.makeConnection(transport)

    def round_of(count: int) -> float:
        transport.clear()
        started = time.thread_time()
        for _ in range(count):
            channel.dataReceived(request)
        elapsed = time.thread_time() - started
        answers = transport.value().count(b"HTTP/1.1 202 ")
        if answers != count:
            raise RuntimeError(f"{answers} of {count} requests answered 202: {transport.value()[-400:]!r}")
        return elapsed / count * 1e6

    round_of(200)  # warm-up
    rounds = [round_of(args.requests) for _ in range(args.rounds)]
    print(json.dumps({"stack": args.stack, "requests": args.requests, "us_per_request": sorted(rounds)[len(rounds) // 2], "rounds": rounds}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
