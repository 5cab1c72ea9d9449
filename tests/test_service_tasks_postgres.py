"""The service with --db takes its tasks from PostgreSQL: the first node on a
database that never held tasks imports its tasks.db, once; a later node
keeps the cluster's (its own tasks.db, even a broken one, is not read); a
broken tasks.db on the first node stops it with the file's name; and a
change made on one node reaches the other through its cluster events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from scheduler.service import StartupError
from scheduler.triggers import TriggeredBy
from tests.postgres_support import pg_url, postgres_server  # noqa: F401
from tests.test_http_api import Api, close_api, make_api


def _tasks_db(folder: Path, *commands: str) -> None:
    folder.mkdir(exist_ok=True)
    lines = [json.dumps({"schedule": "@daily", "command": command, "jobName": f"task_{number}"}) for number, command in enumerate(commands, 1)]
    (folder / "tasks.db").write_text("".join(line + "\n" for line in lines))


async def _close(api: Api) -> None:
    service = api.service
    await close_api(api)
    if service.cluster_events is not None:
        service.cluster_events.stop()
    if service.shared_tasks is not None:
        service.shared_tasks.close()
    if service.lease_store is not None:
        service.lease_store.close()


def _commands(api: Api) -> list[str]:
    return [task.command for task in api.service.state.book]


@pytest_twisted.ensureDeferred
async def test_the_first_node_imports_its_tasks_db_and_a_later_one_keeps_the_clusters(
    tmp_path: Path,
    reactor: Any,
    pg_url: str,  # noqa: F811
) -> None:
    _tasks_db(tmp_path / "a", "echo a1", "echo a2")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "tasks.db").write_text("not even json\n")
    a = await make_api(tmp_path / "a", reactor, db_url=pg_url, node_name="a")
    b = None
    try:
        assert _commands(a) == ["echo a1", "echo a2"]
        assert a.service.shared_tasks is not None and a.service.shared_tasks.generation == 1
        b = await make_api(tmp_path / "b", reactor, db_url=pg_url, node_name="b")
        assert _commands(b) == ["echo a1", "echo a2"]
        # Files are left as they were: the import reads, SAVE alone writes.
        assert (tmp_path / "b" / "tasks.db").read_text() == "not even json\n"
        # The database's tasks now stay when a's tasks.db changes.
        _tasks_db(tmp_path / "a", "echo other")
        await _close(a)
        a = await make_api(tmp_path / "a", reactor, db_url=pg_url, node_name="a")
        assert _commands(a) == ["echo a1", "echo a2"]
    finally:
        await _close(a)
        if b is not None:
            await _close(b)


@pytest_twisted.ensureDeferred
async def test_a_broken_tasks_db_to_import_stops_the_start_naming_the_file(
    tmp_path: Path,
    reactor: Any,
    pg_url: str,  # noqa: F811
) -> None:
    (tmp_path / "tasks.db").write_text('{"schedule": "@daily", "command": "ok", "jobName": "task_1"}\n{"schedule": 5}\n')
    with pytest.raises(StartupError, match=r"tasks.db, line 2: .*\(the file was left as it is\)"):
        await make_api(tmp_path, reactor, db_url=pg_url, node_name="a")


@pytest_twisted.ensureDeferred
async def test_a_change_on_one_node_reaches_the_other_through_its_cluster_events(
    tmp_path: Path,
    reactor: Any,
    pg_url: str,  # noqa: F811
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = await make_api(tmp_path / "a", reactor, db_url=pg_url, node_name="a")
    b = await make_api(tmp_path / "b", reactor, db_url=pg_url, node_name="b")
    try:
        events = b.service.cluster_events
        assert events is not None
        listening: Deferred[None] = Deferred()
        events.resync.append(lambda: None if listening.called else listening.callback(None))
        events.start()
        await listening
        heard: Deferred[tuple[str, int]] = Deferred()
        b.service.state.listeners.append(lambda change, task: None if heard.called else heard.callback((change, task.id)))
        added = await a.service.changes.add("* * * * *", "echo from a", by=TriggeredBy("api", "test"))
        assert await heard == ("added", added.id)
        assert b.service.engine.next_run(added.id) is not None
        assert _commands(b) == ["echo from a"]
    finally:
        await _close(a)
        await _close(b)
