"""The HTTP side on port 3000: REST API, live feed, dashboard, /ws/worker.

Routes translate JSON to calls on the task state and the dispatcher and
back; they hold no state of their own.  Every error is JSON,
``{"error": "<what and why>"}``, with a fitting status.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from klein import Klein
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from werkzeug.exceptions import MethodNotAllowed, NotFound

from scheduler import __version__, cron
from scheduler.access_tokens import Caller, anyone
from scheduler.alert_channels import ChannelBook, ChannelError, ChannelExists, NoSuchChannel, parse_channel
from scheduler.alert_defaults import AlertDefaults, AlertDefaultsFile
from scheduler.alert_deliveries import DELIVERY_STATES
from scheduler.alert_outbox import AlertSender
from scheduler.alert_watch import AlertWatch
from scheduler.audit import AUDIT_ACTIONS, AuditAction, AuditLog
from scheduler.cluster import Cluster
from scheduler.dispatch import Dispatcher, JobNotFound, QueueFull, RunNow
from scheduler.feed import EventHub
from scheduler.http_guard import HEALTH_PATH, WORKER_PATH, caller_of, token_checked
from scheduler.http_json import (
    audit_json,
    delivery_json,
    iso,
    job_json,
    revision_json,
    task_json,
    worker_json,
)
from scheduler.http_static import IMMUTABLE, REVALIDATE, StaticFile, StaticFiles
from scheduler.job_claims import JobClaims
from scheduler.job_store import AuditQuery, JobStore, JobStoreError, PostgresJobStore
from scheduler.jobs import Job, JobStatus
from scheduler.maintenance import Maintenance
from scheduler.metrics import SchedulerMetrics
from scheduler.settings import Settings
from scheduler.task_book import TaskNotFound
from scheduler.task_changes import EDITABLE, StaleTask, TaskChanges
from scheduler.task_pings import PingKind, TaskPings
from scheduler.task_state import TaskState
from scheduler.tasks import (
    Task,
    TaskError,
    TaskOptions,
    check_command,
    etag,
    parse_time,
    split_zone,
    with_new_ping,
    zone,
)
from scheduler.triggers import TriggeredBy
from scheduler.worker_protocol import WorkerServerFactory
from scheduler.worker_registry import WorkerRegistry

MAX_BODY = Settings.http_max_body
# GET /api/jobs?limit=: how many jobs a page holds by default and at most.
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# POST /api/jobs with a list: how many jobs one batch may hold.
MAX_BATCH = 1000
# GET /api/schedules/check?count=: next runs shown by default and at most.
CHECK_RUNS = 3
MAX_CHECK_RUNS = 50


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def static_root() -> Path:
    """The dashboard files: inside the installed package, or the source tree.

    setup.cfg installs the top-level static/ as scheduler/static/.  (Not
    importlib.resources: static/ has no __init__.py, and a namespace
    package's files() is a MultiplexedPath, whose str() is no path.)
    """
    here = Path(__file__).resolve().parent
    installed = here / "static"
    if (installed / "index.html").is_file():
        return installed
    return here.parent / "static"


def _json(request: IRequest, status: int, body: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(body).encode("utf-8")


def _json_body(request: IRequest, max_body: int) -> Any:
    """The request's JSON value, whatever its type.

    The Guard in front has already refused a non-JSON Content-Type (415)
    and a body over the limit (413); the read below only backs it up.
    """
    assert request.content is not None
    raw = request.content.read(max_body + 1)
    if len(raw) > max_body:
        raise ApiError(413, f"request body is larger than {max_body} bytes")
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise ApiError(400, f"malformed JSON: {error}") from None
    except RecursionError:
        raise ApiError(400, "malformed JSON: nested too deeply") from None


def _body(request: IRequest, max_body: int) -> dict[str, Any]:
    """The request's JSON object."""
    data = _json_body(request, max_body)
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    return data


def _int_arg(request: IRequest, name: str, default: int | None, low: int, high: int) -> int | None:
    values = request.args.get(name.encode())
    if not values:
        return default
    text = values[0].decode("utf-8", "replace")
    if not (text.isascii() and text.isdigit() and len(text) <= 18) or not low <= int(text) <= high:
        raise ApiError(400, f"query parameter '{name}' must be an integer from {low} to {high}")
    return int(text)


def _str_arg(request: IRequest, name: str) -> str | None:
    values = request.args.get(name.encode())
    return values[0].decode("utf-8", "replace") if values else None


def _path_id(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise ApiError(404, f"no such id '{text[:40]}'")
    return int(text)


# What POST /api/tasks/{id}/run may change for one run.
RUN_OVERRIDES = ("env", "cwd", "timeout", "target")


def _optional_body(request: IRequest, max_body: int) -> dict[str, Any]:
    """The JSON object of a request whose body may be left out (an action's options)."""
    assert request.content is not None
    if not request.content.read(1):
        return {}
    request.content.seek(0)
    return _body(request, max_body)


def _if_match(request: IRequest) -> str | None:
    header = request.getHeader(b"if-match")
    return None if header is None else header.decode("latin-1")


def trigger_of(request: IRequest) -> TriggeredBy:
    """Who asks: the token or person (the Guard's Caller), through the dashboard or the API."""
    client = request.getHeader(b"x-triggered-by")
    caller = caller_of(request)
    return TriggeredBy(
        "dashboard" if client == b"dashboard" else "api",
        name=caller.name if caller is not None else None,
        address=caller.address if caller is not None else None,
    )


def _caller(request: IRequest) -> Caller:
    return caller_of(request) or anyone()


def _may_run(request: IRequest, task_id: int | None, target: str) -> None:
    """403 unless the caller's run scope covers this task and target (tasks=, labels=)."""
    refusal = _caller(request).run_refusal(task_id, target)
    if refusal is not None:
        raise ApiError(403, refusal)


def _check_fields(data: dict[str, Any], allowed: set[str] | frozenset[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")


# The fields of POST /api/jobs, one job (the same for each item of a batch).
NEW_JOB_FIELDS = ("command", "target", "timeout", "env", "cwd")


def _new_job(data: dict[str, Any]) -> tuple[str, TaskOptions]:
    """The command and options of one job to run now, or ApiError 400 saying what is wrong."""
    _check_fields(data, _NEW_JOB_FIELD_SET)
    try:
        command = check_command(data.get("command"), multiline=True)
        given = {key: data[key] for key in NEW_JOB_FIELDS[1:] if data.get(key) is not None}
        # The defaults, made once: checking and building them anew cost a
        # few per cent of a one-job POST.
        options = TaskOptions.from_mapping(given) if given else _RUN_DEFAULTS
    except TaskError as error:
        raise ApiError(400, str(error)) from None
    return command, options


_NEW_JOB_FIELD_SET = frozenset(NEW_JOB_FIELDS)
_RUN_DEFAULTS = TaskOptions()


class SchedulerHTTP:
    app = Klein()

    def __init__(
        self,
        state: TaskState,
        worker_factory: WorkerServerFactory,
        *,
        changes: TaskChanges,
        maintenance: Maintenance,
        dispatcher: Dispatcher,
        job_store: JobStore | PostgresJobStore,
        workers: WorkerRegistry,
        next_run: Callable[[int], float | None],
        metrics: SchedulerMetrics,
        feed: EventHub,
        alerts: AlertWatch,
        alert_defaults: AlertDefaultsFile,
        pings: TaskPings,
        max_body: int = MAX_BODY,
        last_clock_step: Callable[[], tuple[str, float, float] | None] = lambda: None,
        channels: ChannelBook,
        alert_sender: AlertSender,
        audit: AuditLog | None = None,
        cluster: Cluster | None = None,
        claims: JobClaims | None = None,
        stored_log: Callable[[int], Deferred[tuple[str, int] | None]] | None = None,
    ) -> None:
        # Manual runs, cancels, channels and the maintenance switch; task
        # changes reach it from TaskChanges.
        self._audit = audit
        self._cluster = cluster
        # With --db: cancels of jobs another node manages (scheduler.job_claims).
        self._claims = claims
        # With --db: a stored log and its last seq (scheduler.feed_relay), so a
        # page watching another node's job skips the relayed chunks it holds.
        self._stored_log = stored_log
        self._state = state
        self._changes = changes
        self._maintenance = maintenance
        self._dispatcher = dispatcher
        self._job_store = job_store
        self._workers = workers
        self._next_run = next_run
        self._metrics = metrics
        self._feed = feed
        self._max_body = max_body
        self._last_clock_step = last_clock_step
        self._channels = channels
        self._alert_sender = alert_sender
        self._alerts = alerts
        self._alert_defaults = alert_defaults
        self._pings = pings
        self._workers_ws = WebSocketResource(worker_factory)
        self._static = StaticFiles(static_root())

    @property
    def _tz(self) -> tzinfo:
        return self._state.book.tz

    def _task_json(self, task: Task) -> dict[str, Any]:
        return task_json(task, self._next_run(task.id), self._tz, self._alerts.health(task))

    def _with_last_job(self, task: Task, newest: Job | None) -> dict[str, Any]:
        """The task and its newest job (GET only: the answers to changes and the feed leave it out)."""
        # The live record of an active job is fresher than its stored row.
        last = None if newest is None else self._job_json(self._dispatcher.jobs.get(newest.id) or newest)
        return {**self._task_json(task), "lastJob": last}

    def _job_json(self, job: Job) -> dict[str, Any]:
        return job_json(job, self._tz, self._dispatcher.waiting(job.id))

    # -- errors ----------------------------------------------------------

    @app.handle_errors(ApiError)
    def api_error(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, ApiError)
        return _json(request, error.status, {"error": error.message})

    @app.handle_errors(NotFound)
    def not_found(self, request: IRequest, failure: Failure) -> bytes:
        return _json(request, 404, {"error": f"no such resource: {request.path.decode('utf-8', 'replace')[:200]}"})

    @app.handle_errors(MethodNotAllowed)
    def not_allowed(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        allowed = ", ".join(getattr(error, "valid_methods", None) or [])
        if allowed:
            request.setHeader(b"Allow", allowed.encode())
        method = request.method.decode("ascii", "replace")
        return _json(request, 405, {"error": f"method {method} is not allowed here (allowed: {allowed})"})

    # -- health, metrics, contract ---------------------------------------

    @app.route(HEALTH_PATH, methods=["GET"])
    def health(self, request: IRequest) -> bytes:
        body: dict[str, Any] = {
            "status": "ok",
            "tasks": len(self._state.book),
            "workers": len(self._workers),
            "queued": self._dispatcher.queued,
            "lastClockStep": self._clock_step_json(),
            # The page shows it with every time.  Like the counts, the Guard
            # keeps it from requests without the API token, when one is set.
            # (ZoneInfo's key is the IANA name; a zone without one, its offset.)
            "timezone": getattr(self._tz, "key", None) or str(self._tz),
        }
        if self._cluster is not None:
            body.update(self._cluster.health())
        if token_checked(request):
            # Only to holders of the API token: a version helps an attacker
            # pick the exploits to try.
            body["version"] = __version__
        return _json(request, 200, body)

    @app.route("/api/cluster", methods=["GET"])
    async def cluster(self, request: IRequest) -> bytes:
        if self._cluster is None:
            raise ApiError(404, "no such resource: /api/cluster")
        try:
            body = await self._cluster.describe()
        except Exception as error:
            raise ApiError(503, f"cannot read the cluster's nodes: {error}") from None
        return _json(request, 200, body)

    def _clock_step_json(self) -> dict[str, Any] | None:
        """The last wall clock step the cron tick saw since the start (CronTicker.last_step), or None."""
        step = self._last_clock_step()
        if step is None:
            return None
        direction, size, at = step
        return {"direction": direction, "seconds": round(size, 3), "at": iso(at, self._tz)}

    @app.route("/metrics", methods=["GET"])
    def metrics(self, request: IRequest) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain; version=0.0.4; charset=utf-8")
        return self._metrics.render()

    @app.route("/api/openapi.json", methods=["GET"])
    def openapi(self, request: IRequest) -> bytes:
        from scheduler.http_openapi import OPENAPI

        return _json(request, 200, OPENAPI)

    # -- tasks ---------------------------------------------------------------

    @app.route("/api/tasks", methods=["GET"])
    async def list_tasks(self, request: IRequest) -> bytes:
        tasks = list(self._state.book)
        newest = {job.task_id: job for job in await self._job_store.newest([task.id for task in tasks])}
        return _json(request, 200, [self._with_last_job(task, newest.get(task.id)) for task in tasks])

    @app.route("/api/tasks", methods=["POST"])
    async def add_task(self, request: IRequest) -> bytes:
        data = with_new_ping(_body(request, self._max_body))
        _check_fields(data, {"schedule", "command", "jobName", *TaskOptions().as_dict()})
        schedule = data.get("schedule")
        if not isinstance(schedule, str):
            raise ApiError(400, "field 'schedule' is required and must be a string")
        job_name = data.get("jobName")
        if job_name is not None and not isinstance(job_name, str):
            raise ApiError(400, "field 'jobName' must be a string")
        try:
            command = check_command(data.get("command"))
            options = TaskOptions.from_mapping(data)
            # A CRON_TZ= prefix becomes the task's timezone (the change splits
            # it off again); H's value does not matter to this check.
            plain, timezone = split_zone(schedule, options.timezone)
            cron.parse(plain, self._tz if timezone is None else zone(timezone), seed=job_name or "")
        except (TaskError, cron.InvalidSchedule) as error:
            raise ApiError(400, str(error)) from None

        task = await self._change(
            lambda: self._changes.add(schedule, command, options, job_name, by=trigger_of(request))
        )
        request.setHeader(b"Location", f"/api/tasks/{task.id}".encode())
        return self._one_task(request, 201, task)

    @app.route("/api/tasks/<task_id>", methods=["GET"])
    async def get_task(self, request: IRequest, task_id: str) -> bytes:
        newest = await self._job_store.query(task_id=self._find_task(task_id).id, limit=1)
        # Found again: the task may have changed or gone during the read.
        task = self._find_task(task_id)
        request.setHeader(b"ETag", etag(task).encode())
        return _json(request, 200, self._with_last_job(task, newest[0] if newest else None))

    @app.route("/api/tasks/<task_id>", methods=["PATCH"])
    async def edit_task(self, request: IRequest, task_id: str) -> bytes:
        wanted = self._find_task(task_id).id
        data = _body(request, self._max_body)
        _check_fields(data, set(EDITABLE))
        task = await self._change(
            lambda: self._changes.edit(wanted, data, by=trigger_of(request), if_match=_if_match(request))
        )
        return self._one_task(request, 200, task)

    @app.route("/api/tasks/<task_id>", methods=["DELETE"])
    async def delete_task(self, request: IRequest, task_id: str) -> bytes:
        wanted = self._find_task(task_id).id
        await self._change(lambda: self._changes.remove(wanted, by=trigger_of(request), if_match=_if_match(request)))
        request.setResponseCode(204)
        return b""

    @app.route("/api/tasks/<task_id>/pause", methods=["POST"])
    async def pause_task(self, request: IRequest, task_id: str) -> bytes:
        wanted = self._find_task(task_id).id
        data = _optional_body(request, self._max_body)
        _check_fields(data, {"until", "reason"})
        try:
            until = parse_time(data.get("until"), "until")
            reason = data.get("reason")
            TaskOptions.from_mapping({"paused": True, "pauseReason": reason})
        except TaskError as error:
            raise ApiError(400, str(error)) from None
        task = await self._change(
            lambda: self._changes.pause(
                wanted, by=trigger_of(request), until=until, reason=reason, if_match=_if_match(request)
            )
        )
        return self._one_task(request, 200, task)

    @app.route("/api/tasks/<task_id>/resume", methods=["POST"])
    async def resume_task(self, request: IRequest, task_id: str) -> bytes:
        wanted = self._find_task(task_id).id
        _check_fields(_optional_body(request, self._max_body), set())
        task = await self._change(
            lambda: self._changes.resume(wanted, by=trigger_of(request), if_match=_if_match(request))
        )
        return self._one_task(request, 200, task)

    @app.route("/api/tasks/<task_id>/revisions", methods=["GET"])
    async def task_revisions(self, request: IRequest, task_id: str) -> bytes:
        number = _path_id(task_id)
        limit = _int_arg(request, "limit", 100, 1, 1000) or 100
        before = _int_arg(request, "before", None, 1, 10**18)
        revisions = await self._changes.revisions(number, limit, before)
        # A task removed since still has its history; one never seen has none.
        if not revisions and self._state.book.get(number) is None and not await self._changes.revisions(number, 1):
            raise ApiError(404, f"no task with id {task_id} and no revisions of one")
        return _json(request, 200, [revision_json(revision, self._tz) for revision in revisions])

    @app.route("/api/tasks/<task_id>/revisions/<revision>/restore", methods=["POST"])
    async def restore_revision(self, request: IRequest, task_id: str, revision: str) -> bytes:
        number = _path_id(task_id)
        wanted = _path_id(revision)
        _check_fields(_optional_body(request, self._max_body), set())
        found = next((each for each in await self._changes.revisions(number, 1, wanted + 1) if each.id == wanted), None)
        if found is None:
            raise ApiError(404, f"task {task_id} has no revision {revision}")
        task = await self._change(lambda: self._changes.restore(number, found, by=trigger_of(request)))
        return self._one_task(request, 200, task)

    @app.route("/api/tasks/<task_id>/run", methods=["POST"])
    def run_task(self, request: IRequest, task_id: str) -> bytes:
        task = self._find_task(task_id)
        if task.options.ping is not None:
            raise ApiError(409, f"task {task.id} is a ping check: it runs elsewhere and reports by POST /api/ping/<uuid>")
        overrides = _optional_body(request, self._max_body)
        _check_fields(overrides, set(RUN_OVERRIDES))
        try:
            options = task.options.evolve(**{key: value for key, value in overrides.items() if value is not None})
        except TaskError as error:
            raise ApiError(400, str(error)) from None
        _may_run(request, task.id, options.target)
        jobs = self._run(
            task.command,
            target=options.target,
            timeout=options.timeout,
            env=options.env,
            cwd=options.cwd,
            task_id=task.id,
            triggered_by=trigger_of(request),
        )
        self._audited(request, "job.run", jobs, {"target": options.target, **({"overrides": sorted(overrides)} if overrides else {})})
        return _json(request, 202, self._job_json(jobs[0]) if len(jobs) == 1 else [self._job_json(j) for j in jobs])

    @app.route("/api/pools", methods=["GET"])
    def list_pools(self, request: IRequest) -> bytes:
        caps = self._dispatcher.caps
        named = {task.options.pool for task in self._state.book if task.options.pool is not None}
        pools = [
            {"name": name, "size": caps.pools.get(name), "running": caps.running(f"pool:{name}")}
            for name in sorted(named | set(caps.pools))
        ]
        labels = [
            {"label": label, "cap": cap, "running": caps.running(f"label:{label}")}
            for label, cap in sorted(caps.labels.items())
        ]
        return _json(request, 200, {"pools": pools, "labels": labels})

    @app.route("/api/maintenance", methods=["GET"])
    def get_maintenance(self, request: IRequest) -> bytes:
        return _json(request, 200, self._maintenance_json())

    @app.route("/api/maintenance", methods=["POST"])
    async def set_maintenance(self, request: IRequest) -> bytes:
        data = _body(request, self._max_body)
        _check_fields(data, {"on"})
        if not isinstance(data.get("on"), bool):
            raise ApiError(400, "field 'on' is required and must be true or false")
        now = self._state_now()
        try:
            await self._maintenance.switch(data["on"], now, trigger_of(request).text)
        except Exception as error:
            raise ApiError(503, f"could not save the maintenance switch: {error}") from None
        if self._audit is not None:
            self._audit.by("maintenance.on" if data["on"] else "maintenance.off", caller_of(request))
        # Every open dashboard shows the switch at once.
        self._feed.publish("maintenance", self._maintenance_json())
        return _json(request, 200, self._maintenance_json())

    # -- alerts ----------------------------------------------------------------

    @app.route("/api/alerts/defaults", methods=["GET"])
    def get_alert_defaults(self, request: IRequest) -> bytes:
        return _json(request, 200, self._alert_defaults.defaults.as_json())

    @app.route("/api/alerts/defaults", methods=["PUT"])
    async def put_alert_defaults(self, request: IRequest) -> bytes:
        try:
            defaults = AlertDefaults.from_json(_body(request, self._max_body))
        except TaskError as error:
            raise ApiError(400, str(error)) from None
        for index, rule in enumerate(defaults.rules):
            if rule.channel not in self._alerts.channels:
                raise ApiError(400, f"rules[{index}].channel: no channel named '{rule.channel}' (POST /api/channels first)")
        try:
            await self._alert_defaults.replace(defaults)
        except Exception as error:
            raise ApiError(503, f"could not save the alert defaults: {error}") from None
        self._alerts.defaults_changed()
        return _json(request, 200, defaults.as_json())

    # Ping checks (scheduler.task_pings): the uuid is the secret, so these
    # take no API token (http_guard.PUBLIC_PREFIXES) and answer nothing but
    # whether the ping counted.
    @app.route("/api/ping/<check>", methods=["POST"])
    def ping(self, request: IRequest, check: str) -> bytes:
        return self._ping(request, check, "success")

    @app.route("/api/ping/<check>/fail", methods=["POST"])
    def ping_fail(self, request: IRequest, check: str) -> bytes:
        return self._ping(request, check, "fail")

    @app.route("/api/ping/<check>/start", methods=["POST"])
    def ping_start(self, request: IRequest, check: str) -> bytes:
        return self._ping(request, check, "start")

    def _ping(self, request: IRequest, check: str, kind: PingKind) -> bytes:
        task = self._pings.find(check)
        if task is None:
            raise ApiError(404, "no such ping check")
        if not self._pings.allowed(task):
            request.setHeader(b"Retry-After", b"1")
            raise ApiError(429, "too many pings; try again in a second")
        if task.options.paused:
            return _json(request, 200, {"ok": True, "counted": False})
        self._pings.ping(task, kind)
        return _json(request, 200, {"ok": True, "counted": True})

    def _maintenance_json(self) -> dict[str, Any]:
        state = self._maintenance.state
        return {"on": state.on, "since": iso(state.since, self._tz), "by": state.by}

    def _one_task(self, request: IRequest, status: int, task: Task) -> bytes:
        # The ETag lets a later PATCH or DELETE say which version it changes.
        request.setHeader(b"ETag", etag(task).encode())
        return _json(request, status, self._task_json(task))

    @app.route("/api/schedules/check", methods=["GET"])
    def check_schedule(self, request: IRequest) -> bytes:
        expression = _str_arg(request, "expr")
        if expression is None:
            raise ApiError(400, "query parameter 'expr' is required")
        timezone = _str_arg(request, "timezone")
        count = _int_arg(request, "count", CHECK_RUNS, 1, MAX_CHECK_RUNS) or CHECK_RUNS
        try:
            tz = self._tz if timezone is None else zone(timezone)
            after = parse_time(_str_arg(request, "after"), "query parameter 'after'")
        except TaskError as error:
            raise ApiError(400, str(error)) from None
        try:
            plain, timezone = split_zone(expression, timezone)
            if timezone is not None:
                tz = zone(timezone)
            # H is hashed from the jobName the task has or will have.
            schedule = cron.parse(plain, tz, seed=_str_arg(request, "jobName") or "")
        except (TaskError, cron.InvalidSchedule) as error:
            return _json(request, 200, {"valid": False, "error": str(error)})
        runs = []
        iterator = schedule.iterator(self._state_now() if after is None else after)
        for _ in range(count):
            at = iso(iterator.get_next(float), tz)
            # Says how a change of clocks moves this run, if it does.
            runs.append({"at": at, "shifted": iterator.note})
        return _json(
            request,
            200,
            {
                "valid": True,
                "description": cron.describe(schedule),
                "timezone": str(tz),
                "next": [run["at"] for run in runs],
                "runs": runs,
            },
        )

    def _state_now(self) -> float:
        return datetime.now(self._tz).timestamp()

    def _find_task(self, task_id: str) -> Task:
        task = self._state.book.get(_path_id(task_id))
        if task is None:
            raise ApiError(404, f"no task with id {task_id}")
        return task

    async def _change(self, change: Callable[[], Deferred[Any]]) -> Any:
        try:
            return await change()
        except TaskNotFound as error:
            raise ApiError(404, str(error.args[0])) from None
        except StaleTask as error:
            raise ApiError(412, str(error)) from None
        except TaskError as error:
            raise ApiError(400, str(error)) from None
        except Exception as error:
            raise ApiError(503, f"could not save the tasks: {error}") from None

    # -- jobs ------------------------------------------------------------------

    @app.route("/api/jobs", methods=["POST"])
    def run_command(self, request: IRequest) -> bytes:
        data = _json_body(request, self._max_body)
        if isinstance(data, list):
            return self._run_batch(request, data)
        if not isinstance(data, dict):
            raise ApiError(400, "the body must be a JSON object (one job) or a list of them (a batch)")
        command, options = _new_job(data)
        _may_run(request, None, options.target)
        jobs = self._run(
            command,
            target=options.target,
            timeout=options.timeout,
            env=options.env,
            cwd=options.cwd,
            triggered_by=trigger_of(request),
        )
        self._audited(request, "job.run", jobs, {"command": command, "target": options.target})
        if len(jobs) == 1:
            request.setHeader(b"Location", f"/api/jobs/{jobs[0].id}".encode())
            return _json(request, 202, self._job_json(jobs[0]))
        return _json(request, 202, [self._job_json(job) for job in jobs])

    def _run_batch(self, request: IRequest, items: list[Any]) -> bytes:
        """A batch: every item checked (fields, run scope) before any job is made; all or nothing."""
        if not items:
            raise ApiError(400, "the list of jobs is empty")
        if len(items) > MAX_BATCH:
            raise ApiError(400, f"a batch holds at most {MAX_BATCH} jobs ({len(items)} sent)")
        runs: list[RunNow] = []
        for index, item in enumerate(items):
            try:
                if not isinstance(item, dict):
                    raise ApiError(400, "must be a JSON object")
                command, options = _new_job(item)
                _may_run(request, None, options.target)
            except ApiError as error:
                raise ApiError(error.status, f"job {index}: {error.message}") from None
            runs.append(RunNow(command, options.target, options.timeout, options.env, options.cwd))
        try:
            batch = self._dispatcher.run_batch(runs, trigger_of(request))
        except QueueFull as error:
            raise ApiError(503, str(error)) from None
        if self._audit is not None:
            self._audit.by_jobs(
                "job.run",
                caller_of(request),
                [
                    (job.task_id, job.id, {"command": run.command, "target": run.target})
                    for run, jobs in zip(runs, batch, strict=True)
                    for job in jobs
                ],
            )
        # Flat, in the items' order: an item with target "all" gives one job per worker.
        return _json(request, 202, [self._job_json(job) for jobs in batch for job in jobs])

    def _audited(self, request: IRequest, action: AuditAction, jobs: list[Job], detail: dict[str, Any]) -> None:
        if self._audit is not None:
            self._audit.by_jobs(action, caller_of(request), [(job.task_id, job.id, detail) for job in jobs])

    def _run(self, command: str, **options: Any) -> list[Job]:
        try:
            return self._dispatcher.run_now(command, **options)
        except QueueFull as error:
            raise ApiError(503, str(error)) from None

    @app.route("/api/jobs", methods=["GET"])
    async def list_jobs(self, request: IRequest) -> bytes:
        status = _str_arg(request, "status")
        if status is not None and status not in {s.value for s in JobStatus}:
            raise ApiError(400, f"status must be one of {', '.join(s.value for s in JobStatus)}")
        task = _int_arg(request, "task", None, 1, 10**18)
        worker = _str_arg(request, "worker")
        limit = _int_arg(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT) or DEFAULT_LIMIT
        before = _int_arg(request, "before", None, 1, 10**18)
        # Asked for in one turn, so they run back to back on the store's
        # thread, with no write between them: the count is of the same rows.
        page = self._job_store.query(status=status, task_id=task, worker=worker, limit=limit, before_id=before)
        total = self._job_store.count(status=status, task_id=task, worker=worker)
        stored = await page
        request.setHeader(b"X-Total-Count", str(await total).encode())
        # The live record of an active job is fresher than its stored row.
        # (Reads run after every write asked for before them, so the two
        # differ only by changes made since; the count is as of the read.)
        jobs = [self._dispatcher.jobs.get(job.id) or job for job in stored]
        if status is not None:
            jobs = [job for job in jobs if job.status.value == status]
        return _json(request, 200, [self._job_json(job) for job in jobs])

    @app.route("/api/jobs/<job_id>", methods=["GET"])
    async def get_job(self, request: IRequest, job_id: str) -> bytes:
        return _json(request, 200, self._job_json(await self._find_job(job_id)))

    @app.route("/api/jobs/<job_id>/log", methods=["GET"])
    async def job_log(self, request: IRequest, job_id: str) -> bytes:
        number = _path_id(job_id)
        text = self._dispatcher.live_output(number)
        if text is not None:
            # Lets the page skip feed chunks the log already holds.
            request.setHeader(b"X-Output-Seq", str(self._dispatcher.last_seq(number)).encode())
        elif self._stored_log is not None:
            stored = await self._stored_log(number)
            text = stored[0] if stored is not None else None
            if stored is not None:
                request.setHeader(b"X-Output-Seq", str(stored[1]).encode())
        else:
            text = await self._job_store.output(number)
        if text is None:
            raise ApiError(404, f"no job with id {job_id}")
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        return text.encode("utf-8")

    @app.route("/api/jobs/<job_id>/output", methods=["GET"])
    async def job_output(self, request: IRequest, job_id: str) -> bytes:
        # The stored output with its streams, so a page can show stderr
        # apart after the job ends (the log above is one text).
        number = _path_id(job_id)
        stored = await self._job_store.output_parts(number)
        if stored is None:
            raise ApiError(404, f"no job with id {job_id}")
        dropped, parts = stored
        return _json(
            request, 200, {"dropped": dropped, "parts": [{"stream": stream, "text": text} for stream, text in parts]}
        )

    @app.route("/api/jobs/<job_id>/rerun", methods=["POST"])
    async def rerun_job(self, request: IRequest, job_id: str) -> bytes:
        """The same command with the same inputs (env included, which the job JSON does not show)."""
        job = await self._find_job(job_id)
        _check_fields(_optional_body(request, self._max_body), set())
        _may_run(request, job.task_id, job.target)
        jobs = self._run(
            job.command,
            target=job.target,
            timeout=job.timeout,
            env=job.env,
            cwd=job.cwd,
            task_id=job.task_id,
            triggered_by=trigger_of(request),
        )
        self._audited(request, "job.rerun", jobs, {"of": job.id})
        request.setHeader(b"Location", f"/api/jobs/{jobs[0].id}".encode())
        return _json(request, 202, self._job_json(jobs[0]))

    @app.route("/api/jobs/<job_id>/cancel", methods=["POST"])
    async def cancel_job(self, request: IRequest, job_id: str) -> bytes:
        job = await self._find_job(job_id)
        _may_run(request, job.task_id, job.target)
        if job.status.final:
            raise ApiError(409, f"job {job.id} has already finished ({job.status.value})")
        try:
            job = self._dispatcher.cancel(job.id)
        except JobNotFound:
            if self._claims is None:
                raise ApiError(409, f"job {job.id} has already finished") from None
            # Another node manages it (or none: it was offered): through the database.
            try:
                outcome = await self._claims.cancel(job.id)
            except JobStoreError as error:
                raise ApiError(503, f"could not cancel job {job.id}: {error}") from None
            if outcome == "finished":
                raise ApiError(409, f"job {job.id} has already finished") from None
        self._audited(request, "job.cancel", [job], {})
        # Reads queue behind the writes asked for before them: once this one
        # answers, the kept cancel is on disk and a crash cannot lose it.
        stored = await self._job_store.get(job.id)
        # The job may have moved on while the write committed (a queued one
        # ends at once; a worker may have answered already): the freshest
        # record, so a page does not show an older state than the feed did.
        return _json(request, 202, self._job_json(self._dispatcher.jobs.get(job.id) or stored or job))

    async def _find_job(self, job_id: str) -> Job:
        number = _path_id(job_id)
        job = self._dispatcher.jobs.get(number) or await self._job_store.get(number)
        if job is None:
            raise ApiError(404, f"no job with id {job_id}")
        return job

    # -- alerts: channels and what was sent (scheduler/alert_*.py) -------------

    @app.route("/api/channels", methods=["GET"])
    def list_channels(self, request: IRequest) -> bytes:
        return _json(request, 200, [channel.public() for channel in self._channels])

    @app.route("/api/channels", methods=["POST"])
    async def add_channel(self, request: IRequest) -> bytes:
        try:
            channel = parse_channel(_body(request, self._max_body))
        except ChannelError as error:
            raise ApiError(400, str(error)) from None
        try:
            await self._channels.add(channel)
        except ChannelExists as error:
            raise ApiError(409, str(error)) from None
        except Exception as error:
            raise ApiError(503, f"could not save the channel: {error}") from None
        if self._audit is not None:
            self._audit.by("channel.add", caller_of(request), detail={"name": channel.name, "kind": channel.kind})
        request.setHeader(b"Location", f"/api/channels/{channel.name}".encode())
        return _json(request, 201, channel.public())

    @app.route("/api/channels/<name>", methods=["DELETE"])
    async def delete_channel(self, request: IRequest, name: str) -> bytes:
        try:
            await self._channels.remove(name)
        except NoSuchChannel:
            raise ApiError(404, f"no channel named '{name[:64]}'") from None
        except Exception as error:
            raise ApiError(503, f"could not remove the channel: {error}") from None
        if self._audit is not None:
            self._audit.by("channel.remove", caller_of(request), detail={"name": name[:64]})
        request.setResponseCode(204)
        return b""

    @app.route("/api/channels/<name>/test", methods=["POST"])
    async def test_channel(self, request: IRequest, name: str) -> bytes:
        channel = self._channels.get(name)
        if channel is None:
            raise ApiError(404, f"no channel named '{name[:64]}'")
        _check_fields(_optional_body(request, self._max_body), set())
        reply = await self._alert_sender.send_test(channel)
        if self._audit is not None:
            self._audit.by("channel.test", caller_of(request), detail={"name": channel.name, "outcome": reply.outcome})
        return _json(request, 200, {"outcome": reply.outcome, "status": reply.status, "reply": reply.text})

    @app.route("/api/alerts", methods=["GET"])
    async def list_alerts(self, request: IRequest) -> bytes:
        state = _str_arg(request, "state")
        if state is not None and state not in DELIVERY_STATES:
            raise ApiError(400, f"query parameter 'state' must be one of {', '.join(DELIVERY_STATES)}")
        rows = await self._job_store.deliveries(
            task_id=_int_arg(request, "task", None, 1, 10**18),
            state=state,
            channel=_str_arg(request, "channel"),
            limit=_int_arg(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT) or DEFAULT_LIMIT,
            before_id=_int_arg(request, "before", None, 1, 10**18),
        )
        return _json(request, 200, [delivery_json(row, self._tz) for row in rows])

    @app.route("/api/tasks/<task_id>/alerts", methods=["GET"])
    async def task_alerts(self, request: IRequest, task_id: str) -> bytes:
        number = _path_id(task_id)
        limit = _int_arg(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT) or DEFAULT_LIMIT
        before = _int_arg(request, "before", None, 1, 10**18)
        rows = await self._job_store.deliveries(task_id=number, limit=limit, before_id=before)
        # Like revisions: a task removed since still has its alerts; one never seen has none.
        if not rows and self._state.book.get(number) is None and not await self._job_store.deliveries(task_id=number, limit=1):
            raise ApiError(404, f"no task with id {task_id} and no alerts of one")
        return _json(request, 200, [delivery_json(row, self._tz) for row in rows])

    # -- who is asking, and who did what (scheduler/access_tokens.py, scheduler/audit.py) --

    @app.route("/api/me", methods=["GET"])
    def me(self, request: IRequest) -> bytes:
        caller = _caller(request)
        return _json(
            request,
            200,
            {
                "name": caller.name,
                "person": caller.person,
                "scopes": caller.granted(),
                "tasks": sorted(caller.tasks) if caller.tasks is not None else None,
                "labels": sorted(caller.labels) if caller.labels is not None else None,
            },
        )

    @app.route("/api/audit", methods=["GET"])
    async def list_audit(self, request: IRequest) -> bytes:
        action = _str_arg(request, "action")
        if action is not None and action not in AUDIT_ACTIONS:
            raise ApiError(400, f"query parameter 'action' must be one of {', '.join(AUDIT_ACTIONS)}")
        try:
            since = parse_time(_str_arg(request, "since"), "query parameter 'since'")
        except TaskError as error:
            raise ApiError(400, str(error)) from None
        query = AuditQuery(
            who=_str_arg(request, "who"),
            action=action,
            task_id=_int_arg(request, "task", None, 1, 10**18),
            since=since,
            limit=_int_arg(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT) or DEFAULT_LIMIT,
            before_id=_int_arg(request, "before", None, 1, 10**18),
        )
        entries, total = await self._job_store.audit(query)
        request.setHeader(b"X-Total-Count", str(total).encode())
        return _json(request, 200, [audit_json(entry, self._tz) for entry in entries])

    # -- workers, feed -----------------------------------------------------------

    @app.route("/api/workers", methods=["GET"])
    def list_workers(self, request: IRequest) -> bytes:
        workers = [worker_json(worker, self._tz) for worker in sorted(self._workers, key=lambda w: w.name)]
        return _json(request, 200, workers)

    @app.route("/api/events", methods=["GET"])
    def events(self, request: IRequest) -> Any:
        job = _int_arg(request, "job", None, 1, 10**18)
        if not self._feed.subscribe(request, job, owner=_caller(request).token):  # type: ignore[arg-type]
            raise ApiError(503, "too many live-feed clients")
        # Klein finishes the response for any plain result; a Deferred that
        # never fires keeps the stream open (Klein cancels it on disconnect,
        # the hub finishes it on stop).
        return Deferred()

    # -- the workers' socket and the dashboard ----------------------------------

    @app.route(WORKER_PATH, branch=False, methods=["GET"])
    def worker_socket(self, request: IRequest) -> IResource | bytes:
        # Autobahn answers a plain GET with an HTML page naming itself and
        # its version (and follows ?redirect= to anywhere): only upgrades
        # reach it, anything else gets a short JSON error here.
        upgrade = (request.getHeader(b"upgrade") or b"").decode("latin-1")
        if "websocket" not in (token.strip().lower() for token in upgrade.split(",")):
            request.setHeader(b"Upgrade", b"websocket")
            body = _json(request, 426, {"error": f"{WORKER_PATH} is the workers' WebSocket: connect with a WebSocket client"})
            request.setResponseCode(426, b"Upgrade Required")  # Twisted knows no reason phrase for 426
            return body
        return self._workers_ws

    @app.route("/", methods=["GET", "HEAD"])
    def dashboard(self, request: IRequest) -> bytes:
        if self._static.index is None:
            raise ApiError(404, "the dashboard is not installed")
        return self._static.serve(request, self._static.index, REVALIDATE)

    @app.route("/static/<name>", methods=["GET", "HEAD"])
    def static(self, request: IRequest, name: str) -> bytes:
        return self._static.serve(request, self._static_file(name), REVALIDATE)

    @app.route("/static/v-<version>/<name>", methods=["GET", "HEAD"])
    def static_versioned(self, request: IRequest, version: str, name: str) -> bytes:
        return self._static.serve(request, self._static_file(name, version), IMMUTABLE)

    def _static_file(self, name: str, version: str | None = None) -> StaticFile:
        if version is not None and version != self._static.version:
            # A page from before an upgrade: its files are gone (http_static).
            raise ApiError(404, f"the dashboard is now version {self._static.version}, not {version[:40]}: reload the page")
        found = self._static.find(name)
        if found is None:
            raise ApiError(404, f"no such file: {name[:100]}")
        return found

