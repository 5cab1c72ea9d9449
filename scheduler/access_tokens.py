"""Named, scoped tokens: the tokens file, who a caller is, and what it may do.

``--tokens-file`` holds one token per line::

    # name   scopes         sha256 of the token (hex)                                   limits
    ci       read,run       9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 tasks=3,7
    gpu-bot  run            60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752 labels=gpu
    alice    read,write     -

A ``-`` instead of a hash names a person whom the authenticating proxy in
front vouches for (``--proxy-user-header``), not a token.  Only hashes are
kept, so the file gives nothing away; a token sent is hashed and compared
with every line in constant time.  The scopes are :data:`SCOPES`
(``admin`` grants all four); ``tasks=`` and ``labels=`` limit what ``run``
may act on (see :meth:`Caller.run_refusal`).

The file is read again when it changes (:meth:`TokenBook.load`, called
every few seconds by the service): a removed or changed line takes effect
at the next request, and the service closes that token's live feeds.  A
line that does not parse is refused with its line number: at start the
scheduler does not start, later the tokens read before stay in force.

``python -m scheduler.access_tokens`` prints the hash of the token it reads
on its standard input (``openssl rand -hex 32 | tee ci.token | python -m
scheduler.access_tokens``), so a token never appears on a command line.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast, get_args

from scheduler.access import AccessError, FileSignature, file_signature, same

Scope = Literal["read", "run", "write", "admin"]
SCOPES: tuple[Scope, ...] = get_args(Scope)
ALL_SCOPES: frozenset[Scope] = frozenset(SCOPES)

# The names the single tokens of --api-token-file and --tcp-token-file act under.
API_TOKEN_NAME = "api-token"
TCP_TOKEN_NAME = "tcp-token"
RESERVED_NAMES = frozenset({API_TOKEN_NAME, TCP_TOKEN_NAME})

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,99}$")
_DIGEST = re.compile(r"^[0-9a-fA-F]{64}$")
_LABEL = re.compile(r"^[^\s,:]{1,100}$")
PERSON = "-"


def token_hash(token: str) -> str:
    """The hex SHA-256 of *token*, as the tokens file keeps it."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class AccessToken:
    """One line of the tokens file."""

    name: str
    scopes: frozenset[Scope]
    digest: str | None  # None: a person named by the proxy, not a token
    tasks: frozenset[int] | None = None
    labels: frozenset[str] | None = None


@dataclass(frozen=True)
class Caller:
    """Who is asking, and what they may do.

    ``name`` is the token's or the person's name (None: no token is
    configured, so anyone local may do anything, as before tokens);
    ``address`` is where the request came from.
    """

    name: str | None
    scopes: frozenset[Scope]
    address: str | None = None
    tasks: frozenset[int] | None = None
    labels: frozenset[str] | None = None
    person: bool = False
    # The line it was read from, to tell whether a reload revoked it.
    token: AccessToken | None = field(default=None, compare=False)

    def allows(self, scope: Scope) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    def granted(self) -> list[Scope]:
        """Every scope it has, ``admin`` spelled out, in SCOPES order."""
        return [scope for scope in SCOPES if self.allows(scope)]

    def run_refusal(self, task_id: int | None, target: str) -> str | None:
        """Why this caller may not run (or cancel) a job of *task_id* aimed at *target*; None if it may."""
        if not self.allows("run"):
            return refusal_text(self, "run")
        if "admin" in self.scopes:
            return None
        who = describe(self)
        if self.tasks is not None and (task_id is None or task_id not in self.tasks):
            allowed = ", ".join(str(number) for number in sorted(self.tasks)) or "none"
            what = "a command that is no task" if task_id is None else f"task {task_id}"
            return f"{who} may run only tasks {allowed}, not {what}"
        if self.labels is not None:
            kind, _, label = target.partition(":")
            if kind != "label" or label not in self.labels:
                allowed = ", ".join(f"label:{name}" for name in sorted(self.labels))
                return f"{who} may run jobs only on targets {allowed}, not {target}"
        return None

    @property
    def who(self) -> str:
        """The name the audit log and the job records give it."""
        return self.name or "anyone"


# No token is configured: every caller may do everything (loopback only,
# which protected mode enforces).
def anyone(address: str | None = None) -> Caller:
    return Caller(None, ALL_SCOPES, address)


def describe(caller: Caller) -> str:
    if caller.name is None:
        return "this caller"
    return f"{'person' if caller.person else 'token'} '{caller.name}'"


def refusal_text(caller: Caller, scope: Scope) -> str:
    """The one wording of a refusal for want of a scope (HTTP 403 and TCP ERR alike)."""
    return f"{describe(caller)} lacks the '{scope}' scope this needs"


class TokenBook:
    """The tokens file, as last read cleanly."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self.tokens: dict[str, AccessToken] = {}
        #: Names whose line the last reload removed or changed.
        self.revoked: set[str] = set()
        self._signature: FileSignature | None = None

    @property
    def configured(self) -> bool:
        return self.path is not None

    def load(self) -> bool:
        """(Re)read the file if it changed; True if it did.

        A line that does not parse raises AccessError naming it and keeps
        the tokens read before.  A file that is gone or unreadable leaves no
        named token valid (fail closed) and raises AccessError saying so.
        """
        if self.path is None:
            return False
        try:
            signature = file_signature(self.path)
            if signature == self._signature:
                return False
            text = Path(self.path).read_text(encoding="utf-8")
        except OSError as error:
            self._replace({})
            self._signature = None
            raise AccessError(f"cannot read the tokens file {self.path}: {error.strerror or error}") from None
        except UnicodeDecodeError:
            raise AccessError(f"the tokens file {self.path} is not UTF-8 text") from None
        tokens = parse_tokens(text, self.path)
        self._replace(tokens)
        self._signature = signature
        return True

    def _replace(self, tokens: dict[str, AccessToken]) -> None:
        self.revoked = {name for name, token in self.tokens.items() if tokens.get(name) != token}
        self.tokens = tokens

    def identify(self, token: str) -> AccessToken | None:
        """The line whose hash is this token's, or None; every line is compared, in constant time."""
        digest = token_hash(token)
        found: AccessToken | None = None
        for entry in self.tokens.values():
            if entry.digest is not None and hmac.compare_digest(digest, entry.digest):
                found = entry
        return found

    def person(self, name: str) -> AccessToken | None:
        entry = self.tokens.get(name)
        return entry if entry is not None and entry.digest is None else None

    def current(self, token: AccessToken) -> bool:
        """Is this line still in the file, unchanged?"""
        return self.tokens.get(token.name) == token


def parse_tokens(text: str, path: str = "tokens file") -> dict[str, AccessToken]:
    """The lines of a tokens file by name; AccessError names the first bad line."""
    tokens: dict[str, AccessToken] = {}
    digests: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            entry = parse_token_line(line)
        except ValueError as error:
            raise AccessError(f"{path}, line {number}: {error}") from None
        if entry.name in tokens:
            raise AccessError(f"{path}, line {number}: the name '{entry.name}' is already on an earlier line")
        if entry.digest is not None:
            if entry.digest in digests:
                raise AccessError(f"{path}, line {number}: the same token hash is on an earlier line")
            digests.add(entry.digest)
        tokens[entry.name] = entry
    return tokens


def parse_token_line(line: str) -> AccessToken:
    words = line.split()
    if len(words) < 3:
        raise ValueError(
            "expected '<name> <scopes, comma-separated> <sha256 of the token, hex, or - for a person>"
            " [tasks=<ids>] [labels=<labels>]'"
        )
    name, scope_text, digest = words[:3]
    if not _NAME.match(name):
        raise ValueError(f"'{name[:40]}' is not a name (letters, digits and _ . @ + -, at most 100)")
    if name in RESERVED_NAMES:
        raise ValueError(f"the name '{name}' is kept for the token of --{name}-file")
    scopes = [scope.strip() for scope in scope_text.split(",") if scope.strip()]
    unknown = [scope for scope in scopes if scope not in SCOPES]
    if unknown or not scopes:
        raise ValueError(f"scopes must be a comma-separated list of {', '.join(SCOPES)}, not '{scope_text[:60]}'")
    if digest != PERSON and not _DIGEST.match(digest):
        raise ValueError(
            "the third word must be the token's SHA-256 in hex (64 characters; "
            "`python -m scheduler.access_tokens` prints it) or - for a person"
        )
    tasks: frozenset[int] | None = None
    labels: frozenset[str] | None = None
    for word in words[3:]:
        key, sep, value = word.partition("=")
        items = [item for item in value.split(",") if item]
        if key == "tasks" and sep and tasks is None:
            if not items or not all(item.isascii() and item.isdigit() and len(item) <= 18 for item in items):
                raise ValueError(f"tasks= must be a comma-separated list of task ids, not '{value[:60]}'")
            tasks = frozenset(int(item) for item in items)
        elif key == "labels" and sep and labels is None:
            if not items or not all(_LABEL.match(item) for item in items):
                raise ValueError(f"labels= must be a comma-separated list of worker labels, not '{value[:60]}'")
            labels = frozenset(items)
        else:
            raise ValueError(f"unexpected '{word[:60]}' (after the hash: tasks=<ids> and labels=<labels>, once each)")
    return AccessToken(
        name,
        frozenset(cast(Iterable[Scope], scopes)),
        None if digest == PERSON else digest.lower(),
        tasks,
        labels,
    )


def parse_scopes(text: str, what: str) -> frozenset[Scope]:
    scopes = [scope.strip() for scope in text.split(",") if scope.strip()]
    unknown = [scope for scope in scopes if scope not in SCOPES]
    if unknown:
        raise AccessError(f"{what} must be a comma-separated list of {', '.join(SCOPES)}, not '{text[:60]}'")
    return frozenset(cast(Iterable[Scope], scopes))


def parse_networks(text: str | None) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """``--trusted-proxies``: addresses or networks, comma-separated."""
    networks = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise AccessError(f"--trusted-proxies: '{item[:60]}' is not an address or network (e.g. 10.0.0.5 or 10.0.0.0/24)") from None
    return tuple(networks)


@dataclass
class Access:
    """Who a request or a command-port connection is, from its token, address and proxy header.

    The single tokens of ``--api-token-file`` and ``--tcp-token-file`` act
    as admin tokens named ``api-token`` and ``tcp-token``.  Behind a
    trusted proxy (``--trusted-proxies``), the ``--proxy-user-header``
    names the person; a person has the scopes of their ``-`` line in the
    tokens file, or else ``--proxy-scopes``.
    """

    book: TokenBook = field(default_factory=TokenBook)
    api_token: str | None = None
    tcp_token: str | None = None
    proxy_header: str | None = None
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    proxy_scopes: frozenset[Scope] = frozenset({"read"})

    @property
    def http_required(self) -> bool:
        # A proxy header too: a request that does not come through the proxy needs a token.
        return self.api_token is not None or self.book.configured or self.proxy_header is not None

    @property
    def tcp_required(self) -> bool:
        return self.tcp_token is not None or self.book.configured

    def _named(self, token: str, single: str | None, single_name: str, address: str | None) -> Caller | None:
        entry = self.book.identify(token)
        # Both compared, whichever matches: the time taken does not say which.
        legacy = single is not None and same(token, single)
        if entry is not None:
            return Caller(entry.name, entry.scopes, address, entry.tasks, entry.labels, token=entry)
        if legacy:
            return Caller(single_name, ALL_SCOPES, address)
        return None

    def http_caller(self, token: str | None, address: str | None, person: str | None) -> Caller | None:
        """The caller of an HTTP request, or None if it has no valid credential.

        Without any token configured, everyone is the anonymous caller.
        """
        if person is not None and self.proxy_header is not None and self.trusts(address):
            entry = self.book.person(person)
            if entry is not None:
                return Caller(person, entry.scopes, address, entry.tasks, entry.labels, person=True, token=entry)
            return Caller(person, self.proxy_scopes, address, person=True)
        if token is not None:
            named = self._named(token, self.api_token, API_TOKEN_NAME, address)
            if named is not None or self.http_required:
                return named
        return None if self.http_required else anyone(address)

    def tcp_caller(self, token: str) -> Caller | None:
        return self._named(token, self.tcp_token, TCP_TOKEN_NAME, None)

    def still_valid(self, caller: Caller) -> bool:
        """Has no reload since removed or changed the line *caller* was read from?"""
        return caller.token is None or self.book.current(caller.token)

    def trusts(self, address: str | None) -> bool:
        if address is None or not self.trusted_proxies:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.trusted_proxies)


def main(argv: list[str] | None = None) -> int:
    """Print the SHA-256 of the token on standard input (one line; surrounding space ignored)."""
    token = sys.stdin.read().strip()
    if not token or any(ch.isspace() for ch in token):
        print("give the token on standard input, e.g.: openssl rand -hex 32 | tee ci.token | "
              "python -m scheduler.access_tokens", file=sys.stderr)
        return 2
    if len(token) < 16:
        print("the token is too short: use at least 16 characters (openssl rand -hex 32)", file=sys.stderr)
        return 2
    print(token_hash(token))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
