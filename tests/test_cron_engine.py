"""The cron engine: each scheduled time once, catch-up, clock jumps."""

from __future__ import annotations

from datetime import UTC, datetime

from scheduler import cron
from scheduler.cron_engine import CronEngine, Fire

UTC = UTC
T0 = datetime(2026, 1, 1, tzinfo=UTC).timestamp()


def every(expr: str) -> cron.Schedule:
    return cron.parse(expr, UTC)


def test_fires_each_minute_once_per_scheduled_time() -> None:
    engine = CronEngine(T0)
    engine.add(1, every("* * * * *"))
    fired: list[Fire] = []
    for second in range(1, 181):
        fired += engine.due(T0 + second)
    assert [f.scheduled - T0 for f in fired] == [60, 120, 180]


def test_late_tick_catches_up_within_window() -> None:
    engine = CronEngine(T0)
    engine.add(1, every("* * * * * *"))  # every second
    engine.due(T0 + 1)
    fires = engine.due(T0 + 6)  # five seconds late
    assert [f.scheduled - T0 for f in fires] == [2, 3, 4, 5, 6]
    assert engine.due(T0 + 6) == []


def test_forward_jump_does_not_storm() -> None:
    engine = CronEngine(T0, max_catch_up=60)
    engine.add(1, every("* * * * * *"))
    engine.due(T0 + 1)
    fires = engine.due(T0 + 86400)  # a day later
    assert len(fires) <= 61
    assert engine.skipped >= 1
    assert all(f.scheduled > T0 + 86400 - 61 for f in fires)


def test_small_backward_step_never_refires() -> None:
    engine = CronEngine(T0)
    engine.add(1, every("* * * * *"))
    first = engine.due(T0 + 61)
    assert len(first) == 1
    assert engine.due(T0 + 30) == []  # clock stepped back half a minute
    assert engine.due(T0 + 61) == []
    assert [f.scheduled - T0 for f in engine.due(T0 + 121)] == [120]


def test_big_backward_step_restarts_schedules() -> None:
    engine = CronEngine(T0 + 86400)
    engine.add(1, every("* * * * *"))
    engine.due(T0 + 86400)
    fires = engine.due(T0 + 60)  # set back a whole day
    assert [f.scheduled - T0 for f in fires] == []
    assert [f.scheduled - T0 for f in engine.due(T0 + 120)] == [120]


def test_shared_expression_groups_and_removal() -> None:
    engine = CronEngine(T0)
    for task_id in range(1, 1001):
        engine.add(task_id, every("*/5 * * * *"))
    engine.remove(7)
    fires = engine.due(T0 + 300)
    assert len(fires) == 999 and Fire(T0 + 300, 7) not in fires
    assert engine.next_run(1) == T0 + 600
    assert engine.next_run(7) is None


def test_readding_a_schedule_does_not_double_fire() -> None:
    engine = CronEngine(T0)
    engine.add(1, every("* * * * *"))
    engine.remove(1)
    engine.add(2, every("* * * * *"))
    assert [f.task_id for f in engine.due(T0 + 60)] == [2]


def test_quiet_tick_cost_does_not_depend_on_idle_tasks() -> None:
    engine = CronEngine(T0)
    for task_id in range(10_000):
        engine.add(task_id, every(f"{task_id % 60} 3 * * *"))
    assert engine.due(T0 + 1) == []
    assert engine.next_due() == T0 + 3 * 3600


def test_bulk_adds_and_removals_keep_each_group_exact() -> None:
    engine = CronEngine(T0)
    minute, five = every("* * * * *"), every("*/5 * * * *")
    engine.add_many([(task_id, minute if task_id % 2 else five) for task_id in range(30, 0, -1)])
    # A task given twice ends in the group given last, once.
    engine.add_many([(2, minute), (2, five)])
    engine.remove_many([1, 3, 5])  # a few: one at a time
    engine.remove_many(range(11, 30, 2))  # many: the group filtered once
    engine.remove(4)
    engine.remove(4)  # gone already: nothing
    odd_left = [7, 9]
    even_left = [task_id for task_id in range(2, 31, 2) if task_id != 4]
    assert len(engine) == len(odd_left) + len(even_left)
    assert engine.count_due(T0 + 60) == len(odd_left)
    assert engine.count_due(T0 + 300) == len(odd_left) + len(even_left)
    assert [(fire.scheduled - T0, fire.task_id) for fire in engine.due(T0 + 60)] == [(60, 7), (60, 9)]
    # The two groups due at one time come out merged by id.
    fires = engine.due(T0 + 300)
    assert fires == sorted(fires)
    assert [fire.task_id for fire in fires if fire.scheduled == T0 + 300] == sorted(odd_left + even_left)
