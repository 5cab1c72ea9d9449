"""Everything ``twistd scheduler`` can be told, with the defaults in one place."""

from __future__ import annotations

import os
import resource
import socket
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, tzinfo
from pathlib import Path
from typing import Any

from twisted.internet import endpoints
from twisted.logger import Logger

from scheduler.access import AccessError, WorkerTokens, listen_interface, read_token
from scheduler.access_tokens import Access, TokenBook, parse_networks, parse_scopes
from scheduler.job_secrets import SecretBook
from scheduler.leader_lease import LEASE_SECONDS
from scheduler.limits import SEND_BACKLOG
from scheduler.worker_messages import PING_INTERVAL, PING_TIMEOUT

log = Logger()

# Open files kept free of connections: the job database with its -wal and
# -shm, the tasks file being rewritten, the logs, the listeners, stdio,
# the reactor's own.  Connections past the file limit do not just fail:
# accept() fails with EMFILE and the listener refuses everyone after.
FD_HEADROOM = 64


def fit_connection_caps(tcp: int, http: int, file_limit: int) -> tuple[int, int]:
    """The TCP and HTTP connection caps cut to fit *file_limit* open files."""
    if file_limit == resource.RLIM_INFINITY:
        return tcp, http
    room = max(file_limit - FD_HEADROOM, 2)
    tcp = min(tcp, room // 2)
    return tcp, min(http, room - tcp)


@dataclass
class Settings:
    tasks_file: str = "tasks.db"
    tcp: str = "tcp:5050:interface=127.0.0.1"
    http: str = "tcp:3000:interface=127.0.0.1"
    tz: tzinfo = UTC
    jobs_db: str | None = None
    # The command port.
    tcp_linger: float = 0.3
    tcp_idle_timeout: float = 300.0
    tcp_max_line: int = 32768
    tcp_max_connections: int = 64
    tcp_max_per_peer: int = 16
    # With a TCP token: seconds to AUTH, and places for connections that
    # have not (see tcp_auth.TcpAuth).
    tcp_auth_timeout: float = 10.0
    tcp_max_unauthenticated: int = 16
    # HTTP and the workers' WebSocket.
    http_max_connections: int = 20000
    http_max_per_peer: int = 10000
    http_max_body: int = 1024 * 1024
    # From connecting (or the previous answer) to a whole request, headers
    # and body; see http_guard.DeadlineChannel.
    http_request_timeout: float = 30.0
    ws_max_message: int = 2 * 1024 * 1024
    # Bytes queued for a peer that does not read, on every listener.
    send_backlog: int = SEND_BACKLOG
    handshake_timeout: float = 10.0
    ping_interval: float = PING_INTERVAL
    ping_timeout: float = PING_TIMEOUT
    allowed_hosts: set[str] = field(default_factory=set)
    access_log: str = "-"  # the main log; "none", or a file of its own
    # Jobs.
    lost_after: float = 90.0
    queue_limit: int = 10_000
    output_cap: int = 1024 * 1024
    keep_jobs: int = 100
    keep_days: float = 7.0
    # Load shaping (scheduler.job_caps): pool sizes, and caps on the jobs
    # aimed at a label, by name.
    pools: Mapping[str, int] = field(default_factory=dict)
    label_caps: Mapping[str, int] = field(default_factory=dict)
    # Alerts: the outbox's bound (pending alerts; more are refused and
    # counted), and the dashboard's address for the links alerts carry
    # (None: derived from the --http endpoint, see default_public_url).
    alert_outbox_limit: int = 10_000
    public_url: str | None = None
    # Access (see SECURITY.md); never from the command line.
    tcp_token: str | None = None
    api_token: str | None = None
    worker_tokens: WorkerTokens = field(default_factory=WorkerTokens)
    # Named, scoped tokens (--tokens-file) and the people a proxy names.
    tokens: TokenBook = field(default_factory=TokenBook)
    proxy_user_header: str | None = None
    trusted_proxies: str | None = None
    proxy_scopes: str = "read"
    # Secrets resolved into run messages (--secrets-dir).
    secrets: SecretBook = field(default_factory=SecretBook)
    # The audit log's retention.
    keep_audit_days: float = 90.0
    # PostgreSQL (--db, --db-file or $SCHEDULER_DB): the job history there and
    # the leader lease; None is embedded mode (jobs.sqlite).  The node's name
    # (None: host name and HTTP port) and the lease's length in seconds.
    db_url: str | None = None
    node_name: str | None = None
    lease: float = LEASE_SECONDS

    def access(self) -> Access:
        """Who may do what on both ports; raises AccessError for a bad proxy option."""
        return Access(
            self.tokens,
            api_token=self.api_token,
            tcp_token=self.tcp_token,
            proxy_header=self.proxy_user_header,
            trusted_proxies=parse_networks(self.trusted_proxies),
            proxy_scopes=parse_scopes(self.proxy_scopes, "--proxy-scopes"),
        )

    @classmethod
    def from_options(
        cls, options: Any, env: Mapping[str, str] = os.environ, file_limit: int | None = None
    ) -> Settings:
        """From parsed ``twistd scheduler`` options; raises AccessError.

        The connection caps are cut to fit *file_limit* (default: this
        process's soft RLIMIT_NOFILE), and a warning says so.
        """
        workers = WorkerTokens(
            shared=read_token(options["worker-token-file"], env, "SCHEDULER_WORKER_TOKEN", "worker token"),
            path=options["worker-tokens-file"],
        )
        workers.load()
        tokens = TokenBook(options["tokens-file"] or env.get("SCHEDULER_TOKENS_FILE") or None)
        tokens.load()
        secrets = SecretBook(options["secrets-dir"] or env.get("SCHEDULER_SECRETS_DIR") or None)
        secrets.load()
        if file_limit is None:
            file_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        asked = (options["tcp-max-connections"], options["http-max-connections"])
        tcp_cap, http_cap = fit_connection_caps(*asked, file_limit)
        if (tcp_cap, http_cap) != asked:
            log.warn(
                "this process may open only {limit} files (ulimit -n): serving at most {tcp} command-port "
                "and {http} HTTP connections instead of {asked_tcp} and {asked_http}; raise the limit to allow more",
                limit=file_limit,
                tcp=tcp_cap,
                http=http_cap,
                asked_tcp=asked[0],
                asked_http=asked[1],
            )
        return cls(
            tasks_file=options["tasks-file"],
            tcp=options["tcp"],
            http=options["http"],
            tz=options["tz"],
            jobs_db=options["jobs-db"],
            tcp_linger=options["tcp-linger"],
            tcp_idle_timeout=options["tcp-idle-timeout"],
            tcp_max_line=options["tcp-max-line"],
            tcp_max_connections=tcp_cap,
            tcp_max_per_peer=options["tcp-max-per-peer"],
            tcp_auth_timeout=options["tcp-auth-timeout"],
            tcp_max_unauthenticated=options["tcp-max-unauthenticated"],
            http_max_connections=http_cap,
            http_max_per_peer=options["http-max-per-peer"],
            http_max_body=options["http-max-body"],
            http_request_timeout=options["http-request-timeout"],
            ws_max_message=options["ws-max-message"],
            send_backlog=options["send-backlog"],
            handshake_timeout=options["handshake-timeout"],
            ping_interval=options["ping-interval"],
            ping_timeout=options["ping-timeout"],
            allowed_hosts=options["allowed-hosts-set"],
            access_log=options["access-log"],
            lost_after=options["lost-after"],
            queue_limit=options["queue-limit"],
            output_cap=options["output-cap"],
            keep_jobs=options["keep-jobs"],
            keep_days=options["keep-days"],
            pools=options["pools-map"],
            label_caps=options["label-caps-map"],
            alert_outbox_limit=options["alert-outbox-limit"],
            public_url=options["public-url"],
            tcp_token=read_token(options["tcp-token-file"], env, "SCHEDULER_TCP_TOKEN", "TCP token"),
            api_token=read_token(options["api-token-file"], env, "SCHEDULER_API_TOKEN", "API token"),
            worker_tokens=workers,
            tokens=tokens,
            proxy_user_header=options["proxy-user-header"],
            trusted_proxies=options["trusted-proxies"],
            proxy_scopes=options["proxy-scopes"],
            secrets=secrets,
            keep_audit_days=options["keep-audit-days"],
            db_url=read_db_url(options["db"], options["db-file"], env),
            node_name=options["node-name"],
            lease=options["lease"],
        )


def read_db_url(given: str | None, path: str | None, env: Mapping[str, str]) -> str | None:
    """The PostgreSQL URL from --db, else the --db-file, else $SCHEDULER_DB; None for embedded mode.

    The file holds a password: like a secret's, it must be readable by its
    owner only.  Raises AccessError, which names the file, never the URL.
    """
    if given and path:
        raise AccessError("give --db or --db-file, not both")
    if path:
        try:
            found = os.stat(path)
            if found.st_mode & 0o077:
                raise AccessError(
                    f"{path} can be read by others than the scheduler's user (mode {stat.S_IMODE(found.st_mode):04o}): "
                    f"run chmod 600 {path}"
                )
            if found.st_uid != os.geteuid():
                raise AccessError(f"{path} belongs to another user (uid {found.st_uid}): the scheduler's user must own it")
            url = Path(path).read_text(encoding="utf-8").strip()
        except OSError as error:
            raise AccessError(f"cannot read the database URL file {path}: {error.strerror or error}") from None
        if not url:
            raise AccessError(f"the database URL file {path} is empty")
    else:
        url = (given or env.get("SCHEDULER_DB", "")).strip()
        if not url:
            return None
    if not url.startswith(("postgresql://", "postgres://")):
        raise AccessError("the database URL must start with postgresql:// (as in postgresql://user:password@host/db)")
    return url


def default_public_url(http: str) -> str:
    """Where people reach the dashboard, as far as the --http endpoint tells:
    its interface (this machine's name if it listens on all of them) and port."""
    args, kw = endpoints._parse(http)
    kind = str(args[0]).lower()
    interface = listen_interface(http)
    if kind not in ("tcp", "tcp6", "ssl"):
        # A local socket, or one systemd hands over: a proxy in front says where.
        return "http://localhost"
    port = kw.get("port", args[1] if len(args) > 1 else "3000")
    if interface is None:
        host = "localhost"
    elif interface in ("", "0.0.0.0", "::"):
        host = socket.getfqdn().lower() or "localhost"
    else:
        host = f"[{interface}]" if ":" in interface else interface
    return f"{'https' if kind == 'ssl' else 'http'}://{host}:{port}"
