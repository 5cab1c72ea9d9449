"""The global alert defaults: rules for every task without its own, and the workers' rule.

``GET`` and ``PUT /api/alerts/defaults`` read and replace them; they are kept
in ``alerts.json`` beside tasks.db, written whole and atomically as the
maintenance switch is, so a restart keeps them.  A damaged file is logged
and read as no defaults: alerts must never stop the scheduler from starting.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from scheduler.alert_rules import DEADLINE_RANGE, AlertRule
from scheduler.atomic_file import AtomicFile
from scheduler.tasks import TaskError, check_alerts, check_deadline

log = Logger()

# Seconds a worker may be away before a worker_offline rule speaks, by default.
WORKER_OFFLINE_AFTER = 300.0
DEFAULT_FIELDS = ("rules", "startDeadline", "finishDeadline", "freshness", "workerOfflineAfter")


@dataclass(frozen=True)
class AlertDefaults:
    """What applies to a task that says nothing itself; field names are the JSON ones."""

    rules: tuple[AlertRule, ...] = ()
    startDeadline: float | None = None
    finishDeadline: float | None = None
    freshness: float | None = None
    workerOfflineAfter: float = WORKER_OFFLINE_AFTER

    @classmethod
    def from_json(cls, data: object) -> AlertDefaults:
        """Checked as a task's options are; TaskError names the field."""
        if not isinstance(data, Mapping):
            raise TaskError("the alert defaults must be a JSON object")
        unknown = sorted(set(data) - set(DEFAULT_FIELDS))
        if unknown:
            raise TaskError(f"unknown field(s): {', '.join(unknown)} (allowed: {', '.join(DEFAULT_FIELDS)})")
        offline = data.get("workerOfflineAfter")
        return cls(
            rules=check_alerts(data.get("rules"), where="rules", global_rules=True),
            startDeadline=check_deadline(data.get("startDeadline"), "startDeadline"),
            finishDeadline=check_deadline(data.get("finishDeadline"), "finishDeadline"),
            freshness=check_deadline(data.get("freshness"), "freshness"),
            workerOfflineAfter=WORKER_OFFLINE_AFTER
            if offline is None
            else check_deadline(offline, "workerOfflineAfter") or WORKER_OFFLINE_AFTER,
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "rules": [rule.as_json(_utc) for rule in self.rules],
            "startDeadline": self.startDeadline,
            "finishDeadline": self.finishDeadline,
            "freshness": self.freshness,
            "workerOfflineAfter": self.workerOfflineAfter,
        }

    def channels(self) -> set[str]:
        return {rule.channel for rule in self.rules}


def _utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()


class AlertDefaultsFile:
    """The defaults in force, and ``alerts.json`` that keeps them."""

    def __init__(self, path: str, threadpool: ThreadPool, reactor: object) -> None:
        self._file = AtomicFile(path)
        self._pool = threadpool
        self._reactor = reactor
        self.defaults = AlertDefaults()

    def load_now(self) -> None:
        """Read the defaults at start-up (blocking; before the reactor runs)."""
        self._file.remove_stale_temps()
        try:
            with open(self._file.path, encoding="utf-8") as handle:
                data = json.load(handle)
            self.defaults = AlertDefaults.from_json(data)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as error:  # TaskError is a ValueError
            log.error("could not read {path} ({error}); no alert defaults apply", path=self._file.path, error=error)

    def replace(self, defaults: AlertDefaults) -> Deferred[AlertDefaults]:
        """Put *defaults* in force once they are on disk."""
        payload = json.dumps(defaults.as_json(), indent=1).encode("utf-8") + b"\n"
        written: Deferred[None] = deferToThreadPool(self._reactor, self._pool, self._file.write, payload)  # type: ignore[arg-type]

        def done(_: object) -> AlertDefaults:
            self.defaults = defaults
            return defaults

        return written.addCallback(done)


__all__ = ["DEADLINE_RANGE", "AlertDefaults", "AlertDefaultsFile"]
