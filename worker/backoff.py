"""The worker's reconnect policy: how long to wait before dialling the scheduler again."""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["Backoff"]


class Backoff:
    """ClientService retry policy: capped exponential backoff, full jitter.

    The n-th retry since the last welcome waits ``uniform(0, min(cap, base *
    2**n))`` (n from 0).  ClientService passes the number of failures since
    the last *TCP connection*, which is the wrong count here: a scheduler
    that accepts the connection and then answers 401 or ``refused`` would be
    retried at the shortest delay forever.  So the argument is ignored and
    the policy keeps its own count: ClientService calls it exactly once per
    connection attempt that failed or connection that ended, each call
    counts one, and only ``reset()`` -- called by the agent on ``welcome``
    -- starts again from zero.
    """

    # 2**64 seconds is beyond any cap; stopping there keeps the float
    # arithmetic from overflowing after a very long outage.
    _MAX_EXPONENT = 64
    # Tries at about the base interval after the scheduler said it restarts.
    RESTART_TRIES = 60

    def __init__(
        self,
        *,
        base: float = 1.0,
        cap: float = 60.0,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        if not base > 0:
            raise ValueError(f"base must be > 0, got {base}")
        if not cap >= base:
            raise ValueError(f"cap must be >= base, got {cap}")
        self._base = base
        self._cap = cap
        self._uniform = uniform
        self._attempt = 0
        self._at_once = False
        self._restart_tries = 0

    @property
    def attempt(self) -> int:
        """Retries scheduled since the last welcome."""
        return self._attempt

    def ceiling(self, attempt: int) -> float:
        return min(self._cap, self._base * 2.0 ** min(attempt, self._MAX_EXPONENT))

    def __call__(self, failed_attempts: int) -> float:
        if self._at_once:
            self._at_once = False
            return 0.0
        if self._restart_tries > 0:
            # A restarting scheduler is usually back within seconds: keep
            # trying about once a base interval (jittered, so a fleet does
            # not dial in step) rather than backing off to a minute.
            self._restart_tries -= 1
            return self._uniform(self._base / 2, self._base * 1.5)
        delay = self._uniform(0.0, self.ceiling(self._attempt))
        self._attempt += 1
        return delay

    def reset(self) -> None:
        self._attempt = 0
        self._restart_tries = 0

    def at_once(self) -> None:
        """The scheduler said it is restarting: dial again now, then about once a base
        interval for RESTART_TRIES tries, then back off from the start."""
        self._attempt = 0
        self._at_once = True
        self._restart_tries = self.RESTART_TRIES
