"""The command port's token: AUTH, its deadline, the places, the guess throttle.

With a TCP token, a connection is unauthenticated until ``AUTH`` succeeds,
and unauthenticated connections hold nothing for long: they must
authenticate within a deadline, may run only the verbs open before AUTH
(``Verb.open_before_auth`` in ``tcp_commands.py``), and only a few of them
get a place at a time (:class:`TcpAuth`), so a crowd of them cannot keep an
operator with the token out.  Wrong tokens are throttled per address, across
connections (:class:`AuthThrottle`).

:class:`TcpAuth` is shared by every connection of one listener;
:class:`ConnectionAuth` is one connection's side of it.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from scheduler.access_scopes import VERB_NEEDS, scope_of
from scheduler.access_tokens import TCP_TOKEN_NAME, Access, Caller, anyone, refusal_text
from scheduler.tcp_commands import VERBS

log = Logger()

# Bounds on guessing the TCP token, per peer address and across connections
# (SECURITY.md lists them).  After AUTH_FREE_FAILURES wrong tokens an address
# waits AUTH_FIRST_WAIT before its next AUTH is even looked at, twice as
# long after each further wrong one, at most AUTH_MAX_WAIT.  An address that
# sends no wrong token for AUTH_FORGET_AFTER starts afresh.
AUTH_FREE_FAILURES = 5
AUTH_FIRST_WAIT = 1.0
AUTH_MAX_WAIT = 60.0
AUTH_FORGET_AFTER = 900.0
# Addresses remembered at most (the longest-quiet are forgotten first), so a
# guesser with many addresses cannot grow the table without bound.
AUTH_MAX_ADDRESSES = 10_000
# Wrong tokens are logged once, then summed up at most once per interval.
AUTH_LOG_INTERVAL = 60.0
# A connection that arrives while every unauthenticated place is taken gets
# this long to authenticate with its first line (an operator's piped
# ``AUTH <token>`` arrives with the connection), instead of a place.
OVER_CAP_GRACE = 2.0

TOO_MANY_UNAUTHENTICATED = (
    "ERR too many unauthenticated connections; send AUTH <token> as the first line, or try again later"
)


def _address_key(host: str) -> str:
    """The unit guesses are counted by: an IPv4 address, or an IPv6 /64.

    One IPv6 host usually holds a whole /64, so counting single addresses
    would give it billions of fresh starts.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return host


@dataclass
class _Failures:
    count: int
    last: float
    until: float  # no AUTH from the address is looked at before this time


class AuthThrottle:
    """Wrong AUTH tokens per peer address, across its connections.

    The first AUTH_FREE_FAILURES cost nothing; then the address waits before
    its next AUTH is checked at all, doubling from AUTH_FIRST_WAIT up to
    AUTH_MAX_WAIT, so a guesser gets about one try a minute instead of
    thousands a second.  A right token clears the address's count.  Every
    wrong token is counted, but the log gets one line at the first and then
    at most one summary per AUTH_LOG_INTERVAL, so a flood of guesses cannot
    flood the log.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        # Oldest failure first: a failure moves its address to the end.
        self._failures: dict[str, _Failures] = {}
        self._unlogged = 0
        self._unlogged_from: set[str] = set()
        self._last_from = ""
        self._refused = 0
        self._log_timer: IDelayedCall | None = None

    def wait(self, host: str) -> float:
        """Seconds *host* must wait before an AUTH from it is checked (0: none)."""
        entry = self._current(_address_key(host))
        if entry is None:
            return 0.0
        return max(0.0, entry.until - self._clock.seconds())

    def failed(self, host: str) -> float:
        """Count a wrong token from *host*; returns how long it must now wait."""
        key = _address_key(host)
        now = self._clock.seconds()
        entry = self._current(key) or _Failures(0, now, now)
        self._failures.pop(key, None)
        entry.count += 1
        entry.last = now
        over = entry.count - AUTH_FREE_FAILURES
        if over >= 0:
            entry.until = now + min(AUTH_MAX_WAIT, AUTH_FIRST_WAIT * 2.0 ** min(over, 32))
        self._failures[key] = entry
        while len(self._failures) > AUTH_MAX_ADDRESSES:
            del self._failures[next(iter(self._failures))]
        self._note(host)
        return max(0.0, entry.until - now)

    def succeeded(self, host: str) -> None:
        self._failures.pop(_address_key(host), None)

    def refused(self, host: str) -> None:
        """Count an AUTH refused unchecked because *host* must still wait."""
        self._refused += 1
        if self._log_timer is None:
            self._log_timer = self._clock.callLater(AUTH_LOG_INTERVAL, self._summarise)

    def _current(self, key: str) -> _Failures | None:
        entry = self._failures.get(key)
        if entry is not None and self._clock.seconds() - entry.last > AUTH_FORGET_AFTER:
            del self._failures[key]
            return None
        return entry

    def _note(self, host: str) -> None:
        if self._log_timer is None:
            log.warn("wrong TCP token from {peer}", peer=host)
            self._log_timer = self._clock.callLater(AUTH_LOG_INTERVAL, self._summarise)
            return
        self._unlogged += 1
        self._last_from = host
        if len(self._unlogged_from) < 1000:
            self._unlogged_from.add(host)

    def _summarise(self) -> None:
        if not self._unlogged and not self._refused:
            self._log_timer = None
            return
        log.warn(
            "{count} more wrong TCP tokens in the last {interval:.0f} s from {addresses}"
            " address(es){last}, and {refused} AUTH refused unchecked while their address"
            " waited; an address waits up to {most:.0f} s between tries after {free} wrong ones",
            count=self._unlogged,
            interval=AUTH_LOG_INTERVAL,
            addresses=len(self._unlogged_from) if len(self._unlogged_from) < 1000 else "1000+",
            last=f", the last from {self._last_from}" if self._unlogged else "",
            refused=self._refused,
            most=AUTH_MAX_WAIT,
            free=AUTH_FREE_FAILURES,
        )
        self._unlogged = 0
        self._unlogged_from.clear()
        self._refused = 0
        self._log_timer = self._clock.callLater(AUTH_LOG_INTERVAL, self._summarise)


class TcpAuth:
    """The command port's token and who has not shown it yet.

    Shared by every connection of one listener.  A connection is
    unauthenticated from its start until ``AUTH`` succeeds; at most
    *max_unauthenticated* of them hold a place at a time, each for at most
    *timeout* seconds.  A connection that finds every place taken is on
    probation: only a right ``AUTH`` as its first line, within
    OVER_CAP_GRACE, lets it in; anything else gets ``ERR too many
    unauthenticated connections``.  So connections that never authenticate
    cannot keep an operator who has the token out.
    """

    def __init__(
        self, access: Access, clock: IReactorTime, *, timeout: float, max_unauthenticated: int
    ) -> None:
        # The TCP token and the tokens file (access_tokens.Access).
        self.access = access
        # Told of each wrong token, with the peer's address (the audit log coalesces them).
        self.wrong_token: Callable[[str], None] | None = None
        self.timeout = timeout
        self.max_unauthenticated = max_unauthenticated
        self.unauthenticated = 0
        self.throttle = AuthThrottle(clock)
        self.on_probation = 0  # connections that found every place taken, so far

    def take_place(self) -> bool:
        """A place for a new unauthenticated connection; False if none is free."""
        if self.unauthenticated >= self.max_unauthenticated:
            self.on_probation += 1
            if self.on_probation % 100 == 1:
                # One line per hundred: a flood must not flood the log.
                log.warn(
                    "{count} connection(s) so far found all {limit} places for unauthenticated"
                    " connections taken on the command port",
                    count=self.on_probation,
                    limit=self.max_unauthenticated,
                )
            return False
        self.unauthenticated += 1
        return True

    def free_place(self) -> None:
        self.unauthenticated -= 1


class ConnectionAuth:
    """One connection's side of AUTH: its place, its deadline, its wrong tokens.

    *refuse* sends a reply and closes the connection (it returns ``""``, the
    nothing left to send); it does nothing once the connection is closing.
    Without a token (*auth* None) the connection is authenticated from the
    start and none of this applies.
    """

    def __init__(self, auth: TcpAuth | None, clock: IReactorTime, refuse: Callable[[str], str]) -> None:
        self._auth = auth
        self._clock = clock
        self._refuse = refuse
        self.authenticated = auth is None
        # Who authenticated: anyone when the port needs no token.
        self.caller: Caller | None = anyone() if auth is None else None
        self._failed = 0
        self._peer = "?"
        # Holds one of the places for unauthenticated connections; without
        # one, the connection is on probation (see TcpAuth).
        self._holds_place = False
        self._deadline: IDelayedCall | None = None

    def start(self, peer: str) -> None:
        """The connection from *peer* is made: take a place, start the deadline."""
        self._peer = peer
        if self._auth is not None:
            self._holds_place = self._auth.take_place()
            deadline = self._auth.timeout if self._holds_place else min(OVER_CAP_GRACE, self._auth.timeout)
            self._deadline = self._clock.callLater(deadline, self._expired)

    def stop(self) -> None:
        """Authenticated, or the connection is gone: no deadline, no place held."""
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        if self._holds_place:
            self._holds_place = False
            assert self._auth is not None
            self._auth.free_place()

    def refusal(self, word: str, open_before_auth: bool) -> str | None:
        """The reply refusing command *word* on this connection, or None if it may run."""
        if self.authenticated:
            return self._scope_refusal(word)
        if not self._holds_place and word != "AUTH":
            return self._refuse(TOO_MANY_UNAUTHENTICATED)
        if open_before_auth:
            return None
        if word == "SESSION":
            return "ERR authentication required: send AUTH <token> before SESSION"
        return "ERR authentication required: send AUTH <token> first"

    def _scope_refusal(self, word: str) -> str | None:
        """Refuse a verb the caller's token lacks the scope for; close if a reload revoked the token."""
        caller = self.caller
        if caller is None or self._auth is None:
            return None
        if not self._auth.access.still_valid(caller):
            return self._refuse(f"ERR the token '{caller.name}' was revoked or changed; closing")
        # A verb of the table missing from VERB_NEEDS fails closed; an unknown word gets its "unknown command".
        scope = scope_of(VERB_NEEDS.get(word, "admin" if word in VERBS else "public"))
        if scope is not None and not caller.allows(scope):
            return f"ERR {word} refused: {refusal_text(caller, scope)}"
        return None

    def check(self, given: str) -> str:
        """The reply to ``AUTH <given>``."""
        auth = self._auth
        if auth is None:
            return "OK no token is needed here"
        throttle = auth.throttle
        wait = throttle.wait(self._peer)
        if wait > 0:
            # Not even compared: a guess while waiting must learn nothing.
            throttle.refused(self._peer)
            return self._refuse(
                f"ERR too many wrong tokens from {self._peer}; AUTH is refused for {math.ceil(wait)} s more"
            )
        caller = auth.access.tcp_caller(given) if given else None
        if caller is not None:
            throttle.succeeded(self._peer)
            self.authenticated = True
            self.caller = Caller(
                caller.name, caller.scopes, self._peer, caller.tasks, caller.labels, token=caller.token
            )
            self.stop()
            # The single TCP token's answer stays what scripts expect.
            return "OK authenticated" if caller.name == TCP_TOKEN_NAME else f"OK authenticated as {caller.name}"
        self._failed += 1
        if auth.wrong_token is not None:
            auth.wrong_token(self._peer)
        wait = throttle.failed(self._peer)
        if wait > 0:
            return self._refuse(
                f"ERR wrong token; too many from {self._peer}, so AUTH is refused for {math.ceil(wait)} s"
            )
        if not self.authenticated and not self._holds_place:
            return self._refuse("ERR wrong token")
        if self._failed >= 3:
            return self._refuse("ERR wrong token; closing after 3 attempts")
        return "ERR wrong token"

    def _expired(self) -> None:
        self._deadline = None
        if self.authenticated:
            return
        if self._holds_place:
            assert self._auth is not None
            self._refuse(f"ERR no AUTH within {self._auth.timeout:g} s; closing")
        else:
            self._refuse(TOO_MANY_UNAUTHENTICATED)
