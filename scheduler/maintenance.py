"""The maintenance switch: while it is on, no cron fire becomes a job.

Jobs already queued or running carry on; runs due meanwhile are skipped
(they are not caught up afterwards, as runs missed while the scheduler was
down may be).  The switch is kept in ``maintenance.json`` beside tasks.db,
so a restart does not end a maintenance window by surprise.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from scheduler.atomic_file import AtomicFile

log = Logger()


@dataclass(frozen=True)
class MaintenanceState:
    on: bool = False
    # When it was last switched, and by whom (a trigger's text).
    since: float | None = None
    by: str | None = None


class Maintenance:
    def __init__(self, path: str, threadpool: ThreadPool, reactor: object) -> None:
        self._file = AtomicFile(path)
        self._pool = threadpool
        self._reactor = reactor
        self.state = MaintenanceState()

    @property
    def on(self) -> bool:
        return self.state.on

    def load_now(self) -> None:
        """Read the switch at start-up (blocking; before the reactor runs)."""
        self._file.remove_stale_temps()
        try:
            with open(self._file.path, encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as error:
            # Off is the safe reading: a damaged file must not stop every task.
            log.error("could not read {path} ({error}); maintenance is off", path=self._file.path, error=error)
            return
        if isinstance(data, dict) and isinstance(data.get("on"), bool):
            since = data.get("since")
            by = data.get("by")
            self.state = MaintenanceState(
                data["on"],
                float(since) if isinstance(since, int | float) else None,
                by if isinstance(by, str) else None,
            )
        if self.state.on:
            log.warn("maintenance is on (since the last run): no cron fire becomes a job until it is switched off")

    def switch(self, on: bool, at: float, by: str) -> Deferred[MaintenanceState]:
        """Turn the switch; fires once it is on disk (and only then counts)."""
        state = MaintenanceState(on, at, by)
        payload = json.dumps(asdict(state)).encode("utf-8") + b"\n"
        written: Deferred[None] = deferToThreadPool(self._reactor, self._pool, self._file.write, payload)  # type: ignore[arg-type]

        def done(_: object) -> MaintenanceState:
            self.state = state
            log.warn("maintenance switched {on} by {by}", on="on" if on else "off", by=by)
            return state

        return written.addCallback(done)

    def as_json(self) -> dict[str, Any]:
        return asdict(self.state)
