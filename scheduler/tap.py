"""``twistd scheduler``: options and the service tree."""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import MutableMapping
from datetime import tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from twisted.application.service import IService
from twisted.python import usage

from scheduler.cron import local_zone
from scheduler.http_log import check_target
from scheduler.job_caps import parse_sizes
from scheduler.leader_lease import RENEW_EVERY
from scheduler.memory import settle_after_loads
from scheduler.settings import Settings
from scheduler.tasks import TaskError


def _zone(name: str) -> tzinfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise usage.UsageError(f"unknown time zone '{name}' (use a name like Europe/Berlin or UTC)") from None


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise ValueError("must be above 0")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("must be above 0")
    return value


def _public_url(text: str) -> str:
    if not text.startswith(("http://", "https://")) or len(text.split("/", 3)[2]) == 0:
        raise ValueError("must be an http:// or https:// URL, like https://scheduler.example.com")
    return text.rstrip("/")


def _lease(text: str) -> float:
    value = float(text)
    if value <= RENEW_EVERY:
        raise ValueError(f"must be above {RENEW_EVERY:g} (the lease is renewed every {RENEW_EVERY:g} s)")
    return value


_lease.coerceDoc = f"Seconds, above {RENEW_EVERY:g}."  # type: ignore[attr-defined]
_public_url.coerceDoc = "An http:// or https:// URL."  # type: ignore[attr-defined]
_positive.coerceDoc = "A number above 0."  # type: ignore[attr-defined]
_positive_int.coerceDoc = "An integer above 0."  # type: ignore[attr-defined]


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Runs the job scheduler: the TCP command port (ADD, LIST, REMOVE, ...), "
        "the HTTP API and dashboard with the workers' WebSocket, and the cron tick. "
        "Addresses are Twisted endpoint strings, e.g. tcp:5050:interface=127.0.0.1."
    )
    # Every default is Settings' own: one source for the defaults.
    optParameters: list[list[Any]] = [
        ["tcp", None, Settings.tcp, "Endpoint for the TCP command port."],
        ["http", None, Settings.http, "Endpoint for the HTTP API, dashboard and /ws/worker."],
        ["tasks-file", None, Settings.tasks_file, "The tasks file (JSON lines), relative to the working directory."],
        ["timezone", None, None, "Time zone of the cron schedules (default: this machine's zone)."],
        ["tcp-linger", None, Settings.tcp_linger, "Seconds a one-shot TCP connection waits for more lines before it is closed.", _positive],
        ["tcp-idle-timeout", None, Settings.tcp_idle_timeout, "Seconds an idle TCP SESSION connection stays open.", _positive],
        ["tcp-max-line", None, Settings.tcp_max_line, "Longest TCP command line, in bytes.", _positive_int],
        ["jobs-db", None, None, "SQLite database of job history (default: jobs.sqlite beside the tasks file)."],
        # PostgreSQL: a node of a cluster (see README); without them, embedded mode.
        ["db", None, None, "PostgreSQL URL (postgresql://user:password@host/db) for the job history and the leader lease, instead of jobs.sqlite; it carries a password, so prefer --db-file or SCHEDULER_DB."],
        ["db-file", None, None, "File (mode 0600) holding the PostgreSQL URL."],
        ["node-name", None, None, "This node's name in the cluster (default: host name and --http port)."],
        ["lease", None, Settings.lease, "Seconds of the leader lease, renewed about every second; a leader that cannot renew stops firing when it runs out.", _lease],
        ["access-log", None, Settings.access_log, "HTTP access log: '-' for the main log, 'none', or a file of its own (rotated at 10 MB, 5 kept)."],
        ["lost-after", None, Settings.lost_after, "Seconds a disconnected worker has to come back before its jobs are lost.", _positive],
        ["queue-limit", None, Settings.queue_limit, "Most jobs waiting for a worker; more are refused with an error.", _positive_int],
        ["output-cap", None, Settings.output_cap, "Bytes of output kept per job (the oldest are dropped first).", _positive_int],
        ["keep-jobs", None, Settings.keep_jobs, "Finished jobs kept per task in the history.", _positive_int],
        ["keep-days", None, Settings.keep_days, "Days finished jobs are kept in the history.", _positive],
        ["pools", None, None, "Named pools and their sizes, e.g. backups=2,db=4: the tasks naming a pool run at most that many jobs at once."],
        ["label-caps", None, None, "Caps on the jobs aimed at a label across all workers, e.g. gpu=4."],
        # Alerts.
        ["public-url", None, None, "The dashboard's address as people reach it, for the links in alerts (default: from --http, e.g. http://127.0.0.1:3000).", _public_url],
        ["alert-outbox-limit", None, Settings.alert_outbox_limit, "Most alerts waiting to be delivered; more are not queued (counted in /metrics and logged).", _positive_int],
        # Access.  Tokens only ever come from files or the environment.
        ["worker-token-file", None, None, "File with the token every worker must send (or set SCHEDULER_WORKER_TOKEN)."],
        ["worker-tokens-file", None, None, "File of '<worker name> <token>' lines; re-read when it changes, removed names are disconnected."],
        ["api-token-file", None, None, "File with the bearer token for /api and /metrics (or set SCHEDULER_API_TOKEN)."],
        ["tcp-token-file", None, None, "File with the token for AUTH on the command port (or set SCHEDULER_TCP_TOKEN)."],
        ["tokens-file", None, None, "File of named, scoped tokens: '<name> <scopes> <sha256 of the token> [tasks=<ids>] [labels=<labels>]' lines (or set SCHEDULER_TOKENS_FILE); re-read when it changes. `python -m scheduler.access_tokens` prints a token's hash."],
        ["proxy-user-header", None, None, "Header naming the person an authenticating proxy let through (e.g. X-Forwarded-User); trusted only from --trusted-proxies."],
        ["trusted-proxies", None, None, "Comma-separated addresses or networks of the authenticating proxies whose --proxy-user-header is believed."],
        ["proxy-scopes", None, Settings.proxy_scopes, "Scopes of a person the proxy names who has no '-' line of their own in the tokens file."],
        ["secrets-dir", None, None, "Folder of secrets, one file per secret (mode 0600), referenced as ${secret:NAME} in a task's command or env (or set SCHEDULER_SECRETS_DIR)."],
        ["keep-audit-days", None, Settings.keep_audit_days, "Days the audit log keeps its entries.", _positive],
        ["allowed-hosts", None, None, "Comma-separated extra Host names the HTTP port answers to ('*' for any); localhost and this machine's names are always allowed."],
        # Bounds.
        ["tcp-max-connections", None, Settings.tcp_max_connections, "Most open connections on the command port.", _positive_int],
        ["tcp-max-per-peer", None, Settings.tcp_max_per_peer, "Most open command-port connections from one address.", _positive_int],
        ["tcp-auth-timeout", None, Settings.tcp_auth_timeout, "Seconds a command-port connection has to AUTH (with a TCP token).", _positive],
        ["tcp-max-unauthenticated", None, Settings.tcp_max_unauthenticated, "Most command-port connections that have not AUTHed yet (with a TCP token); more must AUTH in their first line.", _positive_int],
        ["http-max-connections", None, Settings.http_max_connections, "Most open connections on the HTTP port (workers included).", _positive_int],
        ["http-max-per-peer", None, Settings.http_max_per_peer, "Most open HTTP connections from one address (workers behind one NAT share it).", _positive_int],
        ["http-max-body", None, Settings.http_max_body, "Largest HTTP request body in bytes (larger ones get 413).", _positive_int],
        ["http-request-timeout", None, Settings.http_request_timeout, "Seconds an HTTP client has to send a whole request (headers and body) after connecting or after the previous answer (else 408; WebSockets are exempt once open).", _positive],
        ["ws-max-message", None, Settings.ws_max_message, "Largest worker WebSocket message in bytes.", _positive_int],
        ["send-backlog", None, Settings.send_backlog, "Bytes queued for a peer that does not read what it is sent (beyond the socket's own buffer) before it is dropped; on every listener.", _positive_int],
        ["handshake-timeout", None, Settings.handshake_timeout, "Seconds a worker has for the WebSocket handshake and its hello.", _positive],
        ["ping-interval", None, Settings.ping_interval, "Seconds between WebSocket pings to each worker.", _positive],
        ["ping-timeout", None, Settings.ping_timeout, "Seconds without a pong before a worker is dropped.", _positive],
    ]

    def postOptions(self) -> None:
        self["tz"] = _zone(self["timezone"]) if self["timezone"] else local_zone()
        try:
            check_target(self["access-log"])
        except ValueError as error:
            raise usage.UsageError(str(error)) from None
        extra = {name.strip().lower() for name in (self["allowed-hosts"] or "").split(",") if name.strip()}
        self["allowed-hosts-set"] = extra
        try:
            self["pools-map"] = parse_sizes(self["pools"], "--pools")
            self["label-caps-map"] = parse_sizes(self["label-caps"], "--label-caps")
        except TaskError as error:
            raise usage.UsageError(str(error)) from None


def makeService(options: Options) -> IService:
    from scheduler.service import SchedulerService, StartupError

    # twistd builds the service, then forks to run in the background: the
    # job store's thread would not cross the fork (every job would wait
    # for ever) and SQLite connections must not.  Refuse rather than hang.
    parent = getattr(options, "parent", None)
    if parent is not None and not parent.get("nodaemon", True):
        print(
            "scheduler: run it in the foreground with `twistd -n scheduler` "
            "(under systemd, Docker or `nohup`): the job database cannot cross twistd's fork "
            "into the background",
            file=sys.stderr,
        )
        raise SystemExit(1)
    try:
        service = SchedulerService.from_options(options)
    except StartupError as error:
        # twistd would print a traceback; an operator needs the reason.
        print(f"scheduler: cannot start: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    forget_token_variables(os.environ)
    settle_collector()
    return service


# The cyclic collector's thresholds in the scheduler process (Python's are
# 700, 10, 10): see settle_collector.
GC_THRESHOLDS = (10_000, 10, 10)


def settle_collector() -> None:
    """Keep the garbage collector's full passes short and rare, once start-up is done.

    What start-up made (modules, routes, the tasks) lives as long as the
    process; frozen, the collector's passes no longer walk it.  Under a
    burst of 10,000 jobs, full passes otherwise held the reactor 90-190 ms
    at a time (docs/performance.md).  Jobs and messages make few cycles, so
    collecting less often costs little memory.  Here, not in the service:
    tests start many services in one process, and a frozen object is never
    collected.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    # And so again after each LOAD, for the tasks it brings.
    settle_after_loads()


def forget_token_variables(environ: MutableMapping[str, str]) -> None:
    """Drop SCHEDULER_*_TOKEN and SCHEDULER_DB (a password) from *environ* once Settings has read them.

    Nothing needs them after, and no process started from here may
    inherit them.  (A worker started beside the scheduler with the same
    environment, as under `make run`, drops them itself: worker.tap.)
    """
    for name in [name for name in environ if (name.startswith("SCHEDULER_") and name.endswith("_TOKEN")) or name == "SCHEDULER_DB"]:
        del environ[name]
