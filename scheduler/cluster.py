"""What ``GET /api/cluster`` and ``/api/health`` say about the nodes and who leads.

In embedded mode there is one node, which leads (``SoleLeader``); with
``--db`` the nodes heartbeat a row each in the lease's statement
(``PostgresLeaseStore``), and a node counts as part of the cluster while its
last heartbeat is recent (``NODE_GONE_AFTER`` leases).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from datetime import tzinfo
from typing import Any, Protocol

from twisted.internet import endpoints
from twisted.internet.defer import Deferred, succeed

from scheduler.cron import iso
from scheduler.leader_lease import Leadership

# A node silent for this many leases is no longer listed.
NODE_GONE_AFTER = 12


def default_node_name(http: str) -> str:
    """This machine's host name and the --http port: unique per machine and port."""
    args, kw = endpoints._parse(http)
    port = kw.get("port", args[1] if len(args) > 1 else None)
    host = socket.gethostname() or "localhost"
    return f"{host}:{port}" if port else host


class NodeRows(Protocol):
    def nodes(self) -> Deferred[list[tuple[str, str, int, float]]]:
        """Every node's name, address, connected workers and last heartbeat (Unix time)."""


class Cluster:
    """The cluster as this node sees it."""

    def __init__(
        self,
        leadership: Leadership,
        *,
        address: str,
        workers: Callable[[], int],
        clock: Any,
        tz: Callable[[], tzinfo],
        rows: NodeRows | None = None,
        lease: float = 5.0,
    ) -> None:
        self.leadership = leadership
        self.address = address
        self._workers = workers
        self._clock = clock
        self._tz = tz
        self._rows = rows
        self._lease = lease

    def health(self) -> dict[str, Any]:
        """What /api/health adds: this node, whether it leads, the epoch."""
        return {"node": self.leadership.node, "leader": self.leadership.leading(), "epoch": self.leadership.epoch}

    def describe(self) -> Deferred[dict[str, Any]]:
        """GET /api/cluster's body; fails if the nodes' rows cannot be read."""
        now = self._clock.seconds()
        me = self._node(self.leadership.node, self.address, self._workers(), now)
        if self._rows is None:
            return succeed(self._body([me]))

        def listed(rows: list[tuple[str, str, int, float]]) -> dict[str, Any]:
            nodes = [me]
            for name, address, workers, seen in rows:
                if name != me["name"] and now - seen <= NODE_GONE_AFTER * self._lease:
                    nodes.append(self._node(name, address, workers, seen))
            return self._body(nodes)

        return self._rows.nodes().addCallback(listed)

    def _node(self, name: str, address: str, workers: int, seen: float) -> dict[str, Any]:
        return {
            "name": name,
            "address": address,
            "leader": name == self.leadership.leader,
            "lastSeen": iso(seen, self._tz()),
            "workers": workers,
        }

    def _body(self, nodes: list[dict[str, Any]]) -> dict[str, Any]:
        since = self.leadership.since
        return {
            "leader": self.leadership.leader,
            "epoch": self.leadership.epoch,
            "leaderSince": iso(since, self._tz()) if since is not None else None,
            "nodes": nodes,
        }
