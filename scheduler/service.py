"""The scheduler's service tree: one MultiService holding every listener."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from scheduler.access import AccessError, bearer, check_protected, default_allowed_hosts
from scheduler.access_scopes import cached_route_need
from scheduler.access_tokens import AccessToken
from scheduler.alert_channels import ChannelBook
from scheduler.alert_defaults import AlertDefaultsFile
from scheduler.alert_delivery import Deliverer
from scheduler.alert_outbox import AlertMetrics, AlertSender
from scheduler.alert_watch import AlertWatch
from scheduler.audit import AuditLog, WrongTokens
from scheduler.cluster import Cluster, default_node_name
from scheduler.cluster_sweep import ClusterSweep
from scheduler.cron_engine import CronEngine
from scheduler.cron_fires import FireHandler
from scheduler.cron_ticker import CronTicker
from scheduler.dispatch import Dispatcher
from scheduler.feed import EventHub
from scheduler.http_api import SchedulerHTTP
from scheduler.http_guard import Guard, deadline_channels, limited_requests
from scheduler.http_json import job_json, output_event, task_event, worker_event
from scheduler.http_log import LoggingSite
from scheduler.job_book import JobBook
from scheduler.job_caps import RunCaps
from scheduler.job_store import JobStore, PostgresJobStore
from scheduler.jobs import Job, JobStatus
from scheduler.leader_lease import LeaderLease, Leadership, SoleLeader
from scheduler.limits import ConnectionLimits
from scheduler.maintenance import Maintenance
from scheduler.memory import release_free_memory
from scheduler.metrics import SchedulerMetrics
from scheduler.reactor_lag import ReactorLag
from scheduler.settings import Settings, default_public_url
from scheduler.task_book import TaskBook
from scheduler.task_changes import TaskChanges
from scheduler.task_pauses import PauseTimer
from scheduler.task_pings import TaskPings
from scheduler.task_state import TaskState
from scheduler.task_store import FlatFileTaskStore, LoadError, StoreError, TaskConflict
from scheduler.tasks import Task
from scheduler.tcp_commands import TcpCommands
from scheduler.tcp_protocol import CommandFactory
from scheduler.triggers import SCHEDULE
from scheduler.worker_messages import GOING_AWAY_WAIT, MAX_START_DELAY
from scheduler.worker_protocol import WorkerServerFactory
from scheduler.worker_registry import Worker, WorkerRegistry

if TYPE_CHECKING:
    from scheduler.cluster_events import PostgresEvents
    from scheduler.feed_relay import FeedRelay
    from scheduler.job_claims import JobClaims
    from scheduler.job_history.postgres import PostgresLeaseStore
    from scheduler.task_store_postgres import PostgresTaskStore

log = Logger()


class StartupError(Exception):
    """The scheduler cannot start; the message says why and what to do."""


class SchedulerService(MultiService):
    def __init__(
        self,
        reactor: Any,
        settings: Settings,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.settings = settings
        self._access_errors = {}
        clock: IReactorTime = reactor
        try:
            check_protected(
                tcp=settings.tcp,
                http=settings.http,
                tcp_token=settings.tcp_token,
                api_token=settings.api_token,
                workers=settings.worker_tokens,
                tokens_file=settings.tokens.configured,
            )
            self.access = settings.access()
        except AccessError as error:
            raise StartupError(str(error)) from None
        self.store = FlatFileTaskStore(settings.tasks_file, settings.tz, reactor.getThreadPool(), reactor)
        for stale in self.store.remove_stale_temps():
            log.info("removed {path}, left by a write that was interrupted", path=stale)
        self.engine = CronEngine(clock.seconds())
        self.node = settings.node_name or default_node_name(settings.http)
        # Tasks: tasks.db (embedded mode), or PostgreSQL shared by the nodes
        # (--db).  Read before the job history starts its thread: a start
        # refused here must leave no thread keeping the process alive.
        self.shared_tasks: PostgresTaskStore | None = None
        self.cluster_events: PostgresEvents | None = None
        self.tasks_from = self.store.path
        if settings.db_url is None:
            book = self._file_tasks()
            self.loaded_at_start = len(book)
            self.state = TaskState(book, self.store, self.engine, clock)
            release_free_memory()
        else:
            from scheduler.cluster_events import PostgresEvents

            self.state = self._shared_task_state(settings.db_url, clock)
            # What the nodes tell each other; the tasks are one topic of several.
            self.cluster_events = PostgresEvents(settings.db_url, reactor, self.node)
            self.cluster_events.subscribe("tasks", self._tasks_changed)
            self.cluster_events.resync.append(self._tasks_changed)

        # The job history: jobs.sqlite (embedded mode), or PostgreSQL (--db),
        # where the leader lease decides which node fires.
        history: dict[str, Any] = {
            "output_cap": settings.output_cap,
            "keep_per_task": settings.keep_jobs,
            "keep_seconds": settings.keep_days * 86400,
            "outbox_limit": settings.alert_outbox_limit,
            "keep_audit_seconds": settings.keep_audit_days * 86400,
        }
        self.job_store: JobStore | PostgresJobStore
        self.lease_store: PostgresLeaseStore | None = None
        if settings.db_url is not None:
            # Imported here: embedded mode never loads psycopg.
            from scheduler.job_history.postgres import PostgresLeaseStore, redact

            jobs_db = redact(settings.db_url)
            self.job_store = PostgresJobStore(settings.db_url, reactor, **history)
            self.job_store.database.node = self.node
        else:
            jobs_db = settings.jobs_db or os.path.join(os.path.dirname(self.store.path), "jobs.sqlite")
            self.job_store = JobStore(jobs_db, reactor, **history)
        try:
            self.job_store.open()
            active = self.job_store.load_active()
            # The job book keeps a horizon of fires in memory and asks the
            # job store about older ones.
            keys_since = clock.seconds() - JobBook.FIRED_HORIZON
            keys = self.job_store.recent_keys(keys_since)
            self._last_scheduled: dict[int, float] | None = self.job_store.last_scheduled()
            # Retry timers lived in memory: the history says which are owed.
            self._unretried = self.job_store.unretried()
            # So did the alert timers and each task's streak: likewise.
            self._outcomes = self.job_store.outcomes()
            self._up_until = self.job_store.last_at_work()
            max_id = self.job_store.max_job_id()
            # A removed task's id must not come back after a restart: its
            # jobs and revisions would pass for the new task's.
            max_task_id = self.job_store.max_task_id()
        except Exception as error:
            if settings.db_url is not None:
                # The error names the database, without its password.
                raise StartupError(f"cannot use the job database: {error}") from None
            raise StartupError(f"cannot open the job database {jobs_db}: {error}") from None
        self.state.book.reserve_ids(max_task_id)
        public_url = settings.public_url or default_public_url(settings.http)
        self.leadership: Leadership
        if isinstance(self.job_store, PostgresJobStore):
            self.lease_store = PostgresLeaseStore(
                self.job_store.database.url,
                reactor,
                node=self.node,
                address=public_url,
                workers=lambda: len(self.workers),
                worker_names=lambda: [worker.name for worker in self.workers],
            )
            try:
                self.lease_store.open()
            except Exception as error:
                raise StartupError(f"cannot use the job database for the leader lease: {error}") from None
            self.leadership = LeaderLease(clock, self.lease_store, self.node, lease=settings.lease, monotonic=time.monotonic)
            leadership = self.leadership
            node = self.node
            # Fencing: a fired job is recorded only under the epoch it was made in.
            self.job_store.database.fence = lambda: (node, leadership.epoch if leadership.leading() else None)
            # Dispatch on every node: only the active jobs this node managed
            # are its own again; offered ones are claimed like any other.
            managed = self.job_store.database.managed_active()
            active = [(job, seq) for job, seq in active if job.id in managed]
        else:
            self.leadership = SoleLeader(self.node, clock)
        self.leadership.listeners.append(self._leadership_changed)
        self._lost_lead_at: float | None = None
        self.jobs = JobBook(clock, recorded=self.job_store.fired)
        if isinstance(self.job_store, PostgresJobStore):
            from scheduler.job_history.postgres import IdBlocks

            # Job ids from the database: nodes sharing it never make the same one.
            self.jobs.id_source = IdBlocks(self.job_store.reserve_ids)
        self.jobs.restore((job for job, _ in active), keys, max_id, keys_since=keys_since)
        self.workers = WorkerRegistry()
        self.dispatcher = Dispatcher(
            clock,
            self.jobs,
            self.workers,
            self.job_store,
            lambda task_id: self.state.book.get(task_id),
            lost_after=settings.lost_after,
            queue_limit=settings.queue_limit,
            output_cap=settings.output_cap,
            caps=RunCaps(settings.pools, settings.label_caps),
            secrets=settings.secrets if settings.secrets.path is not None else None,
            leading=self.leadership.leading,
            # With --db, a worker's hello takes its jobs over from the node that had them.
            take_over=self.job_store.take_over if isinstance(self.job_store, PostgresJobStore) else None,
        )
        self.dispatcher.restore(active)
        self.claims: JobClaims | None = None
        if isinstance(self.job_store, PostgresJobStore) and self.cluster_events is not None:
            self._start_claims(clock, self.job_store, self.cluster_events)
        # With --db: the leader settles the jobs of nodes gone silent.
        self.sweep: ClusterSweep | None = None
        if isinstance(self.job_store, PostgresJobStore):
            self.sweep = ClusterSweep(
                clock,
                self.job_store,
                leading=self.leadership.leading,
                lost_after=settings.lost_after,
                ended=self.dispatcher.swept_lost,
                retry=self.dispatcher.resume_retries,
            )
        # Alerts (scheduler/alerts.py): the channels are kept in the job
        # store, whose outbox the rules queue into.
        try:
            self.channels = ChannelBook(self.job_store, self.job_store.channels())
        except (ValueError, TypeError, KeyError) as error:
            raise StartupError(f"cannot read the alert channels in {jobs_db}: {error}") from None
        self.alert_defaults = AlertDefaultsFile(
            os.path.join(os.path.dirname(self.store.path), "alerts.json"), reactor.getThreadPool(), reactor
        )
        self.alert_defaults.load_now()
        self.alerts = AlertWatch(
            clock,
            tasks=lambda task_id: self.state.book.get(task_id),
            all_tasks=lambda: self.state.book,
            active=self.jobs.get,
            queue=self.job_store,
            channels=self.channels,
            defaults=lambda: self.alert_defaults.defaults,
            online=lambda name: self.workers.get(name) is not None,
            describe_job=lambda job: job_json(job, self.state.book.tz, self.dispatcher.waiting(job.id)),
            tz=settings.tz,
        )
        self.jobs.listeners.append(self.alerts.job_changed)
        self.dispatcher.ended_listeners.append(self.alerts.job_ended)
        self.state.listeners.append(self.alerts.task_changed)
        self.workers.listeners.append(lambda change, worker: self.alerts.worker_changed(change, worker.name))
        self.pings = TaskPings(
            clock,
            lambda: self.state.book,
            self.jobs,
            self.job_store,
            ended=self.alerts.job_ended,
            pinged=self.alerts.pinged,
        )
        self.changes = TaskChanges(self.state, self.job_store, clock, self.channels)
        # Who did what: task changes as they are recorded, the rest from the wire.
        self.audit = AuditLog(self.job_store, clock)
        self.changes.listeners.append(self.audit.revision)
        self.wrong_tokens = WrongTokens(self.audit, clock)
        self.pauses = PauseTimer(clock, self.state, self.changes)
        self.maintenance = Maintenance(
            os.path.join(os.path.dirname(self.store.path), "maintenance.json"), reactor.getThreadPool(), reactor
        )
        self.maintenance.load_now()
        self.fires = FireHandler(
            lambda: self.state.book,
            self.dispatcher,
            holding=lambda: self.maintenance.on,
            leading=self.leadership.leading,
            skipped=self._skipped_next,
            expected=self.alerts.expect_ping,
            missed=self.alerts.missed,
        )
        self.ticker = CronTicker(
            clock,
            self.engine,
            self.fires.on_fires,
            lead=self.FIRE_LEAD,
            lead_per_fire=self.HERD_LEAD_PER_FIRE,
            max_lead=self.HERD_MAX_LEAD,
            fires_per_turn=self.FIRES_PER_TURN,
            monotonic=time.monotonic,
            on_downtime=self.fires.run_skipped,
        )
        self.ticker.setServiceParent(self)
        self.pruner = TimerService(3600, self._prune)
        self.pruner.clock = clock
        self.pruner.setServiceParent(self)
        if settings.worker_tokens.path is not None:
            # Removing a line from the file revokes that worker within seconds.
            self.token_watch = TimerService(5, self._reload_worker_tokens)
            self.token_watch.clock = clock
            self.token_watch.setServiceParent(self)
        if settings.tokens.path is not None or settings.secrets.path is not None:
            # A removed token or a changed secret takes effect within seconds.
            self.access_watch = TimerService(5, self._reload_access)
            self.access_watch.clock = clock
            self.access_watch.setServiceParent(self)
        self.worker_factory = WorkerServerFactory(
            self.dispatcher,
            clock,
            check_handshake=self._check_worker_handshake,
            # A name with its own token is not for the shared token.
            reserved=lambda name: name in settings.worker_tokens.per_worker,
            hello_timeout=settings.handshake_timeout,
            handshake_timeout=settings.handshake_timeout,
            ping_interval=settings.ping_interval,
            ping_timeout=settings.ping_timeout,
            max_message=settings.ws_max_message,
        )

        self.metrics = SchedulerMetrics(
            queued=lambda: self.dispatcher.queued,
            running=lambda: self.jobs.count(JobStatus.RUNNING),
            workers=lambda: len(self.workers),
            tasks=lambda: len(self.state.book),
            tick_lag=lambda: self.ticker.lag,
            task_health=self._task_health,
        )
        self.metrics.watch_lease(
            lambda: self.leadership.counts,
            self.leadership.leading,
            lambda: self.leadership.epoch,
            lambda: getattr(self.job_store.database, "fenced", 0),
        )
        fires = self.fires
        self.metrics.watch_counts(
            [("scheduler_fires_caught_up", "Missed fire times run late: after downtime, a clock step, or taking the lead.", lambda: fires.caught_up)]
        )
        if self.claims is not None:
            claims = self.claims
            self.metrics.watch_claims(lambda: claims.counts)
        self.reactor_lag = ReactorLag(clock, self.metrics.reactor_lagged)
        self.reactor_lag.setServiceParent(self)
        self.jobs.listeners.append(self.metrics.job_changed)
        if self.sweep is not None:
            sweep, database = self.sweep, self.job_store.database
            self.metrics.watch_counts(
                [
                    ("scheduler_jobs_taken_over", "Running jobs taken over from another node at their worker's hello.", lambda: self.dispatcher.taken_over),
                    ("scheduler_jobs_let_go", "Jobs this node let go because another node manages them now.", lambda: self.dispatcher.let_go),
                    ("scheduler_disowned_writes", "Job records refused: another node manages the job now.", lambda: getattr(database, "disowned", 0)),
                    ("scheduler_sweep_lost", "Running jobs of silent nodes the leader ended lost.", lambda: sweep.lost),
                    ("scheduler_sweep_offered", "Queued jobs of silent nodes the leader offered to every node again.", lambda: sweep.offered),
                ]
            )
        self.ticker.step_listeners.append(self.metrics.clock_stepped)
        self.dispatcher.started_listeners.append(self.metrics.job_started)
        self.feed = EventHub(clock)
        self._connect_feed()
        # With --db: what other nodes' jobs do reaches this node's feed too.
        self.relay: FeedRelay | None = None
        if isinstance(self.job_store, PostgresJobStore) and self.cluster_events is not None:
            self._start_relay(clock, self.job_store, self.cluster_events)

        # The sender of the alert outbox.
        self.deliverer = Deliverer(reactor)
        self.alert_sender = AlertSender(
            clock,
            self.job_store,
            self.channels.get,
            self.deliverer.deliver,
            public_url=public_url,
            tz=settings.tz,
            limit=settings.alert_outbox_limit,
            metrics=AlertMetrics(self.metrics.registry),
            leading=self.leadership.leading,
        )
        self.job_store.alert_listeners.append(self.alert_sender.queued)
        self.alert_sender.setServiceParent(self)

        self.commands = commands = TcpCommands(self.changes, self.engine.next_run, self.status, health=self.alerts.health)
        tcp_factory = CommandFactory(
            commands,
            clock,
            max_line=settings.tcp_max_line,
            linger=settings.tcp_linger,
            idle_timeout=settings.tcp_idle_timeout,
            token=settings.tcp_token,
            auth_timeout=settings.tcp_auth_timeout,
            max_unauthenticated=settings.tcp_max_unauthenticated,
            access=self.access,
        )
        if tcp_factory.auth is not None:
            tcp_factory.auth.wrong_token = lambda address: self.wrong_tokens.failed("tcp", address)
        self.tcp_limits = ConnectionLimits(
            tcp_factory,
            total=settings.tcp_max_connections,
            per_peer=settings.tcp_max_per_peer,
            refusal=b"ERR too many connections; try again later\n",
            send_backlog=settings.send_backlog,
        )
        self.tcp_service = StreamServerEndpointService(serverFromString(reactor, settings.tcp), self.tcp_limits)
        self.tcp_service.setServiceParent(self)

        self.http = SchedulerHTTP(
            self.state,
            self.worker_factory,
            changes=self.changes,
            maintenance=self.maintenance,
            dispatcher=self.dispatcher,
            job_store=self.job_store,
            workers=self.workers,
            next_run=self.engine.next_run,
            metrics=self.metrics,
            feed=self.feed,
            alerts=self.alerts,
            alert_defaults=self.alert_defaults,
            pings=self.pings,
            max_body=settings.http_max_body,
            last_clock_step=lambda: self.ticker.last_step,
            channels=self.channels,
            alert_sender=self.alert_sender,
            audit=self.audit,
            cluster=Cluster(
                self.leadership,
                address=public_url,
                workers=lambda: len(self.workers),
                clock=clock,
                tz=lambda: self.state.book.tz,
                rows=self.lease_store,
                lease=settings.lease,
            ),
            claims=self.claims,
            stored_log=self.relay.stored_log if self.relay is not None else None,
        )
        self.guard = Guard(
            self.http.app.resource(),
            allowed_hosts=default_allowed_hosts(settings.http) | settings.allowed_hosts,
            api_token=settings.api_token,
            max_body=settings.http_max_body,
            access=self.access,
            need=cached_route_need(self.http.app.url_map),
            wrong_token=lambda address: self.wrong_tokens.failed("http", address),
        )
        # The API takes JSON only.  Without this, Twisted parses every POST's
        # Content-Type with the email package, looking for a form to decode
        # into request.args: 7 % of the scheduler's time per submitted job
        # in a profile.
        site = LoggingSite(self.guard, target=settings.access_log, parsePOSTFormSubmission=False)
        site.noisy = False
        site.requestFactory = limited_requests(settings.http_max_body)
        # Typed as Twisted's default channel factory; an HTTPChannel class serves.
        site.protocol = deadline_channels(settings.http_request_timeout)  # type: ignore[method-assign, assignment]
        self.http_limits = ConnectionLimits(
            site,
            total=settings.http_max_connections,
            per_peer=settings.http_max_per_peer,
            send_backlog=settings.send_backlog,
        )
        self.http_service = StreamServerEndpointService(serverFromString(reactor, settings.http), self.http_limits)
        self.http_service.setServiceParent(self)

    def _file_tasks(self) -> TaskBook:
        """tasks.db's tasks (blocking, at start-up); StartupError if it cannot be used."""
        try:
            records = self.store.load_now()
        except LoadError as error:
            raise StartupError(f"{error.full_message} (the file was left as it is)") from None
        return TaskBook.from_records(self.settings.tz, records)

    def _shared_task_state(self, url: str, clock: IReactorTime) -> TaskState:
        """The tasks in PostgreSQL.  A cluster that never had any takes this
        node's tasks.db once (an operator moving to a cluster keeps their
        tasks); after that SAVE and LOAD export to it and import from it."""
        from scheduler.task_store_postgres import PostgresTaskStore

        store = self.shared_tasks = PostgresTaskStore(url, self.reactor, node=self.node, tz=self.settings.tz)
        self.tasks_from = store.name
        try:
            store.open()
            records = store.load_now()
            book = TaskBook.from_records(self.settings.tz, records)
            del records
            if store.generation == 0 and self.store.exists():
                book = self._import_tasks(store) or book
        except LoadError as error:
            raise StartupError(f"cannot use the tasks in PostgreSQL: {error.full_message}") from None
        except StoreError as error:
            # The error names the database, without its password.
            raise StartupError(f"cannot use the job database: {error}") from None
        book.reserve_ids(store.high_water)
        self.loaded_at_start = len(book)
        state = TaskState(book, store, self.engine, clock, exports=self.store)
        release_free_memory()
        return state

    def _import_tasks(self, store: PostgresTaskStore) -> TaskBook | None:
        """tasks.db's tasks into a cluster that never had any; None if another node did it first."""
        book = self._file_tasks()
        if not len(book):
            return None
        try:
            store.import_now(list(book))
        except TaskConflict:
            log.info("another node imported its tasks into {db} first; {path} was not imported", db=store.name, path=self.store.path)
            return TaskBook.from_records(self.settings.tz, store.load_now())
        log.info(
            "imported {count} tasks from {path} into {db}: the cluster's tasks are there now, and {path} is only written by SAVE",
            count=len(book),
            path=self.store.path,
            db=store.name,
        )
        return book

    def _tasks_changed(self, fields: dict[str, Any] | None = None) -> None:
        """Another node changed the tasks (or this node may have missed it): apply it."""
        seen = fields.get("generation") if fields is not None else None
        self.state.refresh(seen if isinstance(seen, int) else None).addErrback(
            lambda failure: log.error("could not read the tasks other nodes changed: {error}", error=failure.getErrorMessage())
        )

    @classmethod
    def from_options(cls, options: Any) -> SchedulerService:
        from twisted.internet import reactor

        try:
            settings = Settings.from_options(options)
        except AccessError as error:
            raise StartupError(str(error)) from None
        return cls(reactor, settings)

    def _check_worker_handshake(self, request: ConnectionRequest) -> str | None:
        """Refuse browsers and bad tokens; returns the name a token is bound to."""
        peer = request.peer
        if "origin" in request.headers:
            # Workers never send Origin; browsers always do on WebSockets.
            log.warn("refused a browser WebSocket to /ws/worker from {peer}", peer=peer)
            raise ConnectionDeny(403, "browsers may not connect to the worker endpoint")
        tokens = self.settings.worker_tokens
        if not tokens.configured:
            return None
        name = tokens.identify(bearer(request.headers.get("authorization")))
        if name is None:
            log.warn("refused a worker from {peer}: missing or wrong worker token", peer=peer)
            raise ConnectionDeny(401, "missing or wrong worker token")
        return name or None

    # Seconds between two log lines saying the worker tokens file still fails.
    TOKEN_ERROR_EVERY = 60.0
    _token_error: tuple[str, float] | None = None

    def _reload_worker_tokens(self) -> None:
        tokens = self.settings.worker_tokens
        try:
            if not tokens.load():
                return
        except AccessError as error:
            # Fail closed: load() has dropped every per-worker token.  The
            # file is read again at every check, so say so at most once a
            # minute (and whenever the reason changes).
            now = self.reactor.seconds()
            last = self._token_error
            if last is None or last[0] != str(error) or now - last[1] >= self.TOKEN_ERROR_EVERY:
                log.error(
                    "{error}; no per-worker token is valid until it reads cleanly, their workers are disconnected",
                    error=str(error),
                )
                self._token_error = (str(error), now)
        else:
            self._token_error = None
            log.info("reloaded {count} worker tokens from {path}", count=len(tokens.per_worker), path=tokens.path)
        for worker in list(self.workers):
            bound = getattr(worker.link, "token_name", None)
            if bound is not None and not tokens.still_valid(bound):
                log.warn("worker {name}: its token was revoked; disconnecting", name=worker.name)
                worker.link.close("token revoked")
            elif bound is None and self.worker_factory.reserved(worker.name):
                # Connected with the shared token before the name got one of its own.
                log.warn(
                    "worker {name}: the name now has its own token; disconnecting its shared-token connection",
                    name=worker.name,
                )
                worker.link.close("name bound to its own token")

    def _reload_access(self) -> None:
        """Re-read the tokens file and the secrets folder if they changed (every 5 s)."""
        tokens = self.settings.tokens
        try:
            changed = tokens.load()
        except AccessError as error:
            # A bad line keeps the tokens read before; a file that is gone
            # leaves none (load says which).  Said once per reason.
            self._access_error("tokens", str(error))
            changed = bool(tokens.revoked)
        else:
            self._access_errors.pop("tokens", None)
        if changed:
            revoked = set(tokens.revoked)
            closed = self.feed.close_where(lambda owner: isinstance(owner, AccessToken) and not tokens.current(owner))
            log.info(
                "tokens file {path}: {count} tokens now; revoked or changed: {revoked}; closed {closed} live feeds",
                path=tokens.path,
                count=len(tokens.tokens),
                revoked=", ".join(sorted(revoked)) or "none",
                closed=closed,
            )
            self.audit.record("tokens.change", "tokens file", detail={"names": sorted(tokens.tokens), "revoked": sorted(revoked)})
            tokens.revoked = set()
        secrets = self.settings.secrets
        try:
            if secrets.load():
                log.info("secrets folder {path}: {count} secrets", path=secrets.path, count=len(secrets.secrets))
                self.audit.record("secrets.change", "secrets folder", detail={"names": sorted(secrets.secrets)})
            self._access_errors.pop("secrets", None)
        except AccessError as error:
            self._access_error("secrets", f"{error}; the secrets read before stay in use")

    _access_errors: dict[str, str]

    def _access_error(self, what: str, message: str) -> None:
        if self._access_errors.get(what) != message:
            log.error("{error}", error=message)
            self._access_errors[what] = message

    def startService(self) -> None:
        log.info(
            "loaded {count} tasks from {path}",
            count=self.loaded_at_start,
            path=self.tasks_from,
        )
        super().startService()
        self.feed.start()
        self.pauses.start()
        self.alerts.restore(self._outcomes, self.jobs)
        self._outcomes = {}
        # The leader catches up on the runs missed while it was down (at
        # once in embedded mode; with --db, once it has the lease).
        if self.lease_store is not None:
            self.lease_store.start()
        if self.shared_tasks is not None:
            self.shared_tasks.start()
        self.leadership.start()
        if self.claims is not None:
            self.claims.start()
        if self.cluster_events is not None:
            self.cluster_events.start()
        if self.sweep is not None:
            self.sweep.start()
        self.dispatcher.pump()

    def stopService(self) -> Deferred[None]:
        # Workers first, while everything still runs: each hears "going
        # away" and dials again at once instead of seeing a crash (1006).
        # The port stops listening first, so that dial cannot reach this
        # process on its way out (stopping it twice, as the MultiService
        # does below, is harmless).
        listening = self.http_service.stopService() if self.http_service.running else None
        workers_told = self.worker_factory.going_away(GOING_AWAY_WAIT)

        async def close() -> None:
            await workers_told
            if listening is not None:
                await listening
            self.leadership.stop()
            if self.cluster_events is not None:
                # Nothing more heard from the other nodes: no claim starts now.
                self.cluster_events.stop()
            if self.claims is not None:
                self.claims.stop()
                # What waits here for a worker, another node may run now;
                # the store's close below writes the offers first.
                self.dispatcher.hand_over()
            if self.sweep is not None:
                self.sweep.stop()
            self.dispatcher.stop()
            self.alerts.stop()
            self.audit.flush()
            self.wrong_tokens.stop()
            self.pauses.stop()
            if self.relay is not None:
                self.relay.stop()
            self.feed.stop()
            await super(SchedulerService, self).stopService()
            await self.job_store.close()
            if self.shared_tasks is not None:
                # After the children: a change still queued has been answered.
                self.shared_tasks.close()
            if self.lease_store is not None:
                # Its session ends: another node takes the lease at once.
                self.lease_store.close()

        return Deferred.fromCoroutine(close())

    def _start_claims(self, clock: IReactorTime, store: PostgresJobStore, events: PostgresEvents) -> None:
        """Dispatch on every node (--db): what no worker here can take is
        offered to the cluster, and offered jobs are claimed (scheduler.job_claims)."""
        from scheduler.job_claims import JobClaims

        lease_store = self.lease_store
        self.claims = claims = JobClaims(
            clock,
            store,
            self.dispatcher,
            self.node,
            peers=lease_store.nodes if lease_store is not None else None,
            peer_workers=lease_store.peer_workers if lease_store is not None else None,
        )
        self.dispatcher.offers = claims.offer
        self.dispatcher.offered = lambda: claims.offered_waiting
        self.dispatcher.others_have_workers = lambda: claims.others_have_workers
        self.dispatcher.workers_elsewhere = lambda: claims.workers_elsewhere
        events.subscribe("jobs", claims.jobs_offered)
        events.subscribe("cancels", claims.cancel_heard)
        events.resync.append(claims.resync)
        self.workers.listeners.append(claims.worker_changed)
        self.dispatcher.ended_listeners.append(claims.job_ended)

    def _connect_feed(self) -> None:
        """Push task, job, worker and output changes to the dashboard.

        Each listener checks for subscribers first: encoding every job
        change for nobody would sit on the hot path of every job.
        """
        feed = self.feed

        def task_changed(change: str, task: Task) -> None:
            if feed:
                feed.publish(
                    "task",
                    task_event(change, task, self.engine.next_run(task.id), self.state.book.tz, self.alerts.health(task)),
                )

        def job_changed(job: Job) -> None:
            if feed:
                waiting = self.dispatcher.waiting(job.id) if job.status is JobStatus.QUEUED else None
                feed.publish("job", job_json(job, self.state.book.tz, waiting))

        def worker_changed(change: str, worker: Worker) -> None:
            if feed:
                feed.publish("worker", worker_event(change, worker))

        def output(job_id: int, seq: int, stream: str, data: str) -> None:
            if feed:
                feed.publish("output", output_event(job_id, seq, stream, data), job=job_id)

        self.state.listeners.append(task_changed)
        self.jobs.listeners.append(job_changed)
        self.workers.listeners.append(worker_changed)
        self.dispatcher.output_listeners.append(output)

    def _start_relay(self, clock: IReactorTime, store: PostgresJobStore, events: PostgresEvents) -> None:
        """The live feed across nodes (scheduler.feed_relay): other nodes' job
        changes and output, read from the store while this feed has subscribers."""
        from scheduler.feed_relay import FeedRelay, RelayedChunk

        feed = self.feed

        def publish_job(job: Job) -> None:
            # Queued here or not, its waiting reason is its manager's to tell.
            feed.publish("job", job_json(job, self.state.book.tz, None))

        def publish_output(chunk: RelayedChunk) -> None:
            feed.publish("output", output_event(chunk.job_id, chunk.seq, chunk.stream, chunk.data), job=chunk.job_id)

        self.relay = relay = FeedRelay(clock, store, feed, publish_job=publish_job, publish_output=publish_output)
        events.subscribe("feed", relay.heard)
        events.resync.append(relay.resync)

        def output(job_id: int, seq: int, stream: str, data: str) -> None:
            if feed:
                relay.published_here(job_id, seq)

        self.dispatcher.output_listeners.append(output)
        self.metrics.watch_counts(
            [
                ("scheduler_feed_relay_reads", "Reads of other nodes' jobs and output for this node's live feed.", lambda: relay.reads),
                (
                    "scheduler_feed_relay_unwatched",
                    "Other nodes' feed notifications ignored: no live feed open on this node.",
                    lambda: relay.unwatched,
                ),
            ]
        )

    def _leadership_changed(self, leading: bool) -> None:
        """Catch up when this node starts leading: the downtime at its first
        lease, the time without the lease at a later one (each task's missed
        policy); and deliver the alerts waiting in the outbox."""
        now = self.reactor.seconds()
        if not leading:
            self._lost_lead_at = now
            # Retries are the leader's: the next one arms those owed.
            self.dispatcher.stop_retries()
            if self.sweep is not None:
                self.sweep.stopped_leading()
            return
        self.alert_sender.wake()
        # The retries owed: those the history showed at start at once; the
        # sweep's first step finds the rest (jobs other nodes ended).
        unretried, self._unretried = self._unretried, []
        self.dispatcher.resume_retries(unretried)
        if self.sweep is not None:
            self.sweep.step()
        if self.lease_store is not None:
            # Another node may have fired until moments ago: catch up from
            # what the history holds now, each task's cron cursor.
            self._last_scheduled = None
            self._catch_up_from_cursors()
        elif self._last_scheduled is not None:
            last, self._last_scheduled = self._last_scheduled, None
            self.fires.run_missed(last, now, self._up_until)
        elif self._lost_lead_at is not None:
            self.fires.run_skipped(self._lost_lead_at, now)

    def _catch_up_from_cursors(self) -> None:
        """Run (by each task's missed policy) the times no node fired, up to
        the last second this node's cron engine handed on while following;
        the ticker fires the seconds after it."""
        until = max(self.reactor.seconds(), self.engine.last_tick)
        cursors = self.job_store.cron_cursors(until)

        def caught_up(found: tuple[dict[int, float], float | None]) -> None:
            last, up_until = found
            self.fires.run_missed(last, until, up_until, why="while no node led")

        cursors.addCallback(caught_up).addErrback(
            lambda failure: log.error(
                "could not read where to catch up from: {error}; runs missed before this node led are not run",
                error=failure.getErrorMessage(),
            )
        )

    def _prune(self) -> None:
        if not self.leadership.leading():
            return  # housekeeping is the leader's
        self.job_store.prune(self.reactor.seconds()).addErrback(
            lambda failure: log.failure("pruning job history failed", failure)
        )

    def status(self) -> dict[str, int | str]:
        # The seed's four counts first; more go at the end (README).
        return {
            "tasks": len(self.state.book),
            "workers": len(self.workers),
            "queued": self.dispatcher.queued,
            "running": self.jobs.count(JobStatus.RUNNING),
            "paused": sum(1 for task in self.state.book if task.options.paused),
            "maintenance": "on" if self.maintenance.on else "off",
        }

    def _task_health(self) -> list[tuple[str, float | None, int, str]]:
        """Per task: its name, last success, consecutive failures and health (the /metrics gauges)."""
        alerts = self.alerts
        return [
            (task.job_name, alerts.last_success(task.id), alerts.consecutive_failures(task.id), alerts.health(task))
            for task in self.state.book
        ]

    def _skipped_next(self, task: Task) -> None:
        """A task's ``skipNext`` has done its work: clear it."""
        self.changes.skip_next(task.id, False, by=SCHEDULE).addErrback(
            lambda failure: log.error(
                "could not clear skipNext of task {task_id}: {error}", task_id=task.id, error=failure.getErrorMessage()
            )
        )

    # Seconds ahead of its second that a tick records, places and sends the
    # jobs due on it; the workers wait for the second to start them.  A
    # burst of 50 fires takes 3-6 ms to record and commit, and 4-5 ms more
    # to send, on a busy 2-core machine.
    FIRE_LEAD = 0.05
    # A second with many fires starts this much earlier per fire (200 fires
    # a second onto 1,000 workers took about 0.55 ms a fire to record, place
    # and send on a busy 2-core machine), at most HERD_MAX_LEAD: a second below the longest
    # delay a worker accepts in a run; fires are handed on FIRES_PER_TURN
    # per reactor turn (docs/performance.md, "The top-of-the-hour herd").
    HERD_LEAD_PER_FIRE = 0.0006
    HERD_MAX_LEAD = MAX_START_DELAY - 1.0
    FIRES_PER_TURN = 200
