"""The REST contract as OpenAPI 3.1, served at /api/openapi.json.

Its lists are read from the code: the job statuses from JobStatus
(scheduler/jobs.py), the task options' types, defaults, choices and bounds
from scheduler/tasks.py, the page size of GET /api/jobs from
scheduler/http_api.py.  tests/test_http_openapi.py checks that every route
of the Klein app is here, so the document cannot silently fall behind it.
Request schemas are as strict as the routes' checks and every status a
route or the Guard gives is listed: tests/test_api_schemathesis.py runs
schemathesis against a live scheduler to hold the two together.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, get_args, get_origin, get_type_hints
from zoneinfo import available_timezones

from scheduler import cron
from scheduler.access_scopes import ROUTE_NEEDS
from scheduler.access_tokens import SCOPES
from scheduler.alert_channels import (
    ADDRESS,
    CREDENTIAL,
    FIELDS,
    HOST,
    MAX_ADDRESS,
    MAX_HOST,
    MAX_RECIPIENTS,
    MAX_URL,
    NAME,
    SECRET,
    SMTP_PORT,
    URL,
)
from scheduler.alert_deliveries import DELIVERY_STATES
from scheduler.alert_rules import (
    AFTER_RANGE,
    ATTEMPTS_MODES,
    DEADLINE_RANGE,
    EVERY_RANGE,
    GLOBAL_ONLY,
    MAX_RULES,
    TAKES_AFTER,
    TAKES_ATTEMPTS,
    TAKES_EVERY,
)
from scheduler.alerts import ALERT_EVENTS, CHANNEL_KINDS, TASK_HEALTHS
from scheduler.audit import AUDIT_ACTIONS
from scheduler.http_api import (
    CHECK_RUNS,
    DEFAULT_LIMIT,
    MAX_BATCH,
    MAX_BODY,
    MAX_CHECK_RUNS,
    MAX_LIMIT,
    RUN_OVERRIDES,
    static_root,
)
from scheduler.http_guard import is_public
from scheduler.http_static import StaticFiles, content_type
from scheduler.jobs import JobStatus
from scheduler.tasks import (
    DEFAULT_OPTIONS,
    ENV_NAME,
    JITTER_RANGE,
    MAX_COMMAND,
    MAX_CONCURRENT_RANGE,
    MAX_REASON,
    MISSED_CAP_RANGE,
    MISSED_POLICIES,
    OVERLAP_POLICIES,
    PING_UUID,
    POOL_NAME,
    RETRIES_RANGE,
    RETRY_DELAY_RANGE,
    TARGET,
    TIMEOUT_RANGE,
    TaskOptions,
)
from scheduler.triggers import REVISION_ACTIONS, TRIGGER_KINDS


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


_STATUSES = [status.value for status in JobStatus]
# Ids are at most 18 digits (_path_id and _int_arg in http_api.py).
_MAX_ID = 10**18
_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1, "maximum": _MAX_ID},
    "examples": {"first": {"value": 1}},
}
_TIME = {"type": ["string", "null"], "format": "date-time"}
_CHANNEL_NAME = {"type": "string", "pattern": f"^{NAME.pattern}$"}
# The ping check tests/test_api_schemathesis.py makes, so generated pings reach one.
PING_EXAMPLE = "6f1c7d5e-8b1a-4c3e-9f00-0123456789ab"


def _space_class() -> str:
    """Python's whitespace (str.isspace, split, strip), spelled out for a regex character class.

    The server's checks use Python's idea of whitespace, and ``\\s`` means
    another set in the regex dialects a client reads a JSON Schema with
    (ECMA's lacks \\x1c-\\x1f and \\x85 and has \\ufeff), so a pattern that
    says ``\\s`` would be stricter or looser than the check.  All of
    Unicode's whitespace is in the Basic Multilingual Plane.
    """
    spaces = [code for code in range(0x10000) if chr(code).isspace()]
    ranges: list[tuple[int, int]] = []
    for code in spaces:
        if ranges and ranges[-1][1] == code - 1:
            ranges[-1] = (ranges[-1][0], code)
        else:
            ranges.append((code, code))
    return "".join(f"\\u{low:04x}" if low == high else f"\\u{low:04x}-\\u{high:04x}" for low, high in ranges)


_SPACE = _space_class()


def _portable(pattern: str) -> str:
    """A pattern from the code, with each ``\\s`` (used inside character classes) as Python means it."""
    return pattern.replace("\\s", _SPACE)


# Requests are checked as exactly as the routes check them.  A schedule is
# 5 or 6 fields (7 tokens with a CRON_TZ= prefix) or a macro: the first two
# alternatives are schedules that are always valid, so that generated
# requests reach the route; the last is everything cron.parse might take.
_SCHEDULE = {
    "type": "string",
    "pattern": (
        f"^(({'|'.join(cron.MACROS)})|[1-9] [1-9] [1-9] [1-9] [0-6]|"
        f"[{_SPACE}]*(@[^{_SPACE}]+|[^{_SPACE}]+([{_SPACE}]+[^{_SPACE}]+){{4,6}})[{_SPACE}]*)$"
    ),
    "examples": ["*/5 * * * *", "@daily", "0 9 * * MON-FRI", "CRON_TZ=Europe/Berlin 30 2 * * *"],
}
# check_command: not blank, one line, no NUL, at most MAX_COMMAND bytes.
# Said as "has a non-space" and "has no line break or NUL" (patterns are
# searches), not as one anchored pattern: a client generating commands
# that break an anchored one filters random text for a line break, slowly.
_COMMAND = {
    "type": "string",
    "maxLength": MAX_COMMAND,
    "allOf": [{"pattern": f"[^{_SPACE}]"}, {"not": {"pattern": "[\\r\\n\\x00]"}}],
}
# check_command(multiline=True), a job's: lines allowed, still no NUL.
_SCRIPT = {
    "type": "string",
    "maxLength": MAX_COMMAND,
    "allOf": [{"pattern": f"[^{_SPACE}]"}, {"not": {"pattern": "\\x00"}}],
}
# TaskBook._check_job_name: 1 to 200 characters, none of them whitespace.
_JOB_NAME = {"type": "string", "pattern": f"^[^{_SPACE}]{{1,200}}$"}
_NO_NUL = "^[^\\x00]*$"
# tasks.parse_time: ISO 8601 with its offset, or Unix seconds up to the year 9999.
_TIME_INPUT = {
    "anyOf": [
        {"type": "string", "format": "date-time", "maxLength": 64},
        {"type": "number", "minimum": 0, "maximum": 253402300799},
        {"type": "null"},
    ]
}


def _alert_rule(events: tuple[str, ...]) -> dict[str, Any]:
    """An alert rule as tasks.check_alerts takes it: which options go with which events."""

    def only_with(name: str, events_taking: frozenset[str]) -> dict[str, Any]:
        return {
            "if": {"properties": {"on": {"not": {"enum": sorted(events_taking)}}}},
            "then": {"properties": {name: {"type": "null"}}},
        }

    return {
        "type": "object",
        "required": ["on", "channel"],
        "additionalProperties": False,
        "properties": {
            "on": {"enum": list(events)},
            "channel": {**_CHANNEL_NAME, "description": "a channel's name (GET /api/channels)"},
            "after": {
                "type": ["integer", "null"], "minimum": AFTER_RANGE[0], "maximum": AFTER_RANGE[1], "default": 1,
                "description": "failure, timeout, lost: speak once this many runs in a row ended badly; "
                "recovery: when a success ends a streak at least this long",
            },
            "every": {
                "type": ["number", "null"], "minimum": EVERY_RANGE[0], "maximum": EVERY_RANGE[1],
                "description": "seconds between reminders while it lasts (failure, timeout, lost, stale); 0: every bad end",
            },
            "mutedUntil": {**_TIME_INPUT, "description": "silent until then"},
            "attempts": {
                "enum": [*ATTEMPTS_MODES, None], "default": "last",
                "description": "last: only a run's final attempt (after its retries); each: every attempt, without after or every",
            },
        },
        "allOf": [
            only_with("after", TAKES_AFTER),
            only_with("every", TAKES_EVERY),
            only_with("attempts", TAKES_ATTEMPTS),
            {
                "if": {"required": ["attempts"], "properties": {"attempts": {"const": "each"}}},
                "then": {"properties": {"after": {"enum": [1, None]}, "every": {"type": "null"}}},
            },
        ],
    }


_TASK_EVENTS = tuple(event for event in ALERT_EVENTS if event not in GLOBAL_ONLY)
_DEADLINE = {"type": ["number", "null"], "minimum": DEADLINE_RANGE[0], "maximum": DEADLINE_RANGE[1]}
_DEADLINE_HELP = {
    "startDeadline": "seconds after its scheduled time by which a run must have started (else: late)",
    "finishDeadline": "seconds after its scheduled time by which a run must have finished (else: overrun)",
    "freshness": "seconds within which some run must have succeeded (else: stale, health down)",
}


def _option_schema(name: str, hint: Any, default: Any) -> dict[str, Any]:
    """A task option's schema from its type in TaskOptions and its bounds in tasks.py."""
    if name == "alerts":
        return {
            "type": ["array", "null"], "items": _ref("AlertRule"), "maxItems": MAX_RULES, "default": [],
            "description": "who is told what; none: the rules of /api/alerts/defaults",
        }
    if name in _DEADLINE_HELP:
        return {**_DEADLINE, "description": _DEADLINE_HELP[name] + "; null: the default's"}
    if name == "ping":
        return {
            "anyOf": [{"type": "string", "pattern": PING_UUID.pattern}, {"type": "null"}],
            "description": "a ping check's uuid (POST /api/ping/<uuid>); the task is never run here",
        }
    if get_origin(hint) is Mapping:  # env, as check_env takes it (null is no variables)
        return {
            "type": ["object", "null"],
            "propertyNames": {"pattern": ENV_NAME.pattern},
            "additionalProperties": {"type": "string", "pattern": _NO_NUL},
            "default": {},
        }
    kinds = get_args(hint) or (hint,)
    types = [_JSON_TYPES[kind] for kind in kinds]
    schema: dict[str, Any] = {"type": types[0] if len(types) == 1 else types}
    if name in _OPTION_ENUMS:
        schema = {"enum": list(_OPTION_ENUMS[name])}
    if name in _OPTION_RANGES:
        bounds = _OPTION_RANGES[name]
        schema["minimum" if bounds.low_included else "exclusiveMinimum"] = bounds.low
        schema["maximum"] = bounds.high
    if name == "target":
        schema["description"] = "any, all, worker:<name> or label:<label>"
        schema["pattern"] = _portable(TARGET.pattern)
    if name == "timezone":
        schema = {
            "anyOf": [_ref("TimeZone"), {"type": "null"}],
            "description": "an IANA time zone for the schedule, such as Europe/Berlin (default: the scheduler's)",
        }
    if name == "pool":
        schema["pattern"] = POOL_NAME.pattern
    if name == "cwd":
        schema.update(minLength=1, maxLength=4096, pattern=_NO_NUL)
    if name == "pauseReason":
        schema.update(maxLength=MAX_REASON, pattern="^[^\\n]*$")
    if name == "pausedUntil":
        schema = {"type": ["string", "null"], "format": "date-time", "description": "resumes by itself then"}
    if default is not None:
        schema["default"] = default
    return schema


_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}
_OPTION_ENUMS = {"overlap": OVERLAP_POLICIES, "missed": MISSED_POLICIES}
_OPTION_RANGES = {
    "timeout": TIMEOUT_RANGE,
    "retries": RETRIES_RANGE,
    "retryDelay": RETRY_DELAY_RANGE,
    "missedCap": MISSED_CAP_RANGE,
    "maxConcurrent": MAX_CONCURRENT_RANGE,
    "jitter": JITTER_RANGE,
}
_OPTIONS: dict[str, Any] = {
    name: _option_schema(name, hint, getattr(DEFAULT_OPTIONS, name))
    for name, hint in get_type_hints(TaskOptions).items()
}
# As requests may give them: a time to resume at may also be Unix seconds,
# and ping: true asks for a new uuid.
_REQUEST_OPTIONS: dict[str, Any] = {
    **_OPTIONS,
    "pausedUntil": {**_TIME_INPUT, "description": "resumes by itself then"},
    "ping": {
        "anyOf": [{"type": "string", "pattern": PING_UUID.pattern}, {"type": "null"}, {"const": True}],
        "description": "true: make the task a ping check with a new random uuid (or give it a new one); null: not one",
    },
}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """*schema* or null: the run routes drop a field given as null, as if left out."""
    return {"anyOf": [schema, {"type": "null"}]}


# POST /api/tasks and PATCH: a pause's time and reason go with paused: true
# in the same request (TaskOptions.from_mapping, TaskChanges.edit).
_GOES_WITH_PAUSED = {
    "dependentSchemas": {
        name: {"anyOf": [{"required": ["paused"], "properties": {"paused": {"const": True}}}, {"properties": {name: {"type": "null"}}}]}
        for name in ("pausedUntil", "pauseReason")
    }
}
_IF_MATCH = {
    "name": "If-Match",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    # "*" matches any version: the change is made whatever it is now.
    "examples": {"any version": {"value": "*"}},
    "description": "The ETag the change is based on (or * for any); a task that has changed since gets 412",
}


def _tagged(response: dict[str, Any]) -> dict[str, Any]:
    """A task response, with the ETag header it carries."""
    return {**response, "headers": {"ETag": {"description": "The task's version, for If-Match", "schema": {"type": "string"}}}}


# The dashboard's files as they are installed, their version and their types.
_STATIC = StaticFiles(static_root())
_STATIC_FILES = sorted(_STATIC.files)
_STATIC_TYPES = sorted({content_type(name) for name in _STATIC_FILES})


def _static_answer(description: str, kinds: list[str], cache: str) -> dict[str, Any]:
    """A dashboard file's 200, with the headers scheduler/http_static.py sends."""
    text = {"schema": {"type": "string"}}
    return {
        "description": description,
        "content": {kind: text for kind in kinds},
        "headers": {
            "Cache-Control": {"schema": {"type": "string"}, "description": cache},
            "ETag": {"schema": {"type": "string"}, "description": "a hash of the content (with -gz when gzipped)"},
            "Vary": {"schema": {"const": "Accept-Encoding"}, "description": "when the file is also kept gzipped"},
            "Content-Encoding": {"schema": {"const": "gzip"}, "description": "when Accept-Encoding allows gzip"},
        },
    }


_NOT_MODIFIED = {"description": "Not modified: the ETag sent in If-None-Match is current"}

_COMMON_ERRORS = {
    "400": _error("Malformed JSON, a missing or mistyped field, or an invalid schedule"),
    "401": _error("Missing or wrong bearer token (when an API token or a tokens file is configured)"),
    "413": _error(f"Body larger than the limit ({MAX_BODY // 1024 // 1024} MiB by default)"),
    "415": _error("Body is not JSON"),
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Job scheduler API", "version": "1"},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
            "NewTask": {
                "type": "object",
                "required": ["schedule", "command"],
                "additionalProperties": False,
                "properties": {
                    "schedule": _SCHEDULE,
                    "command": _COMMAND,
                    "jobName": {**_JOB_NAME, "type": ["string", "null"], "description": "default: task_<id>"},
                    **_REQUEST_OPTIONS,
                },
                **_GOES_WITH_PAUSED,
            },
            "TimeZone": {"enum": sorted(available_timezones()), "description": "An IANA time zone"},
            "Task": {
                "type": "object",
                "required": ["id", "jobName", "schedule", "command", "nextRun"],
                "properties": {
                    "id": {"type": "integer"},
                    "jobName": {"type": "string"},
                    "schedule": {"type": "string"},
                    "description": {"type": "string"},
                    "command": {"type": "string"},
                    "nextRun": _TIME,
                    **_OPTIONS,
                    "lastJob": {
                        "anyOf": [_ref("Job"), {"type": "null"}],
                        "description": "The task's newest job (the live record while it is active), null if it has "
                        "none; only in GET /api/tasks and GET /api/tasks/{id}, not in the answers to changes or the feed",
                    },
                    "health": {"enum": list(TASK_HEALTHS), "description": "up, late, failing, down (no success within freshness) or paused"},
                },
            },
            "AlertRule": _alert_rule(_TASK_EVENTS),
            "DefaultAlertRule": _alert_rule(ALERT_EVENTS),
            "AlertDefaults": {
                "type": "object",
                "additionalProperties": False,
                "description": "What applies to every task that says nothing itself, and the rules about workers",
                "properties": {
                    "rules": {
                        "type": ["array", "null"], "items": _ref("DefaultAlertRule"), "maxItems": MAX_RULES,
                        "description": "for tasks without alerts of their own; worker_offline rules only here",
                    },
                    **{name: {**_DEADLINE, "description": text} for name, text in _DEADLINE_HELP.items()},
                    "workerOfflineAfter": {**_DEADLINE, "description": "seconds a worker may be away before worker_offline", "default": 300},
                },
            },
            "TriggeredBy": {
                "type": "object",
                "required": ["kind", "name", "job"],
                "description": "What started a job or changed a task",
                "properties": {
                    "kind": {"enum": list(TRIGGER_KINDS)},
                    "name": {"type": ["string", "null"], "description": "the token's or person's name; for tcp, the client"},
                    "job": {"type": ["integer", "null"], "description": "the job a retry re-runs"},
                },
            },
            "TaskChanges": {
                "type": "object",
                "additionalProperties": False,
                "description": "Any of a task's fields; the rest stay as they are",
                **_GOES_WITH_PAUSED,
                "properties": {"schedule": _SCHEDULE, "command": _COMMAND, "jobName": _JOB_NAME, **_REQUEST_OPTIONS},
            },
            "Pause": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "until": {**_TIME_INPUT, "description": "resume by itself then"},
                    "reason": _OPTIONS["pauseReason"],
                },
            },
            "RunOverrides": {
                "type": "object",
                "additionalProperties": False,
                "description": "What this one run uses instead of the task's own",
                "properties": {name: _nullable(_REQUEST_OPTIONS[name]) for name in RUN_OVERRIDES},
            },
            "Revision": {
                "type": "object",
                "required": ["id", "taskId", "at", "action", "by", "before", "after"],
                "properties": {
                    "id": {"type": "integer"},
                    "taskId": {"type": "integer"},
                    "at": _TIME,
                    "action": {"enum": list(REVISION_ACTIONS)},
                    "by": _ref("TriggeredBy"),
                    "before": {"type": ["object", "null"], "description": "the task's tasks.db record before"},
                    "after": {"type": ["object", "null"], "description": "and after"},
                },
            },
            "Maintenance": {
                "type": "object",
                "required": ["on", "since", "by"],
                "properties": {"on": {"type": "boolean"}, "since": _TIME, "by": {"type": ["string", "null"]}},
            },
            "NewJob": {
                "type": "object",
                "required": ["command"],
                "additionalProperties": False,
                "properties": {
                    "command": _SCRIPT,
                    **{name: _nullable(_REQUEST_OPTIONS[name]) for name in ("target", "timeout", "env", "cwd")},
                },
            },
            "Job": {
                "type": "object",
                "required": [
                    "id", "taskId", "command", "status", "worker", "exitCode", "createdAt", "startedAt", "finishedAt",
                    "version",
                ],
                "properties": {
                    "id": {"type": "integer"},
                    "taskId": {"type": ["integer", "null"]},
                    "command": {"type": "string"},
                    "status": {"enum": _STATUSES},
                    "worker": {"type": ["string", "null"]},
                    "exitCode": {"type": ["integer", "null"]},
                    "signal": {"type": ["integer", "null"]},
                    "target": {"type": "string"},
                    "timeout": {"type": ["number", "null"]},
                    "cwd": {"type": ["string", "null"]},
                    "attempt": {"type": "integer"},
                    "triggeredBy": {
                        "anyOf": [_ref("TriggeredBy"), {"type": "null"}],
                        "description": "What started the job; null for jobs recorded before this was kept",
                    },
                    "reason": {"type": ["string", "null"]},
                    "createdAt": _TIME,
                    "scheduledAt": _TIME,
                    "startedAt": _TIME,
                    "finishedAt": _TIME,
                    "cancelRequestedAt": {
                        **_TIME,
                        "description": "When a cancel was asked for while the job ran; null if never",
                    },
                    "duration": {"type": ["number", "null"]},
                    "waiting": {"type": ["string", "null"], "description": "why a queued job has not started yet"},
                    "version": {
                        "type": "integer",
                        "minimum": 1,
                        "description": "Grows with every change of the job's record, across restarts too: of two "
                        "copies of a job (an answer, a feed event), the higher version is the newer",
                    },
                },
            },
            "Worker": {
                "type": "object",
                "required": ["name", "labels", "slots", "running", "connectedAt", "clockOffset"],
                "properties": {
                    "name": {"type": "string"},
                    "labels": {"type": "array", "items": {"type": "string"}},
                    "slots": {"type": "integer"},
                    "running": {"type": "integer"},
                    "jobs": {"type": "array", "items": {"type": "integer"}},
                    "connectedAt": _TIME,
                    "clockOffset": {
                        "type": "number",
                        "description": "Seconds the scheduler's clock is ahead of the worker's, measured at its hello",
                    },
                },
            },
        },
    },
    "security": [{"bearer": []}, {}],
    "paths": {
        "/api/health": {
            "get": {
                "summary": "Liveness",
                "security": [{}],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["status"],
                            "properties": {
                                "status": {"const": "ok"},
                                "tasks": {"type": "integer"},
                                "workers": {"type": "integer"},
                                "queued": {"type": "integer"},
                                "lastClockStep": {
                                    "description": "The last step of the wall clock (against the monotonic clock) the "
                                    "cron tick saw since the start, or null",
                                    "oneOf": [
                                        {"type": "null"},
                                        {
                                            "type": "object",
                                            "required": ["direction", "seconds", "at"],
                                            "additionalProperties": False,
                                            "properties": {
                                                "direction": {"enum": ["forward", "back"]},
                                                "seconds": {"type": "number", "minimum": 0, "description": "Its size"},
                                                "at": {"type": "string", "format": "date-time", "description": "When it was seen (the wall time after it)"},
                                            },
                                        },
                                    ],
                                },
                                "node": {"type": "string", "description": "this scheduler node's name (--node-name)"},
                                "leader": {"type": "boolean", "description": "whether this node leads (fires cron) now"},
                                "epoch": {"type": "integer", "minimum": 0, "description": "the leader lease's epoch (1 in embedded mode)"},
                                "version": {"type": "string", "description": "only with the API token"},
                                "timezone": {
                                    "type": "string",
                                    "description": "the scheduler's time zone, an IANA name (such as Europe/Berlin), "
                                    "which schedules without their own are read in",
                                },
                            },
                        },
                        'Up. With an API token set, a request without it gets only {"status": "ok"}',
                    )
                },
            }
        },
        "/api/openapi.json": {"get": {"summary": "This document", "responses": {"200": _json({"type": "object"}, "OpenAPI")}}},
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {"200": {"description": "Text format", "content": {"text/plain": {"schema": {"type": "string"}}}}},
            }
        },
        "/api/tasks": {
            "get": {"summary": "All tasks", "responses": {"200": _json({"type": "array", "items": _ref("Task")}, "Tasks")}},
            "post": {
                "summary": "Add a task",
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("NewTask")}}},
                "responses": {"201": _json(_ref("Task"), "Added"), **_COMMON_ERRORS, "503": _error("tasks file could not be written")},
            },
        },
        "/api/tasks/{id}": {
            "parameters": [_ID],
            "get": {
                "summary": "One task, with its newest job",
                "responses": {"200": _tagged(_json(_ref("Task"), "The task")), "404": _error("No such task")},
            },
            "patch": {
                "summary": "Change a task in place (it keeps its id and job history)",
                "parameters": [_IF_MATCH],
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("TaskChanges")}}},
                "responses": {
                    "200": _tagged(_json(_ref("Task"), "Changed")),
                    "404": _error("No such task"),
                    "412": _error("The task changed since the ETag given in If-Match"),
                    **_COMMON_ERRORS,
                    "503": _error("tasks file could not be written"),
                },
            },
            "delete": {
                "summary": "Remove a task",
                "parameters": [_IF_MATCH],
                "responses": {
                    "204": {"description": "Removed"},
                    "404": _error("No such task"),
                    "412": _error("The task changed since the ETag given in If-Match"),
                    "503": _error("tasks file could not be written"),
                },
            },
        },
        "/api/tasks/{id}/run": {
            "parameters": [_ID],
            "post": {
                "summary": "Run a task now (optionally with other env, cwd, timeout or target)",
                "requestBody": {"required": False, "content": {"application/json": {"schema": _ref("RunOverrides")}}},
                "responses": {
                    "202": _json(_ref("Job"), "The job (a list for target all)"),
                    "404": _error("No such task"),
                    "409": _error("The task is a ping check: it is not run here"),
                    **_COMMON_ERRORS,
                    "503": _error("Queue full"),
                },
            },
        },
        "/api/tasks/{id}/pause": {
            "parameters": [_ID],
            "post": {
                "summary": "Stop a task from firing (until a time, if given); its next run stays computed",
                "parameters": [_IF_MATCH],
                "requestBody": {"required": False, "content": {"application/json": {"schema": _ref("Pause")}}},
                "responses": {
                    "200": _tagged(_json(_ref("Task"), "Paused")),
                    "404": _error("No such task"),
                    "412": _error("The task changed since the ETag given in If-Match"),
                    **_COMMON_ERRORS,
                    "503": _error("tasks file could not be written"),
                },
            },
        },
        "/api/tasks/{id}/resume": {
            "parameters": [_ID],
            "post": {
                "summary": "Let a paused task fire again",
                "parameters": [_IF_MATCH],
                "responses": {
                    "200": _tagged(_json(_ref("Task"), "Resumed")),
                    "404": _error("No such task"),
                    "412": _error("The task changed since the ETag given in If-Match"),
                    **_COMMON_ERRORS,
                    "503": _error("tasks file could not be written"),
                },
            },
        },
        "/api/tasks/{id}/revisions": {
            "parameters": [_ID],
            "get": {
                "summary": "Every change to the task, newest first",
                "parameters": [
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
                    {"name": "before", "in": "query", "schema": {"type": "integer", "minimum": 1}, "description": "only ids below this (paging)"},
                ],
                "responses": {
                    "200": _json({"type": "array", "items": _ref("Revision")}, "Revisions"),
                    "404": _error("No such task, and none ever had revisions"),
                },
            },
        },
        "/api/tasks/{id}/revisions/{revision}/restore": {
            "parameters": [_ID, {"name": "revision", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}],
            "post": {
                "summary": "Put the task back as this revision left it (re-added, with its id, if removed)",
                "responses": {
                    "200": _tagged(_json(_ref("Task"), "Restored")),
                    "404": _error("No such revision of this task"),
                    **_COMMON_ERRORS,
                    "503": _error("tasks file could not be written"),
                },
            },
        },
        "/api/alerts/defaults": {
            "get": {"summary": "The global alert defaults", "responses": {"200": _json(_ref("AlertDefaults"), "The defaults")}},
            "put": {
                "summary": "Replace the global alert defaults (kept across restarts)",
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("AlertDefaults")}}},
                "responses": {
                    "200": _json(_ref("AlertDefaults"), "In force"),
                    **_COMMON_ERRORS,
                    "400": _error("A field out of range, or a rule naming an unknown channel"),
                    "503": _error("alerts.json could not be written"),
                },
            },
        },
        **{
            f"/api/ping/{{check}}{tail}": {
                "parameters": [
                    {
                        "name": "check",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "pattern": PING_UUID.pattern},
                        "examples": {"documented": {"value": PING_EXAMPLE}},
                        "description": "the task's ping uuid",
                    }
                ],
                "post": {
                    "summary": summary,
                    "security": [{}],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["ok", "counted"],
                                "properties": {"ok": {"const": True}, "counted": {"type": "boolean", "description": "false while the task is paused"}},
                            },
                            "Taken",
                        ),
                        "404": _error("No ping check with this uuid"),
                        "429": _error("Too many pings to this check (1/s, bursts of 10) or to all (20/s); try again in a second"),
                    },
                },
            }
            for tail, summary in (
                ("", "A ping check's run succeeded (no API token: the uuid is the secret)"),
                ("/fail", "A ping check's run failed"),
                ("/start", "A ping check's run started"),
            )
        },
        "/api/pools": {
            "get": {
                "summary": "Pools (--pools) and label caps (--label-caps), with the jobs running in each",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["pools", "labels"],
                            "properties": {
                                "pools": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["name", "size", "running"],
                                        "properties": {
                                            "name": {"type": "string"},
                                            "size": {"type": ["integer", "null"], "description": "null: named by a task, but given no size (no cap)"},
                                            "running": {"type": "integer"},
                                        },
                                    },
                                },
                                "labels": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["label", "cap", "running"],
                                        "properties": {"label": {"type": "string"}, "cap": {"type": "integer"}, "running": {"type": "integer"}},
                                    },
                                },
                            },
                        },
                        "Pools and label caps",
                    )
                },
            }
        },
        "/api/maintenance": {
            "get": {"summary": "The maintenance switch", "responses": {"200": _json(_ref("Maintenance"), "The switch")}},
            "post": {
                "summary": "Turn the maintenance switch: while on, no cron fire becomes a job; running jobs finish",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["on"],
                                "additionalProperties": False,
                                "properties": {"on": {"type": "boolean"}},
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json(_ref("Maintenance"), "The switch"),
                    **_COMMON_ERRORS,
                    "503": _error("the switch could not be saved"),
                },
            },
        },
        "/api/schedules/check": {
            "get": {
                "summary": "Validate and describe a schedule, with its next runs and how clock changes move them",
                "parameters": [
                    {
                        "name": "expr",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string"},
                        "description": "a schedule, optionally after CRON_TZ=<zone> and a space",
                    },
                    {
                        "name": "timezone",
                        "in": "query",
                        "schema": {"type": "string"},
                        "description": "IANA zone to read it in (default: the scheduler's); a CRON_TZ= in expr must agree",
                    },
                    {"name": "jobName", "in": "query", "schema": {"type": "string"}, "description": "the task H is hashed from"},
                    {"name": "after", "in": "query", "schema": {"type": "string"}, "description": "ISO 8601 time with offset (default: now)"},
                    {
                        "name": "count",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_CHECK_RUNS, "default": CHECK_RUNS},
                    },
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["valid"],
                            "properties": {
                                "valid": {"type": "boolean"},
                                "error": {"type": "string"},
                                "description": {"type": "string"},
                                "timezone": {"type": "string"},
                                "next": {"type": "array", "items": {"type": "string", "format": "date-time"}},
                                "runs": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["at", "shifted"],
                                        "properties": {
                                            "at": {"type": "string", "format": "date-time"},
                                            "shifted": {
                                                "type": ["string", "null"],
                                                "description": "how a change of clocks moves this run, or null",
                                            },
                                        },
                                    },
                                },
                            },
                        },
                        "valid and error, or valid, description, timezone and the next runs",
                    ),
                    "400": _error("No expr, or a bad timezone, after or count"),
                },
            }
        },
        "/api/jobs": {
            "get": {
                "summary": "Jobs, newest first",
                "parameters": [
                    {"name": "status", "in": "query", "schema": {"enum": _STATUSES}},
                    {"name": "task", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": _MAX_ID}},
                    {"name": "worker", "in": "query", "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}},
                    {
                        "name": "before",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": _MAX_ID},
                        "description": "only ids below this (paging)",
                    },
                ],
                "responses": {
                    "200": {
                        **_json({"type": "array", "items": _ref("Job")}, "Jobs"),
                        "headers": {
                            "X-Total-Count": {
                                "schema": {"type": "integer", "minimum": 0},
                                "description": "How many jobs match the filters in all (before and limit aside), "
                                "as the job database held them when the page was read",
                            }
                        },
                    },
                    "400": _error("Bad filter"),
                },
            },
            "post": {
                "summary": "Run a command now, or a batch of commands",
                "description": "One job object, or a list of 1 to "
                f"{MAX_BATCH} of them (a batch): every item is checked before any job is made, all or nothing, "
                "and a bad one is named by its index (\"job 3: ...\"). A batch's answer lists its jobs in the "
                "items' order, an item with target all giving one job per connected worker; the queue limit "
                "is checked for the whole batch.",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "oneOf": [
                                    _ref("NewJob"),
                                    {"type": "array", "items": _ref("NewJob"), "minItems": 1, "maxItems": MAX_BATCH},
                                ]
                            }
                        }
                    },
                },
                "responses": {
                    "202": _json(
                        {"oneOf": [_ref("Job"), {"type": "array", "items": _ref("Job")}]},
                        "The job (a list for target all, and for a batch)",
                    ),
                    **_COMMON_ERRORS,
                    "400": _error(f"Malformed JSON, a missing or mistyped field, or a batch empty or of more than {MAX_BATCH} jobs"),
                    "503": _error("Queue full (for a batch: too little room for all of its jobs)"),
                },
            },
        },
        "/api/jobs/{id}": {
            "parameters": [_ID],
            "get": {"summary": "One job", "responses": {"200": _json(_ref("Job"), "The job"), "404": _error("No such job")}},
        },
        "/api/jobs/{id}/log": {
            "parameters": [_ID],
            "get": {
                "summary": "Output so far",
                "responses": {
                    "200": {
                        "description": "Output",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                        "headers": {
                            "X-Output-Seq": {
                                "description": "The seq of the last output chunk in it, where known (a job running on "
                                "this node; with --db, any job): the live feed's output events up to it are in it already",
                                "schema": {"type": "string", "pattern": "^[0-9]+$"},
                            }
                        },
                    },
                    "404": _error("No such job"),
                },
            },
        },
        "/api/jobs/{id}/output": {
            "parameters": [_ID],
            "get": {
                "summary": "The stored output with its streams (stdout and stderr apart), in order",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["dropped", "parts"],
                            "properties": {
                                "dropped": {"type": "integer", "minimum": 0, "description": "bytes of earlier output the cap dropped"},
                                "parts": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["stream", "text"],
                                        "properties": {"stream": {"enum": ["stdout", "stderr"]}, "text": {"type": "string"}},
                                    },
                                },
                            },
                        },
                        "Runs of one stream each",
                    ),
                    "404": _error("No such job"),
                },
            },
        },
        "/api/jobs/{id}/rerun": {
            "parameters": [_ID],
            "post": {
                "summary": "Run the job's command again with the same inputs (environment, working directory, timeout, target, task)",
                "responses": {
                    "202": _json(_ref("Job"), "The new job"),
                    "404": _error("No such job"),
                    **_COMMON_ERRORS,
                    "503": _error("Queue full"),
                },
            },
        },
        "/api/jobs/{id}/cancel": {
            "parameters": [_ID],
            "post": {
                "summary": "Stop a job",
                "responses": {
                    "202": _json(
                        _ref("Job"),
                        "Cancel sent (kept until its worker is back, if it is away), or a queued job cancelled; "
                        "with --db, a job another node manages is cancelled through the database",
                    ),
                    "404": _error("No such job"),
                    "409": _error("Already finished"),
                    "503": _error("With --db: the job database could not be reached to cancel a job another node manages"),
                },
            },
        },
        "/api/workers": {
            "get": {"summary": "Connected workers", "responses": {"200": _json({"type": "array", "items": _ref("Worker")}, "Workers")}}
        },
        "/api/events": {
            "get": {
                "summary": "Live feed (Server-Sent Events): task, job, worker, output and maintenance events",
                "parameters": [
                    {
                        "name": "job",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": _MAX_ID},
                        "description": "also stream this job's output",
                    }
                ],
                "responses": {
                    "200": {"description": "Event stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                    "400": _error("job is not an id"),
                    "503": _error("Too many live-feed clients"),
                },
            }
        },
        "/ws/worker": {
            "get": {
                "summary": "Worker WebSocket (see docs/protocol.md)",
                "security": [{}],
                "responses": {
                    "101": {"description": "Switching protocols"},
                    "426": {
                        **_error("Not a WebSocket upgrade (a plain GET)"),
                        "headers": {"Upgrade": {"schema": {"const": "websocket"}}},
                    },
                    # Autobahn's handshake answers these itself, without a body.
                    "400": {"description": "A malformed WebSocket handshake"},
                    "401": {"description": "Bad or missing worker token"},
                    "403": {"description": "A browser (it sent an Origin)"},
                },
            }
        },
        "/": {
            "get": {
                "summary": "The dashboard: index.html, naming its files under /static/v-{version}/",
                "security": [{}],
                "responses": {
                    "200": _static_answer("HTML", [content_type("index.html")], "no-cache"),
                    "304": _NOT_MODIFIED,
                },
            }
        },
        "/static/{path}": {
            "parameters": [{"name": "path", "in": "path", "required": True, "schema": {"enum": _STATIC_FILES}}],
            "get": {
                "summary": "A dashboard file by its plain name (for pages from before an upgrade)",
                "security": [{}],
                "responses": {
                    "200": _static_answer("A file", _STATIC_TYPES, "no-cache"),
                    "304": _NOT_MODIFIED,
                    "404": _error("No such file"),
                },
            },
        },
        "/static/v-{version}/{path}": {
            "parameters": [
                {
                    "name": "version",
                    "in": "path",
                    "required": True,
                    "schema": {"enum": [_STATIC.version]},
                    "description": "a hash of every file: the one the dashboard's page names",
                },
                {"name": "path", "in": "path", "required": True, "schema": {"enum": _STATIC_FILES}},
            ],
            "get": {
                "summary": "A dashboard file under its versioned name, cached for a year",
                "security": [{}],
                "responses": {
                    "200": _static_answer("A file", _STATIC_TYPES, "public, max-age=31536000, immutable"),
                    "304": _NOT_MODIFIED,
                    "404": _error("No such file, or another version (the page is older than the scheduler: reload it)"),
                },
            },
        },
    },
}


# -- alerts: channels and deliveries (scheduler/alert_channels.py, alert_outbox.py) --

_ADDRESS_SCHEMA = {"type": "string", "pattern": f"^{ADDRESS.pattern}$", "maxLength": MAX_ADDRESS}
_CHANNEL_FIELDS: dict[str, Any] = {
    "url": {"type": "string", "pattern": f"^{URL.pattern}$", "maxLength": MAX_URL},
    "secret": {
        "type": "string",
        "pattern": f"^{SECRET.pattern}$",
        "description": "webhook: signs each request (HMAC-SHA256); ntfy: its access token. Never shown again",
    },
    "host": {"type": "string", "pattern": f"^({HOST.pattern})$", "maxLength": MAX_HOST},
    "port": {"type": "integer", "minimum": 1, "maximum": 65535, "default": SMTP_PORT},
    "starttls": {"type": "boolean", "default": True},
    "username": {"type": "string", "pattern": f"^{CREDENTIAL.pattern}$"},
    "password": {"type": "string", "pattern": f"^{CREDENTIAL.pattern}$", "description": "never shown again"},
    "from": _ADDRESS_SCHEMA,
    "to": {"anyOf": [_ADDRESS_SCHEMA, {"type": "array", "items": _ADDRESS_SCHEMA, "minItems": 1, "maxItems": MAX_RECIPIENTS}]},
}
# Per kind: the fields it takes (FIELDS) and which it needs.
_CHANNEL_REQUIRED = {"webhook": ["url", "secret"], "slack": ["url"], "discord": ["url"], "ntfy": ["url"], "email": ["host", "from", "to"]}


def _new_channel(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "title": kind,
        "required": ["name", "kind", *_CHANNEL_REQUIRED[kind]],
        "additionalProperties": False,
        "properties": {
            "name": _CHANNEL_NAME,
            "kind": {"const": kind},
            **{name: _CHANNEL_FIELDS[name] for name in FIELDS[kind]},
        },
    }
    if kind == "email":
        # A login goes whole, and never in clear.
        schema["dependentRequired"] = {"username": ["password"], "password": ["username"]}
        schema["dependentSchemas"] = {"password": {"properties": {"starttls": {"const": True}}}}
    return schema


_TIME_OR_NULL = {"type": ["string", "null"], "format": "date-time"}
_ALERT_SCHEMAS: dict[str, Any] = {
    "NewChannel": {"oneOf": [_new_channel(kind) for kind in CHANNEL_KINDS]},
    "Channel": {
        "type": "object",
        "required": ["name", "kind"],
        "description": "A channel as shown: secrets and passwords are never shown, only whether one is set; "
        "a Slack or Discord URL (which is its credential) shows only its scheme and host",
        "properties": {
            "name": {"type": "string"},
            "kind": {"enum": list(CHANNEL_KINDS)},
            "url": {"type": "string"},
            "secretSet": {"type": "boolean"},
            "host": {"type": "string"},
            "port": {"type": "integer"},
            "starttls": {"type": "boolean"},
            "username": {"type": ["string", "null"]},
            "passwordSet": {"type": "boolean"},
            "from": {"type": "string"},
            "to": {"type": "array", "items": {"type": "string"}},
        },
    },
    "Delivery": {
        "type": "object",
        "required": ["id", "key", "channel", "event", "state", "attempts", "createdAt", "reply"],
        "properties": {
            "id": {"type": "integer"},
            "key": {"type": "string", "description": "the event's idempotency key, sent as Idempotency-Key"},
            "channel": {"type": "string"},
            "event": {"type": "string"},
            "taskId": {"type": ["integer", "null"]},
            "jobId": {"type": ["integer", "null"]},
            "detail": {"type": ["string", "null"]},
            "state": {"enum": list(DELIVERY_STATES)},
            "attempts": {"type": "integer"},
            "createdAt": _TIME_OR_NULL,
            "lastAttemptAt": _TIME_OR_NULL,
            "nextAttemptAt": {**_TIME_OR_NULL, "description": "while pending"},
            "sentAt": _TIME_OR_NULL,
            "reply": {"type": ["string", "null"], "description": "the receiver's status and first bytes, or the error"},
        },
    },
}
_CHANNEL_PATH = {"name": "name", "in": "path", "required": True, "schema": _CHANNEL_NAME, "examples": {"ops": {"value": "ops"}}}
_PAGE = [
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}},
    {"name": "before", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": _MAX_ID}, "description": "only ids below this (paging)"},
]
_DELIVERIES = _json({"type": "array", "items": _ref("Delivery")}, "Alerts, newest first")
_ALERT_PATHS: dict[str, Any] = {
    "/api/channels": {
        "get": {"summary": "Alert channels", "responses": {"200": _json({"type": "array", "items": _ref("Channel")}, "Channels by name")}},
        "post": {
            "summary": "Create an alert channel (a name is taken once: delete a channel to replace it)",
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("NewChannel")}}},
            "responses": {
                "201": {
                    **_json(_ref("Channel"), "Created"),
                    "headers": {"Location": {"description": "/api/channels/<name>", "schema": {"type": "string"}}},
                },
                "409": _error("A channel by that name exists"),
                **_COMMON_ERRORS,
                "503": _error("The job database could not be written"),
            },
        },
    },
    "/api/channels/{name}": {
        "parameters": [_CHANNEL_PATH],
        "delete": {
            "summary": "Delete a channel (its alerts still queued fail when their turn comes)",
            "responses": {
                "204": {"description": "Deleted"},
                "404": _error("No such channel"),
                "503": _error("The job database could not be written"),
            },
        },
    },
    "/api/channels/{name}/test": {
        "parameters": [_CHANNEL_PATH],
        "post": {
            "summary": "Send a test alert to the channel now (not through the outbox) and tell what the receiver said",
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["outcome", "status", "reply"],
                        "properties": {
                            "outcome": {"enum": ["sent", "retry", "failed"], "description": "retry: the receiver was unreachable or asked for later"},
                            "status": {"type": ["integer", "null"], "description": "the receiver's HTTP status, if it answered over HTTP"},
                            "reply": {"type": "string", "description": "the status and first bytes of the answer, or the error"},
                        },
                    },
                    "Tried (whether or not it arrived: see outcome)",
                ),
                "404": _error("No such channel"),
                **_COMMON_ERRORS,
            },
        },
    },
    "/api/alerts": {
        "get": {
            "summary": "Every alert queued, sent or given up, newest first",
            "parameters": [
                {"name": "state", "in": "query", "schema": {"enum": list(DELIVERY_STATES)}},
                {"name": "channel", "in": "query", "schema": {"type": "string"}},
                {"name": "task", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": _MAX_ID}},
                *_PAGE,
            ],
            "responses": {"200": _DELIVERIES, "400": _error("A bad query parameter")},
        }
    },
    "/api/tasks/{id}/alerts": {
        "parameters": [_ID],
        "get": {
            "summary": "The task's alerts: what was sent, when, and the reply; newest first",
            "parameters": _PAGE,
            "responses": {
                "200": _DELIVERIES,
                "400": _error("A bad query parameter"),
                "404": _error("No such task, and none ever had alerts"),
            },
        },
    },
}
OPENAPI["components"]["schemas"].update(_ALERT_SCHEMAS)
OPENAPI["paths"].update(_ALERT_PATHS)

# Who is asking, and the audit log (scheduler/access_tokens.py, scheduler/audit.py).
_ID_LIST = {"type": ["array", "null"], "items": {"type": "integer"}}
OPENAPI["components"]["schemas"].update(
    {
        "Me": {
            "type": "object",
            "required": ["name", "person", "scopes", "tasks", "labels"],
            "properties": {
                "name": {"type": ["string", "null"], "description": "the token's or person's name; null when no token is configured"},
                "person": {"type": "boolean", "description": "named by the authenticating proxy, not by a token"},
                "scopes": {"type": "array", "items": {"enum": list(SCOPES)}, "description": "every scope held (admin spelled out)"},
                "tasks": {**_ID_LIST, "description": "the only tasks 'run' may act on (null: any)"},
                "labels": {"type": ["array", "null"], "items": {"type": "string"}, "description": "the only label: targets 'run' may use (null: any)"},
            },
        },
        "AuditEntry": {
            "type": "object",
            "required": ["id", "at", "action", "who", "address", "taskId", "jobId", "detail"],
            "properties": {
                "id": {"type": "integer"},
                "at": {"type": "string", "format": "date-time"},
                "action": {"enum": list(AUDIT_ACTIONS)},
                "who": {"type": "string", "description": "the token's or person's name, or what acted (schedule, tokens file...)"},
                "address": {"type": ["string", "null"]},
                "taskId": {"type": ["integer", "null"]},
                "jobId": {"type": ["integer", "null"]},
                "detail": {"type": ["object", "null"], "description": "before and after for task changes; the command for runs; never a token or a secret"},
            },
        },
    }
)
OPENAPI["paths"].update(
    {
        "/api/me": {"get": {"summary": "Who the token or person asking is, and what they may do", "responses": {"200": _json(_ref("Me"), "The caller")}}},
        "/api/cluster": {
            "get": {
                "summary": "The scheduler nodes and which leads (one node, the leader, in embedded mode)",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["leader", "epoch", "leaderSince", "nodes"],
                            "additionalProperties": False,
                            "properties": {
                                "leader": {"type": ["string", "null"], "description": "the leading node's name; null while none is known"},
                                "epoch": {"type": "integer", "minimum": 0, "description": "the lease's epoch, one more at every takeover"},
                                "leaderSince": {
                                    "type": ["string", "null"],
                                    "format": "date-time",
                                    "description": "since when the leader has led (its epoch began); null while unknown",
                                },
                                "nodes": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["name", "address", "leader", "lastSeen", "workers"],
                                        "additionalProperties": False,
                                        "properties": {
                                            "name": {"type": "string"},
                                            "address": {"type": "string", "description": "its dashboard's address"},
                                            "leader": {"type": "boolean"},
                                            "lastSeen": _TIME,
                                            "workers": {"type": "integer", "minimum": 0, "description": "workers connected to it"},
                                        },
                                    },
                                },
                            },
                        },
                        "The cluster",
                    ),
                    "503": _error("The database holding the nodes could not be read"),
                },
            }
        },
        "/api/audit": {
            "get": {
                "summary": "The audit log: who did what, when and from where; newest first",
                "parameters": [
                    {"name": "who", "in": "query", "schema": {"type": "string"}},
                    {"name": "action", "in": "query", "schema": {"enum": list(AUDIT_ACTIONS)}},
                    {"name": "task", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": _MAX_ID}},
                    {"name": "since", "in": "query", "schema": {"type": "string", "format": "date-time"}, "description": "ISO 8601 with offset"},
                    *_PAGE,
                ],
                "responses": {
                    "200": {
                        **_json({"type": "array", "items": _ref("AuditEntry")}, "Audit entries"),
                        "headers": {
                            "X-Total-Count": {"schema": {"type": "integer", "minimum": 0}, "description": "How many entries match the filters in all"}
                        },
                    },
                    "400": _error("A bad query parameter"),
                },
            }
        },
    }
)


# What the Guard in front of every route may answer (scheduler/http_guard.py).
_GUARD_ERRORS = {
    "400": _error(
        "A path that could be read two ways (//, %2F, '.' or '..' segments, control characters such as %00, "
        "not UTF-8), a method name not in upper case, or a repeated Host, Origin, Authorization or Content-Type"
    ),
    "403": _error("Host not in --allowed-hosts, or a request that changes state from another Origin"),
    "408": _error("The request did not arrive whole within --http-request-timeout seconds"),
    "413": _COMMON_ERRORS["413"],
}


def _rule_shape(path: str) -> str:
    """/api/tasks/{id} and /api/tasks/<task_id> alike: /api/tasks/{}."""
    return re.sub(r"\{[^}]*\}|<[^>]*>", "{}", path)


_NEEDS = {(method.lower(), _rule_shape(rule)): need for (method, rule), need in ROUTE_NEEDS.items()}


def _forbidden(path: str, method: str) -> dict[str, Any] | None:
    """The 403 of a route that needs a scope (access_scopes.ROUTE_NEEDS), in its words."""
    need = _NEEDS.get((method, _rule_shape(path)))
    if need not in SCOPES:
        return None
    extra = " (or whose tasks= or labels= do not cover this task or target)" if need == "run" else ""
    return _error(
        f"The token or person lacks the '{need}' scope this needs{extra}; or the Host is not in --allowed-hosts, "
        "or a request that changes state came from another Origin"
    )


def _add_guard_errors(paths: dict[str, Any]) -> None:
    for path, item in paths.items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            responses = operation["responses"]
            forbidden = _forbidden(path, method)
            if forbidden is not None:
                responses["403"] = forbidden
            for code, response in _GUARD_ERRORS.items():
                responses.setdefault(code, response)
            if method == "post":  # json_or_bodiless: a body, or a Content-Type, other than JSON
                responses.setdefault("415", _COMMON_ERRORS["415"])
            if not is_public(path.replace("{path}", "file")):
                responses.setdefault("401", _COMMON_ERRORS["401"])


_add_guard_errors(OPENAPI["paths"])
