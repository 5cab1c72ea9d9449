"""The scheduler's service tree: one MultiService holding every listener."""

from __future__ import annotations

from datetime import datetime, tzinfo
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.server import Site

from scheduler.engine import CronEngine, Fire
from scheduler.http_api import SchedulerHTTP
from scheduler.jobbook import JobBook
from scheduler.jobs import JobStatus
from scheduler.state import TaskState
from scheduler.store import FlatFileTaskStore, LoadError
from scheduler.taskbook import TaskBook
from scheduler.tcp_commands import CommandFactory, TcpCommands
from scheduler.ticker import CronTicker

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
        self.jobs = JobBook(clock)
        self.ticker = CronTicker(clock, self.engine, self.on_fires)
        self.ticker.setServiceParent(self)

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

        self.http = SchedulerHTTP(self.state)
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
        )

    def startService(self) -> None:
        log.info(
            "loaded {count} tasks from {path}",
            count=self.loaded_at_start,
            path=self.store.path,
        )
        super().startService()

    def status(self) -> dict[str, int]:
        return {
            "tasks": len(self.state.book),
            "queued": self.jobs.count(JobStatus.QUEUED),
            "running": self.jobs.count(JobStatus.RUNNING),
        }

    def on_fires(self, fires: list[Fire]) -> None:
        for fire in fires:
            task = self.state.book.get(fire.task_id)
            if task is None:
                continue
            job = self.jobs.fire(task.id, fire.scheduled, task.command)
            if job is None:
                continue
            log.info(
                "{job_name} due at {when}: job {job_id} queued",
                job_name=task.job_name,
                when=datetime.fromtimestamp(fire.scheduled, self.state.book.tz).isoformat(),
                job_id=job.id,
            )
