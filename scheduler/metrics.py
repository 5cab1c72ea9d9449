"""Prometheus metrics, on a registry of the service's own (not the global one)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from scheduler.jobs import Job


class SchedulerMetrics:
    def __init__(
        self,
        *,
        queued: Callable[[], float],
        running: Callable[[], float],
        workers: Callable[[], float],
        tasks: Callable[[], float],
        tick_lag: Callable[[], float],
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.jobs_finished = Counter(
            "scheduler_jobs_finished",
            "Jobs that reached a final status, by status.",
            ["status"],
            registry=self.registry,
        )
        self.dispatch_latency = Histogram(
            "scheduler_dispatch_latency_seconds",
            "From a job's due time (scheduled time, or submission) to its worker's 'started'.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
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

    def job_changed(self, job: Job) -> None:
        if job.status.final:
            self.jobs_finished.labels(status=job.status.value).inc()

    def clock_stepped(self, direction: str, size: float) -> None:
        self.clock_steps.labels(direction=direction).inc()

    def job_started(self, job: Job, latency: float) -> None:
        self.dispatch_latency.observe(latency)

    def render(self) -> bytes:
        return generate_latest(self.registry)
