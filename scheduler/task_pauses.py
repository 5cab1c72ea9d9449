"""Tasks paused until a time resume by themselves when it comes.

The fire path already lets such a task fire from its ``pausedUntil`` on
(``Dispatcher.fire``); this clears the pause on the record too, so the
API, LIST and the dashboard stop calling it paused, and the revision
history says the schedule resumed it.
"""

from __future__ import annotations

import heapq
from typing import Literal

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from scheduler.task_changes import TaskChanges
from scheduler.task_state import TaskState
from scheduler.tasks import Task
from scheduler.triggers import SCHEDULE

log = Logger()


class PauseTimer:
    """One timer, for the earliest ``pausedUntil`` among the tasks."""

    def __init__(self, clock: IReactorTime, state: TaskState, changes: TaskChanges) -> None:
        self._clock = clock
        self._state = state
        self._changes = changes
        # (pausedUntil, task id); stale entries are dropped when they come up.
        self._due: list[tuple[float, int]] = []
        self._call: IDelayedCall | None = None
        state.listeners.append(self._task_changed)

    def start(self) -> None:
        for task in self._state.book:
            self._note(task)
        self._arm()

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _task_changed(self, change: Literal["added", "removed"], task: Task) -> None:
        if change == "added" and self._note(task):
            self._arm()

    def _note(self, task: Task) -> bool:
        until = task.options.pausedUntil
        if task.options.paused and until is not None:
            heapq.heappush(self._due, (until, task.id))
            return True
        return False

    def _arm(self) -> None:
        if not self._due:
            return
        when = self._due[0][0]
        if self._call is not None and self._call.active():
            if self._call.getTime() <= when:
                return
            self._call.cancel()
        self._call = self._clock.callLater(max(0.0, when - self._clock.seconds()), self._resume_due)

    def _resume_due(self) -> None:
        self._call = None
        now = self._clock.seconds()
        while self._due and self._due[0][0] <= now:
            until, task_id = heapq.heappop(self._due)
            task = self._state.book.get(task_id)
            if task is None or not task.options.paused or task.options.pausedUntil != until:
                continue  # removed, resumed or paused again since
            log.info("{job_name}: paused until now; resuming", job_name=task.job_name)
            self._changes.resume(task_id, by=SCHEDULE).addErrback(self._not_resumed, task_id)
        self._arm()

    def _not_resumed(self, failure: Failure, task_id: int) -> None:
        log.error("could not resume task {task_id}: {error}", task_id=task_id, error=failure.getErrorMessage())
