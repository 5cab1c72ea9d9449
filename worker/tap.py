"""``twistd worker``: options and the service tree."""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.application.service import IService
from twisted.python import usage


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Runs a worker agent: it dials out to the scheduler's WebSocket (so it works "
        "behind NAT), runs the shell commands it is given and streams their output back."
    )
    optParameters: list[list[Any]] = [
        ["url", None, "ws://127.0.0.1:3000/ws/worker", "The scheduler's worker WebSocket URL."],
        ["name", None, socket.gethostname(), "This worker's name (unique among workers)."],
        ["labels", None, "", "Comma-separated labels, for label:<label> targets."],
        ["slots", None, os.cpu_count() or 1, "Jobs run at once.", int],
        ["token-file", None, None, "File holding the worker token (or set WORKER_TOKEN)."],
        ["workdir", None, ".", "Working directory of jobs that do not set cwd."],
    ]


def makeService(options: Options) -> IService:
    raise SystemExit("worker: the agent is not built yet")
