"""Who or what started a job, and who changed a task: ``TriggeredBy`` and ``Revision``.

A job records what created it (its schedule, a retry, a missed run caught
up after a restart, a request over the API, the dashboard or port 5050),
and every change to a task is kept as a :class:`Revision` whose author is
recorded the same way.  Both are stored in the job database as JSON
(``as_json``, read back with ``from_json``) and shown in the API as the
same object, ``{"kind": ..., "name": ..., "job": ...}``, absent fields
null.  The kinds and revision actions are ``Literal`` types, and the
tuples the validation and the OpenAPI enums use are read from them, so
each list is written once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast, get_args

TriggerKind = Literal["schedule", "api", "tcp", "retry", "missed", "dashboard", "ping"]
TRIGGER_KINDS: tuple[TriggerKind, ...] = get_args(TriggerKind)

RevisionAction = Literal["add", "edit", "pause", "resume", "remove", "load", "clear", "restore"]
REVISION_ACTIONS: tuple[RevisionAction, ...] = get_args(RevisionAction)

_TRIGGER_FIELDS = ("kind", "name", "job")


@dataclass(frozen=True, slots=True)
class TriggeredBy:
    """What started a job or changed a task.

    ``name`` is the token's or person's name where one is known
    (``access_tokens``); on a command port without tokens it is the
    client's address, which is what identifies a caller there.  ``job`` is
    the job a ``retry`` re-runs.  ``address`` is where the request came
    from: the audit log keeps it, the job and revision records do not (it
    is no part of ``as_json``).
    """

    kind: TriggerKind
    name: str | None = None
    job: int | None = None
    address: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        # Checked here, not only in from_json: a wrong kind written by code
        # would otherwise reach the database and fail every later read.
        if self.kind not in TRIGGER_KINDS:
            raise ValueError(f"triggeredBy.kind must be one of {', '.join(TRIGGER_KINDS)}, not {self.kind!r}")
        if self.name is not None and not isinstance(self.name, str):
            raise ValueError("triggeredBy.name must be a string or null")
        if self.job is not None and (isinstance(self.job, bool) or not isinstance(self.job, int)):
            raise ValueError("triggeredBy.job must be an integer or null")

    @classmethod
    def retry_of(cls, job_id: int) -> TriggeredBy:
        return cls("retry", job=job_id)

    def as_json(self) -> dict[str, Any]:
        """Every field, null where absent: one shape for the API, its schema and the database."""
        return {"kind": self.kind, "name": self.name, "job": self.job}

    @classmethod
    def from_json(cls, data: object) -> TriggeredBy:
        """The inverse of ``as_json``; ValueError says what is wrong."""
        if not isinstance(data, Mapping):
            raise ValueError("triggeredBy must be a JSON object")
        unknown = sorted(set(data) - set(_TRIGGER_FIELDS))
        if unknown:
            raise ValueError(f"triggeredBy has unknown field(s): {', '.join(map(str, unknown))}")
        if "kind" not in data:
            raise ValueError("triggeredBy.kind is required")
        return cls(cast(TriggerKind, data["kind"]), data.get("name"), data.get("job"))

    @property
    def text(self) -> str:
        """A few words for logs and the job page: "schedule", "retry of job 17", "API (token ci)"."""
        name = self.name
        if self.kind == "retry":
            return f"retry of job {self.job}" if self.job is not None else "retry"
        if self.kind == "missed":
            return "missed run caught up"
        if self.kind == "tcp":
            return f"TCP from {name}" if name else "TCP"
        if self.kind == "api":
            return f"API (token {name})" if name else "API"
        if self.kind == "dashboard":
            return f"dashboard ({name})" if name else "dashboard"
        return self.kind

    def __str__(self) -> str:
        return self.text


# The triggers that carry nothing but their kind.
SCHEDULE = TriggeredBy("schedule")
MISSED = TriggeredBy("missed")
PING = TriggeredBy("ping")


@dataclass(frozen=True, slots=True)
class Revision:
    """One change to a task, kept in the job database.

    ``before`` and ``after`` are the task's tasks.db records (JSON objects):
    None before an ``add`` and after a ``remove`` or a ``clear``.  ``at`` is
    in Unix seconds.  ``id`` is given by the store (None until stored);
    ids only grow, so they order a task's revisions.
    """

    task_id: int
    at: float
    action: RevisionAction
    by: TriggeredBy
    before: Mapping[str, Any] | None = None
    after: Mapping[str, Any] | None = None
    id: int | None = None

    def __post_init__(self) -> None:
        if self.action not in REVISION_ACTIONS:
            raise ValueError(f"revision action must be one of {', '.join(REVISION_ACTIONS)}, not {self.action!r}")
        if not isinstance(self.by, TriggeredBy):
            raise ValueError("a revision's author must be a TriggeredBy")
