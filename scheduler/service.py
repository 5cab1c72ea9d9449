"""The scheduler's service tree: one MultiService holding every listener."""

from __future__ import annotations

import os
from datetime import datetime, tzinfo
from typing import Any

from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.server import Site

from scheduler.dispatch import Dispatcher
from scheduler.engine import CronEngine, Fire, missed_times
from scheduler.feed import EventHub
from scheduler.http_api import SchedulerHTTP
from scheduler.jobbook import JobBook
from scheduler.jobs import JobStatus
from scheduler.jobstore import JobStore
from scheduler.metrics import SchedulerMetrics
from scheduler.state import TaskState
from scheduler.store import FlatFileTaskStore, LoadError
from scheduler.taskbook import TaskBook
from scheduler.tcp_commands import CommandFactory, TcpCommands
from scheduler.ticker import CronTicker
from scheduler.worker_protocol import WorkerServerFactory
from scheduler.workers import WorkerRegistry

log = Logger()


class StartupError(Exception):
    """The scheduler cannot start; the message says why and what to do."""


class SchedulerService(MultiService):
    def __init__(
        self,
        reactor: Any,
        tz: tzinfo,
        tasks_file: str,
        tcp: str,
        http: str,
        *,
        tcp_linger: float = 0.3,
        tcp_idle_timeout: float = 300.0,
        tcp_max_line: int = 32768,
        jobs_db: str | None = None,
        lost_after: float = 90.0,
        queue_limit: int = 10_000,
        output_cap: int = 1024 * 1024,
        keep_jobs: int = 100,
        keep_days: float = 7.0,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        clock: IReactorTime = reactor
        self.store = FlatFileTaskStore(tasks_file, tz, reactor.getThreadPool(), reactor)
        try:
            records = self.store.load_now()
        except LoadError as error:
            raise StartupError(f"{error} (the file was left as it is)") from None
        self.loaded_at_start = len(records)
        book = TaskBook.from_records(tz, records)
        self.engine = CronEngine(clock.seconds())
        self.state = TaskState(book, self.store, self.engine)

        if jobs_db is None:
            jobs_db = os.path.join(os.path.dirname(self.store.path), "jobs.sqlite")
        self.job_store = JobStore(
            jobs_db,
            reactor,
            output_cap=output_cap,
            keep_per_task=keep_jobs,
            keep_seconds=keep_days * 86400,
        )
        try:
            self.job_store.open()
            active = self.job_store.load_active()
            # Keys of the last two days are plenty: older times never fire again.
            keys = self.job_store.recent_keys(clock.seconds() - 2 * 86400)
            self._last_scheduled = self.job_store.last_scheduled()
            max_id = self.job_store.max_job_id()
        except Exception as error:
            raise StartupError(f"cannot open the job database {jobs_db}: {error}") from None
        self.jobs = JobBook(clock)
        self.jobs.restore((job for job, _ in active), keys, max_id)
        self.workers = WorkerRegistry()
        self.dispatcher = Dispatcher(
            clock,
            self.jobs,
            self.workers,
            self.job_store,
            lambda task_id: self.state.book.get(task_id),
            lost_after=lost_after,
            queue_limit=queue_limit,
            output_cap=output_cap,
        )
        self.dispatcher.restore(active)
        self.ticker = CronTicker(clock, self.engine, self.on_fires)
        self.ticker.setServiceParent(self)
        self.pruner = TimerService(3600, self._prune)
        self.pruner.clock = clock
        self.pruner.setServiceParent(self)
        self.worker_factory = WorkerServerFactory(self.dispatcher, clock)

        self.metrics = SchedulerMetrics(
            queued=lambda: self.dispatcher.queued,
            running=lambda: self.jobs.count(JobStatus.RUNNING),
            workers=lambda: len(self.workers),
            tasks=lambda: len(self.state.book),
            tick_lag=lambda: self.ticker.lag,
        )
        self.jobs.listeners.append(self.metrics.job_changed)
        self.dispatcher.started_listeners.append(self.metrics.job_started)
        self.feed = EventHub(clock)
        self._connect_feed()

        commands = TcpCommands(self.state, self.engine.next_run, self.status)
        factory = CommandFactory(
            commands,
            clock,
            max_line=tcp_max_line,
            linger=tcp_linger,
            idle_timeout=tcp_idle_timeout,
        )
        self.tcp_service = StreamServerEndpointService(serverFromString(reactor, tcp), factory)
        self.tcp_service.setServiceParent(self)

        self.http = SchedulerHTTP(
            self.state,
            self.worker_factory,
            dispatcher=self.dispatcher,
            job_store=self.job_store,
            workers=self.workers,
            next_run=self.engine.next_run,
            metrics=self.metrics,
            feed=self.feed,
        )
        site = Site(self.http.app.resource())
        self.http_service = StreamServerEndpointService(serverFromString(reactor, http), site)
        self.http_service.setServiceParent(self)

    @classmethod
    def from_options(cls, options: Any) -> SchedulerService:
        from twisted.internet import reactor

        return cls(
            reactor,
            options["tz"],
            options["tasks-file"],
            options["tcp"],
            options["http"],
            tcp_linger=options["tcp-linger"],
            tcp_idle_timeout=options["tcp-idle-timeout"],
            tcp_max_line=options["tcp-max-line"],
            jobs_db=options["jobs-db"],
            lost_after=options["lost-after"],
            queue_limit=options["queue-limit"],
            output_cap=options["output-cap"],
            keep_jobs=options["keep-jobs"],
            keep_days=options["keep-days"],
        )

    def startService(self) -> None:
        log.info(
            "loaded {count} tasks from {path}",
            count=self.loaded_at_start,
            path=self.store.path,
        )
        super().startService()
        self.feed.start()
        self._run_missed()
        self.dispatcher.pump()

    def stopService(self) -> Deferred[None]:
        self.dispatcher.stop()
        self.feed.stop()
        stopped = super().stopService()

        async def close() -> None:
            await stopped
            await self.job_store.close()

        return Deferred.fromCoroutine(close())

    def _connect_feed(self) -> None:
        """Push task, job, worker and output changes to the dashboard."""
        feed, http = self.feed, lambda: self.http

        self.state.listeners.append(
            lambda change, task: feed.publish(
                "task", {"change": change, "task": http().task_json(task)}
            )
        )
        self.jobs.listeners.append(lambda job: feed.publish("job", http().job_json(job)))
        self.workers.listeners.append(
            lambda change, worker: feed.publish(
                "worker", {"change": change, "name": worker.name, "running": len(worker.running)}
            )
        )
        self.dispatcher.output_listeners.append(
            lambda job_id, seq, stream, data: feed.publish(
                "output", {"job": job_id, "seq": seq, "stream": stream, "data": data}, job=job_id
            )
        )

    def _run_missed(self) -> None:
        """Apply each task's missed-run policy to the downtime just ended."""
        now = self.reactor.seconds()
        for task in self.state.book:
            last = self._last_scheduled.get(task.id)
            if last is None or task.options.missed == "skip":
                continue
            times = missed_times(task.schedule, last, now, task.options.missed, task.options.missedCap)
            for scheduled in times:
                log.info(
                    "{job_name}: running the missed time {when} (missed={policy})",
                    job_name=task.job_name,
                    when=self._iso(scheduled),
                    policy=task.options.missed,
                )
                self.dispatcher.fire(task, scheduled)

    def _prune(self) -> None:
        self.job_store.prune(self.reactor.seconds()).addErrback(
            lambda failure: log.failure("pruning job history failed", failure)
        )

    def _iso(self, timestamp: float) -> str:
        return datetime.fromtimestamp(timestamp, self.state.book.tz).isoformat()

    def status(self) -> dict[str, int]:
        return {
            "tasks": len(self.state.book),
            "workers": len(self.workers),
            "queued": self.dispatcher.queued,
            "running": self.jobs.count(JobStatus.RUNNING),
        }

    def on_fires(self, fires: list[Fire]) -> None:
        for fire in fires:
            task = self.state.book.get(fire.task_id)
            if task is None:
                continue
            for job in self.dispatcher.fire(task, fire.scheduled):
                log.info(
                    "{job_name} due at {when}: job {job_id} queued",
                    job_name=task.job_name,
                    when=self._iso(fire.scheduled),
                    job_id=job.id,
                )
