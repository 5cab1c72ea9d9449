"""Who may do what: tokens, the Host allowlist, and protected-by-default.

Tokens come from files or environment variables only, never from the
command line (``ps`` shows it to every local user).  They are compared in
constant time and never logged.  See SECURITY.md for the threat model.
"""

from __future__ import annotations

import hmac
import inspect
import ipaddress
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from twisted.internet import endpoints
from twisted.logger import Logger

log = Logger()


class AccessError(Exception):
    """A configuration that cannot be used; the message says what to do."""


def read_token(path: str | None, env: Mapping[str, str], variable: str, what: str) -> str | None:
    """The token from *path* if given, else from ``$variable``, else None."""
    if path:
        try:
            token = Path(path).read_text(encoding="utf-8").strip()
        except OSError as error:
            raise AccessError(f"cannot read the {what} file {path}: {error.strerror or error}") from None
        if not token:
            raise AccessError(f"the {what} file {path} is empty")
    else:
        token = env.get(variable, "").strip()
        if not token:
            return None
    if any(ch.isspace() for ch in token):
        raise AccessError(f"the {what} must not contain spaces or line breaks")
    if len(token) < 16:
        raise AccessError(f"the {what} is too short: use at least 16 characters (e.g. `openssl rand -hex 32`)")
    return token


def same(given: str, expected: str) -> bool:
    """Constant-time comparison, so timing does not reveal the token."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def bearer(header: str | bytes | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header."""
    if header is None:
        return None
    if isinstance(header, bytes):
        header = header.decode("latin-1")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


ANY_NAME = ""

FileSignature = tuple[int, int, int]


def file_signature(path: str | os.PathLike[str]) -> FileSignature:
    """What tells a watched file's versions apart: modification time, size
    and inode (a rewrite within the mtime's resolution, or a rename over
    the file, may keep the mtime).  OSError if it cannot be read."""
    found = os.stat(path)
    return (found.st_mtime_ns, found.st_size, found.st_ino)


@dataclass
class WorkerTokens:
    """The shared worker token and the per-worker ``name token`` file."""

    shared: str | None = None
    path: str | None = None
    per_worker: dict[str, str] = field(default_factory=dict)
    #: Names whose token the last reload removed or changed.
    revoked: set[str] = field(default_factory=set)
    _signature: FileSignature | None = None

    @property
    def configured(self) -> bool:
        return self.shared is not None or self.path is not None

    def load(self) -> bool:
        """(Re)read the per-worker file; True if it changed.

        Fails closed: a file that was deleted, cannot be read or does not
        parse leaves no per-worker token valid (their workers are revoked)
        and raises AccessError saying why; the next call reads it again.
        """
        if self.path is None:
            return False
        try:
            signature = file_signature(self.path)
            if signature == self._signature:
                return False
            tokens = self._parse(Path(self.path).read_text(encoding="utf-8"))
        except OSError as error:
            self._forget_all()
            raise AccessError(f"cannot read the worker tokens file {self.path}: {error.strerror or error}") from None
        except UnicodeDecodeError:
            self._forget_all()
            raise AccessError(f"the worker tokens file {self.path} is not UTF-8 text") from None
        except AccessError:
            self._forget_all()
            raise
        self.revoked = {name for name, token in self.per_worker.items() if tokens.get(name) != token}
        self.per_worker = tokens
        self._signature = signature
        return True

    def _forget_all(self) -> None:
        """No per-worker token is valid until the file reads cleanly again."""
        self.revoked = set(self.per_worker)
        self.per_worker = {}
        self._signature = None

    def _parse(self, text: str) -> dict[str, str]:
        tokens: dict[str, str] = {}
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 2:
                raise AccessError(f"{self.path}, line {number}: expected '<worker name> <token>'")
            name, token = parts
            if len(token) < 16:
                raise AccessError(f"{self.path}, line {number}: the token is shorter than 16 characters")
            tokens[name] = token
        return tokens

    def identify(self, token: str | None) -> str | None:
        """The name this token may use (ANY_NAME for the shared token), or None."""
        if token is None:
            return None
        found: str | None = None
        # Check every entry, so the time taken does not say which one matched.
        for name, expected in self.per_worker.items():
            if same(token, expected):
                found = name
        if self.shared is not None and same(token, self.shared):
            found = ANY_NAME if found is None else found
        return found

    def still_valid(self, token_name: str) -> bool:
        """After a reload: may a worker connected with *token_name*'s token stay?

        Not if its line was removed, nor if its token was changed (the
        connection was made with the old one).
        """
        return token_name == ANY_NAME or (token_name in self.per_worker and token_name not in self.revoked)


# -- where listeners listen ----------------------------------------------


# How serverFromString reads the arguments of each kind whose interface we
# can tell (each function's signature, not its body, is used).  Any other
# kind counts as listening everywhere.
_ARGUMENTS: dict[str, Callable[..., Any]] = {
    "tcp": endpoints._parseTCP,  # (factory, port, interface="", backlog=50)
    "ssl": endpoints._parseSSL,  # (factory, port, privateKey=..., ..., interface="", ...)
    "tcp6": endpoints._TCP6ServerParser()._parseServer,  # (reactor, port, backlog=50, interface="::")
}
# Sockets that are not reachable over the network by themselves.
_LOCAL_KINDS = {"unix", "systemd"}
_EVERYWHERE = {"", "0.0.0.0", "::"}


def _keys(endpoint: str) -> list[str]:
    """The ``key=`` names of an endpoint string, tokenised as Twisted does."""
    return [
        value
        for (kind, value), (next_kind, next_value) in pairwise(endpoints._tokenize(endpoint))
        if kind == endpoints._STRING and next_kind == endpoints._OP and next_value == "="
    ]


def listen_interface(endpoint: str) -> str | None:
    """Where a server endpoint string listens, read as ``serverFromString`` reads it.

    '' (or '0.0.0.0', '::') means every interface; None a local socket
    (unix, systemd).  A key given twice is refused: Twisted silently uses
    the last one, and a reader (or a check reading the first) sees another.
    """
    keys = _keys(endpoint)
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise AccessError(
            f"the endpoint {endpoint!r} gives {', '.join(repeated)} more than once "
            "(Twisted would use only the last); give each key once"
        )
    args, kw = endpoints._parse(endpoint)
    kind = args[0].lower()
    if kind in _LOCAL_KINDS:
        return None
    parser = _ARGUMENTS.get(kind)
    if parser is None:
        return ""
    try:
        bound = inspect.signature(parser).bind(None, *args[1:], **kw)
    except TypeError as error:
        raise AccessError(f"cannot read the endpoint {endpoint!r}: {error}") from None
    bound.apply_defaults()
    return str(bound.arguments["interface"])


def is_loopback(endpoint: str) -> bool:
    interface = listen_interface(endpoint)
    if interface is None:
        return True
    if interface in _EVERYWHERE:
        return False
    if interface == "localhost":
        return True
    try:
        return ipaddress.ip_address(interface.strip("[]")).is_loopback
    except ValueError:
        return False


def check_protected(
    *,
    tcp: str,
    http: str,
    tcp_token: str | None,
    api_token: str | None,
    workers: WorkerTokens,
    tokens_file: bool = False,
) -> None:
    """Refuse a listener open to the network without the tokens guarding it.

    A tokens file (*tokens_file*) guards both ports, as the TCP and API tokens do.
    """
    if tokens_file:
        tcp_token = tcp_token or "(tokens file)"
        api_token = api_token or "(tokens file)"
    problems = []
    if not is_loopback(tcp) and tcp_token is None:
        problems.append(f"--tcp {tcp} is not loopback-only but no TCP token is set (--tcp-token-file or SCHEDULER_TCP_TOKEN)")
    if not is_loopback(http):
        if api_token is None:
            problems.append(f"--http {http} is not loopback-only but no API token is set (--api-token-file or SCHEDULER_API_TOKEN)")
        if not workers.configured:
            problems.append(
                f"--http {http} is not loopback-only but no worker token is set "
                "(--worker-token-file, --worker-tokens-file or SCHEDULER_WORKER_TOKEN)"
            )
    if problems:
        raise AccessError(
            "refusing to accept commands from the network without tokens:\n  - "
            + "\n  - ".join(problems)
            + "\nCreate a token with `openssl rand -hex 32 > api.token` and pass the file, "
            "or bind to 127.0.0.1 (the default)."
        )


def default_allowed_hosts(http: str) -> set[str]:
    hosts = {"localhost", "127.0.0.1", "::1", "[::1]"}
    try:
        hosts |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    except OSError:
        pass
    interface = listen_interface(http)
    if interface is not None and interface not in _EVERYWHERE:
        hosts.add(interface.lower())
    return hosts


def host_allowed(host_header: bytes | str | None, allowed: set[str]) -> bool:
    """Is the Host header one of the allowed names (any port)?"""
    if "*" in allowed:
        return True
    if host_header is None:
        return False
    host = host_header.decode("latin-1") if isinstance(host_header, bytes) else host_header
    host = host.strip().lower()
    if host.startswith("["):
        name = host[: host.find("]") + 1]
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return name in allowed or name.strip("[]") in allowed
