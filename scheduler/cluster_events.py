"""What the nodes of a cluster tell each other: PostgreSQL's LISTEN/NOTIFY.

A node that changes something the other nodes act on (the tasks, a queued
job, a cancel for a job running on another node's worker) sends a
notification *in the transaction of the change* (:func:`notify_sql`), so it
is delivered if and only if the change commits.  Every node listens on one
connection of its own, on a thread of its own (:class:`PostgresEvents`), and
its subscribers are called on the reactor thread.

A notification is not durable: one sent while a node's listening
connection is down never reaches it.  So each (re)connection, the first
included (changes made between a node's start-up reads and its ``LISTEN``
would be missed too), calls the ``resync`` listeners once ``LISTEN`` is in
place, and they reload what they may have missed.

Channels are named per schema (:func:`channel`): clusters, or tests, that
share one database in separate schemas do not hear each other.  A node does
not hear its own notifications; what it changed, it knows.

Embedded mode has no cluster and no events: the service holds ``None``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any, Protocol

import psycopg
from psycopg import sql
from twisted.logger import Logger

from scheduler.job_history.postgres import connect, redact

log = Logger()

# Every topic, one source: what a notification is about.
#  tasks:   the tasks changed (payload: the tasks' new generation)
#  jobs:    jobs were queued for any node to claim (payload: their targets),
#           or jobs a node claimed ended (payload: ended, their ids)
#  cancels: a cancel was asked for a job on another node (payload: the job id)
#  feed:    a node's committed history batch changed jobs (payload: jobs, their
#           ids) or stored output (output: job ids); more: the lists were capped.
#           A topic of its own so that the claims, woken by "jobs", are not
#           (scheduler/feed_relay.py)
TOPICS = ("tasks", "jobs", "cancels", "feed")

# PostgreSQL's limit on a notification's payload, in bytes (less one).
MAX_PAYLOAD = 7999

# Seconds between attempts to connect again, doubling up to the cap.
RECONNECT_FIRST = 0.25
RECONNECT_CAP = 5.0

# Seconds the listening thread waits for a notification before it looks
# whether it should stop.
POLL = 0.5

EventListener = Callable[[dict[str, Any]], None]


def channel(schema: str, topic: str) -> str:
    """The channel of *topic* for the cluster whose tables are in *schema*
    (PostgreSQL keeps the first 63 bytes of a name)."""
    if topic not in TOPICS:
        raise ValueError(f"unknown cluster topic {topic!r}; topics: {', '.join(TOPICS)}")
    return f"jobsched.{schema}.{topic}"[:63]


def payload(node: str, **fields: Any) -> str:
    """A notification's payload: who sent it, and *fields*, as JSON."""
    text = json.dumps({"node": node, **fields}, separators=(",", ":"))
    if len(text.encode()) > MAX_PAYLOAD:
        raise ValueError(
            f"a cluster notification's payload is {len(text.encode())} bytes; PostgreSQL takes {MAX_PAYLOAD}"
        )
    return text


def notify_sql(schema: str, topic: str, node: str, **fields: Any) -> tuple[str, tuple[str, str]]:
    """The statement and parameters that notify *topic* from inside a
    transaction: delivered when, and only if, it commits."""
    return "SELECT pg_notify(%s, %s)", (channel(schema, topic), payload(node, **fields))


def schema_of(conn: psycopg.Connection[Any]) -> str:
    """The schema a connection's tables are created in: what names its cluster's channels."""
    row = conn.execute("SELECT current_schema()").fetchone()
    return str(row[0]) if row is not None and row[0] is not None else "public"


class ClusterEvents(Protocol):
    """What the rest of the scheduler asks of the cluster's notifications."""

    node: str
    # Called on the reactor after each (re)connection, LISTEN in place.
    resync: list[Callable[[], None]]

    def subscribe(self, topic: str, listener: EventListener) -> None:
        """Call *listener* with each payload (a dict, ``node`` the sender's) of *topic*."""


class PostgresEvents:
    """The listening side of :mod:`cluster_events`: one connection, one thread."""

    def __init__(self, url: str, reactor: Any, node: str) -> None:
        self.url = url
        self.node = node
        self.resync: list[Callable[[], None]] = []
        self._reactor = reactor
        self._listeners: dict[str, list[EventListener]] = {topic: [] for topic in TOPICS}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # The thread's connection, so stop() can close it from outside.
        self._conn: psycopg.Connection[Any] | None = None
        self._topics: dict[str, str] = {}
        # Counts for /metrics: notifications heard (from other nodes) and reconnections.
        self.heard = 0
        self.connections = 0

    def subscribe(self, topic: str, listener: EventListener) -> None:
        if topic not in self._listeners:
            raise ValueError(f"unknown cluster topic {topic!r}; topics: {', '.join(TOPICS)}")
        self._listeners[topic].append(listener)

    def start(self) -> None:
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="cluster-listen", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop listening; returns once the thread is gone (at most about POLL seconds)."""
        self._stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=POLL * 4)

    # -- on the listening thread -------------------------------------------

    def _run(self) -> None:
        wait = RECONNECT_FIRST
        while not self._stopping.is_set():
            try:
                conn = connect(self.url, application_name=f"scheduler-listen {self.node}"[:63])
            except Exception as error:
                log.warn("cluster events: {error}; trying again in {wait:g}s", error=str(error), wait=wait)
                self._stopping.wait(wait)
                wait = min(wait * 2, RECONNECT_CAP)
                continue
            try:
                self._conn = conn
                self._listen(conn)
                wait = RECONNECT_FIRST
                self._hear(conn)
            except psycopg.Error as error:
                if not self._stopping.is_set():
                    log.warn(
                        "cluster events: lost the listening connection to {db} ({error}); connecting again",
                        db=redact(self.url),
                        error=type(error).__name__,
                    )
                    self._stopping.wait(wait)
                    wait = min(wait * 2, RECONNECT_CAP)
            finally:
                self._conn = None
                conn.close()

    def _listen(self, conn: psycopg.Connection[Any]) -> None:
        schema = schema_of(conn)
        by_channel = {}
        for topic in TOPICS:
            name = channel(schema, topic)
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(name)))
            by_channel[name] = topic
        self._topics = by_channel
        self.connections += 1
        self._reactor.callFromThread(self._resynced)

    def _hear(self, conn: psycopg.Connection[Any]) -> None:
        while not self._stopping.is_set():
            for note in conn.notifies(timeout=POLL):
                topic = self._topics.get(note.channel)
                if topic is not None:
                    self._reactor.callFromThread(self._deliver, topic, note.payload)
                if self._stopping.is_set():
                    return

    # -- on the reactor ----------------------------------------------------

    def _resynced(self) -> None:
        for listener in list(self.resync):
            try:
                listener()
            except Exception:
                log.failure("cluster resync listener {listener!r} failed", listener=listener)

    def _deliver(self, topic: str, text: str) -> None:
        try:
            fields = json.loads(text)
        except ValueError:
            log.warn("cluster events: ignored a {topic} notification that is not JSON", topic=topic)
            return
        if not isinstance(fields, dict) or fields.get("node") == self.node:
            return
        self.heard += 1
        for listener in list(self._listeners[topic]):
            try:
                listener(fields)
            except Exception:
                log.failure("cluster {topic} listener {listener!r} failed", topic=topic, listener=listener)
