"""``twistd worker``: options and the service tree."""

from __future__ import annotations

import math
import os
import socket
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any, cast

from autobahn.websocket.util import parse_url
from twisted.application.internet import ClientService
from twisted.application.service import IService
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import optionsForClientTLS
from twisted.python import usage

from worker.agent import WorkerAgent, job_runs
from worker.backoff import Backoff
from worker.connection import Rotation, WorkerClientFactory
from worker.output_buffer import DEFAULT_OUTPUT_BUFFER
from worker.runner import RunnerReactor
from worker.service import WorkerService

__all__ = ["Options", "SchedulerUrl", "drop_secrets", "endpoint_for", "makeService", "parse_urls"]


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Runs a worker agent: it dials out to the scheduler's WebSocket (so it works "
        "behind NAT), runs the shell commands it is given and streams their output back."
    )
    optParameters: list[list[Any]] = [
        [
            "url",
            None,
            "ws://127.0.0.1:3000/ws/worker",
            "The scheduler's worker WebSocket URL; several (comma-separated) for a cluster: "
            "each reconnect dials the next.",
        ],
        ["name", None, socket.gethostname(), "This worker's name (unique among workers)."],
        ["labels", None, "", "Comma-separated labels, for label:<label> targets."],
        ["slots", None, os.cpu_count() or 1, "Jobs run at once.", int],
        ["token-file", None, None, "File holding the worker token (or set WORKER_TOKEN)."],
        ["workdir", None, ".", "Working directory of jobs that do not set cwd."],
        [
            "output-buffer",
            None,
            DEFAULT_OUTPUT_BUFFER,
            "Bytes of unacknowledged output kept per job for resending after a reconnect; "
            "beyond it the oldest output is dropped (and a marker says how much).",
            int,
        ],
        ["kill-grace", None, 5.0, "Seconds between SIGTERM and SIGKILL on timeout, cancel or stop.", float],
    ]

    def postOptions(self) -> None:
        self["urls"] = urls = parse_urls(self["url"])
        # The first, for those who know of one URL only.
        self["secure"], self["host"], self["port"] = urls[0].secure, urls[0].host, urls[0].port

        self["name"] = self["name"].strip()
        if not self["name"]:
            raise usage.UsageError("--name must not be empty")
        self["labels"] = [label.strip() for label in self["labels"].split(",") if label.strip()]
        if self["slots"] < 1:
            raise usage.UsageError(f"--slots must be at least 1, got {self['slots']}")
        if self["output-buffer"] < 0:
            raise usage.UsageError(f"--output-buffer must be >= 0, got {self['output-buffer']}")
        if not math.isfinite(self["kill-grace"]) or self["kill-grace"] < 0:
            raise usage.UsageError(f"--kill-grace must be a number >= 0, got {self['kill-grace']}")

        workdir = os.path.abspath(self["workdir"])
        if not os.path.isdir(workdir):
            raise usage.UsageError(f"--workdir {workdir} is not a directory")
        self["workdir"] = workdir

        self["token"] = self._token()

    def _token(self) -> str | None:
        # Messages here never include the token itself, only where it came from.
        path = self["token-file"]
        if path is not None:
            try:
                with open(path, encoding="utf-8") as f:
                    token = f.read().strip()
            except OSError as e:
                raise usage.UsageError(f"--token-file {path}: {e.strerror or e}") from None
            except UnicodeDecodeError:
                raise usage.UsageError(f"--token-file {path}: not UTF-8 text") from None
            source = f"--token-file {path}"
            if not token:
                raise usage.UsageError(f"{source} is empty")
        else:
            token = os.environ.get("WORKER_TOKEN", "").strip()
            source = "WORKER_TOKEN"
            if not token:
                return None
        # It goes into an HTTP header line verbatim.
        if any(c.isspace() or not c.isprintable() for c in token):
            raise usage.UsageError(f"the token in {source} contains whitespace or control characters")
        return token


@dataclass(frozen=True, slots=True)
class SchedulerUrl:
    """One scheduler node's worker WebSocket, as ``--url`` gave it."""

    url: str
    secure: bool
    host: str
    port: int


def parse_urls(text: str) -> list[SchedulerUrl]:
    """``--url``'s comma-separated list; a UsageError naming the first bad URL."""
    urls = []
    for part in text.split(","):
        url = part.strip()
        if not url:
            raise usage.UsageError(f"--url {text!r}: an empty URL in the list")
        try:
            secure, host, port, _, _, _ = parse_url(url)
        except Exception as e:  # parse_url raises ValueError, urlparse others
            raise usage.UsageError(f"--url {url}: {e}") from None
        if not isinstance(port, int):
            raise usage.UsageError(f"--url {url}: Unix socket URLs are not supported")
        urls.append(SchedulerUrl(url, secure, host, port))
    return urls


# Seconds a dial may wait for TCP's connect.  A scheduler's machine or
# container that is gone (or came back at another address) answers nothing,
# not even a refusal: with Twisted's default of 30 s a worker would sit out
# half a minute before its next dial, or its next node's URL.
CONNECT_TIMEOUT = 5.0


def endpoint_for(reactor: Any, *, secure: bool, host: str, port: int) -> IStreamClientEndpoint:
    """Where ``ws://``/``wss://`` URLs connect.

    HostnameEndpoint rather than ``tcp:host:port``: it resolves names to
    IPv6 as well as IPv4 and needs no escaping of IPv6 literals.
    """
    tcp = HostnameEndpoint(reactor, host, port, timeout=CONNECT_TIMEOUT)
    if not secure:
        return tcp
    return wrapClientTLS(optionsForClientTLS(host), tcp)


def drop_secrets(environ: MutableMapping[str, str]) -> list[str]:
    """Remove the token variables from *environ*, which every job inherits.

    The worker's own token (read by Options already) and the scheduler's
    SCHEDULER_*_TOKEN, which reach a worker started with the scheduler's
    environment (``make run``, one env file for both): a job must not be
    able to print them.  Returns the names removed.
    """
    names = [
        name
        for name in environ
        if name == "WORKER_TOKEN" or (name.startswith("SCHEDULER_") and name.endswith("_TOKEN"))
    ]
    for name in names:
        del environ[name]
    return names


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    drop_secrets(os.environ)

    backoff = Backoff()
    agent = WorkerAgent(
        reactor,
        job_runs(cast(RunnerReactor, reactor)),
        name=options["name"],
        labels=options["labels"],
        slots=options["slots"],
        workdir=options["workdir"],
        kill_grace=options["kill-grace"],
        output_buffer=options["output-buffer"],
        # Reset only once the scheduler has accepted us, not on mere TCP
        # connect (see Backoff).
        on_welcome=backoff.reset,
    )
    urls: list[SchedulerUrl] = options["urls"]
    factory = WorkerClientFactory(
        agent, urls[0].url, token=options["token"], reactor=reactor, on_going_away=backoff.at_once
    )
    endpoints = Rotation(
        factory,
        [(each.url, endpoint_for(reactor, secure=each.secure, host=each.host, port=each.port)) for each in urls],
        clock=reactor,
    )
    connection = ClientService(endpoints, factory, retryPolicy=backoff, clock=reactor)
    return WorkerService(agent, connection)
