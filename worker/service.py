"""The worker's root service: the agent and its connection, stopped in order."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred

if TYPE_CHECKING:
    # Only a type here: worker.agent re-exports this module's class.
    from worker.agent import WorkerAgent

__all__ = ["WorkerService"]


class WorkerService(MultiService):
    """The agent plus its connection service.

    Stopping cancels the jobs first and only then closes the connection, so
    their (cancelled) results can still reach the scheduler.  MultiService
    alone would stop both at once.
    """

    def __init__(self, agent: WorkerAgent, connection: IService) -> None:
        super().__init__()
        self.agent = agent
        connection.setServiceParent(self)

    def stopService(self) -> Deferred[None]:
        stopping = self.agent.stop()

        def then_disconnect(_: object) -> Deferred[Any]:
            # The close frame is queued before ClientService drops the TCP
            # connection (which flushes writes first), so the scheduler gets
            # a clean close rather than a vanished peer.
            self.agent.close_connection("worker stopping")
            children: Deferred[Any] = MultiService.stopService(self)
            return children

        def done(_: object) -> None:
            return None

        return stopping.addCallback(then_disconnect).addCallback(done)
