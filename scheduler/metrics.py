"""Prometheus metrics, on a registry of the service's own (not the global one)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from scheduler.job_claims import ClaimCounts
from scheduler.jobs import Job, JobStatus
from scheduler.leader_lease import LeaseCounts

# Per task: its jobName, last success (Unix time or None), consecutive
# failures and health (scheduler.alert_watch).
TaskHealthRow = tuple[str, float | None, int, str]

# Per-task gauges only up to this many tasks: past it a scrape walks every
# task on the reactor (a million tasks made a 117 MB answer that held it
# 20-26 s) and gives a Prometheus server more series than one target should.
PER_TASK_SERIES_LIMIT = 10_000


class LeaseCollector(Collector):
    """The leader lease's counters (kept by the lease, read at each scrape)."""

    def __init__(self, counts: Callable[[], LeaseCounts], fenced: Callable[[], int]) -> None:
        self._counts = counts
        self._fenced = fenced

    def describe(self) -> Iterator[Metric]:
        return self._families(LeaseCounts(), 0)

    def collect(self) -> Iterator[Metric]:
        return self._families(self._counts(), self._fenced())

    def _families(self, counts: LeaseCounts, fenced: int) -> Iterator[Metric]:
        for name, doc, value in (
            ("scheduler_leader_lease_steps", "Lease statements this node sent (one a second: what leadership costs the database).", counts.steps),
            ("scheduler_leader_elections", "Times this node took the leader lease (each a new epoch).", counts.elections),
            ("scheduler_leader_renewals", "Renewals of the leader lease by this node.", counts.renewals),
            ("scheduler_leader_lost", "Leases this node held and lost (its deadline passed, or another node took it).", counts.lost),
            ("scheduler_leader_lease_failures", "Lease steps the database could not do.", counts.failures),
            ("scheduler_fenced_writes", "Fired jobs' records refused: made under an epoch that was no longer the lease's.", fenced),
        ):
            yield CounterMetricFamily(name, doc, value=value)


class ClaimCollector(Collector):
    """The cluster's offers, claims and relayed cancels (``--db``; kept by ``JobClaims``)."""

    def __init__(self, counts: Callable[[], ClaimCounts]) -> None:
        self._counts = counts

    def describe(self) -> Iterator[Metric]:
        return self._families(ClaimCounts())

    def collect(self) -> Iterator[Metric]:
        return self._families(self._counts())

    def _families(self, counts: ClaimCounts) -> Iterator[Metric]:
        for name, doc, value in (
            ("scheduler_jobs_offered", "Queued jobs this node offered to the cluster: no worker of its own could take them.", counts.offered),
            ("scheduler_jobs_claimed", "Offered jobs this node claimed (its own back included).", counts.claimed),
            ("scheduler_job_claim_queries", "Claims of offered jobs this node asked of the database.", counts.claim_queries),
            ("scheduler_cancels_relayed", "Cancels this node asked of the node managing the job.", counts.cancels_relayed),
        ):
            yield CounterMetricFamily(name, doc, value=value)

# A counter kept elsewhere: its name, help text and how to read it.
CountRow = tuple[str, str, Callable[[], int]]


class CountsCollector(Collector):
    """Counters kept by the objects that count (the failover's), read at each scrape."""

    def __init__(self, rows: list[CountRow]) -> None:
        self._rows = rows

    def describe(self) -> Iterator[Metric]:
        for name, doc, _ in self._rows:
            yield CounterMetricFamily(name, doc)

    def collect(self) -> Iterator[Metric]:
        for name, doc, read in self._rows:
            yield CounterMetricFamily(name, doc, value=read())


class TaskHealthCollector(Collector):
    """The per-task gauges, read at each scrape.

    One series per task for each (the health gauge carries only the current
    health, with value 1), so the series are bounded by the number of tasks:
    with more than *limit* tasks there are none, and
    ``scheduler_task_series_omitted`` says how many tasks went without.
    """

    def __init__(
        self, rows: Callable[[], list[TaskHealthRow]], count: Callable[[], int], limit: int = PER_TASK_SERIES_LIMIT
    ) -> None:
        self._rows = rows
        self._count = count
        self._limit = limit

    def describe(self) -> Iterator[Metric]:
        # Without it, registering would call collect(), before the tasks exist.
        return self._families(False)

    def collect(self) -> Iterator[Metric]:
        return self._families(True)

    def _families(self, with_samples: bool) -> Iterator[Metric]:
        success = GaugeMetricFamily(
            "scheduler_task_last_success_timestamp",
            "When the task's last successful run ended (Unix seconds); absent if it never succeeded.",
            labels=["task"],
        )
        failures = GaugeMetricFamily(
            "scheduler_task_consecutive_failures",
            "Runs of the task in a row that ended badly (after their retries) since its last success.",
            labels=["task"],
        )
        health = GaugeMetricFamily(
            "scheduler_task_health",
            "1 for the task's current health: up, late, failing, down or paused.",
            labels=["task", "health"],
        )
        omitted = GaugeMetricFamily(
            "scheduler_task_series_omitted",
            f"Tasks without per-task gauges: all of them while there are more than {self._limit:,}.",
        )
        count = self._count() if with_samples else 0
        if count > self._limit:
            omitted.add_metric([], count)
        else:
            omitted.add_metric([], 0)
            for name, last, streak, now in self._rows() if with_samples else ():
                if last is not None:
                    success.add_metric([name], last)
                failures.add_metric([name], streak)
                health.add_metric([name, now], 1)
        yield success
        yield failures
        yield health
        yield omitted


class SchedulerMetrics:
    def __init__(
        self,
        *,
        queued: Callable[[], float],
        running: Callable[[], float],
        workers: Callable[[], float],
        tasks: Callable[[], float],
        tick_lag: Callable[[], float],
        task_health: Callable[[], list[TaskHealthRow]] = list,
        task_series_limit: int = PER_TASK_SERIES_LIMIT,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(TaskHealthCollector(task_health, lambda: int(tasks()), task_series_limit))
        self.jobs_finished = Counter(
            "scheduler_jobs_finished",
            "Jobs that reached a final status, by status.",
            ["status"],
            registry=self.registry,
        )
        self._finished: dict[JobStatus, Counter] = {}
        self.dispatch_latency = Histogram(
            "scheduler_dispatch_latency_seconds",
            "From a job's due time (scheduled time, or submission) to its worker's 'started'.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.reactor_lag = Histogram(
            "scheduler_reactor_lag_seconds",
            "How late the reactor ran a timer due every 50 ms (scheduler.reactor_lag): the longest turn it took meanwhile.",
            buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5),
            registry=self.registry,
        )
        self.clock_steps = Counter(
            "scheduler_clock_steps",
            "Steps of the wall clock (against the monotonic clock) seen by the cron tick, by direction.",
            ["direction"],
            registry=self.registry,
        )
        for direction in ("forward", "back"):
            self.clock_steps.labels(direction=direction)
        for name, doc, source in (
            ("scheduler_jobs_queued", "Jobs waiting for a worker.", queued),
            ("scheduler_jobs_running", "Jobs placed on a worker and not finished.", running),
            ("scheduler_workers_connected", "Connected workers.", workers),
            ("scheduler_tasks_loaded", "Scheduled tasks.", tasks),
            ("scheduler_cron_tick_lag_seconds", "How late the last cron tick ran after its second.", tick_lag),
        ):
            Gauge(name, doc, registry=self.registry).set_function(source)

    def watch_lease(
        self,
        counts: Callable[[], LeaseCounts],
        leading: Callable[[], bool],
        epoch: Callable[[], int],
        fenced: Callable[[], int] = lambda: 0,
    ) -> None:
        """The leader lease's counts and state (scheduler.leader_lease), read at each scrape."""
        self.registry.register(LeaseCollector(counts, fenced))
        Gauge("scheduler_leader", "1 while this node leads (fires cron), else 0.", registry=self.registry).set_function(
            lambda: 1.0 if leading() else 0.0
        )
        Gauge("scheduler_leader_epoch", "The leader lease's epoch as this node last saw it.", registry=self.registry).set_function(
            lambda: float(epoch())
        )

    def watch_claims(self, counts: Callable[[], ClaimCounts]) -> None:
        """The cluster's offers and claims (scheduler.job_claims), read at each scrape."""
        self.registry.register(ClaimCollector(counts))

    def watch_counts(self, rows: list[CountRow]) -> None:
        """Counters kept elsewhere (the jobs taken over, let go, swept), read at each scrape."""
        self.registry.register(CountsCollector(rows))

    def job_changed(self, job: Job) -> None:
        if job.status.final:
            # labels() looks the child up under a lock each call: kept per status.
            finished = self._finished.get(job.status)
            if finished is None:
                finished = self._finished[job.status] = self.jobs_finished.labels(status=job.status.value)
            finished.inc()

    def clock_stepped(self, direction: str, size: float) -> None:
        self.clock_steps.labels(direction=direction).inc()

    def job_started(self, job: Job, latency: float) -> None:
        self.dispatch_latency.observe(latency)

    def reactor_lagged(self, seconds: float) -> None:
        self.reactor_lag.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
