"""scheduler.metrics: the per-task gauges are bounded by PER_TASK_SERIES_LIMIT tasks."""

from __future__ import annotations

from scheduler.metrics import SchedulerMetrics, TaskHealthRow

ROWS: list[TaskHealthRow] = [("nightly", 1_764_000_000.0, 0, "up"), ("hourly", None, 2, "failing")]


def scrape(tasks: int, limit: int) -> str:
    read: list[int] = []

    def rows() -> list[TaskHealthRow]:
        read.append(1)
        return ROWS

    metrics = SchedulerMetrics(
        queued=lambda: 0,
        running=lambda: 0,
        workers=lambda: 0,
        tasks=lambda: tasks,
        tick_lag=lambda: 0,
        task_health=rows,
        task_series_limit=limit,
    )
    text = metrics.render().decode()
    # Past the limit the tasks are not even walked: that walk was the cost.
    assert bool(read) == (tasks <= limit)
    return text


def test_per_task_gauges_up_to_the_limit() -> None:
    text = scrape(2, limit=2)
    assert 'scheduler_task_last_success_timestamp{task="nightly"} 1.764e+09' in text
    assert 'scheduler_task_consecutive_failures{task="hourly"} 2.0' in text
    assert 'scheduler_task_health{health="failing",task="hourly"} 1.0' in text
    assert "scheduler_task_series_omitted 0.0" in text


def test_past_the_limit_no_per_task_gauges_and_how_many_went_without() -> None:
    text = scrape(3, limit=2)
    assert "scheduler_task_health{" not in text
    assert "scheduler_task_consecutive_failures{" not in text
    assert "scheduler_task_series_omitted 3.0" in text
    # The families stay described, so dashboards see them as empty, not unknown.
    assert "# TYPE scheduler_task_health gauge" in text
