"""GET /api/cluster and what /api/health says of the node: in embedded mode (one
node, always the leader) and with --db (the lease on a real PostgreSQL), and
cron firing only on the leader."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet.task import deferLater

from scheduler.access import AccessError
from scheduler.cluster import default_node_name
from scheduler.cron_engine import Fire
from scheduler.settings import read_db_url
from tests.test_http_api import Api, close_api, make_api


@pytest_twisted.ensureDeferred
async def test_embedded_mode_is_one_node_that_leads_in_epoch_1(tmp_path: Path, reactor: Any) -> None:
    api = await make_api(tmp_path, reactor, node_name="solo:3000")
    try:
        code, health = await api.call("GET", "/api/health")
        assert code == 200 and (health["node"], health["leader"], health["epoch"]) == ("solo:3000", True, 1)
        code, cluster = await api.call("GET", "/api/cluster")
        assert code == 200
        assert cluster["leader"] == "solo:3000" and cluster["epoch"] == 1
        # Since the service started (the test's service is not started: unknown).
        assert cluster["leaderSince"] is None or cluster["leaderSince"].endswith(("Z", "+00:00"))
        (node,) = cluster["nodes"]
        assert node["name"] == "solo:3000" and node["leader"] is True and node["workers"] == 0
        assert node["address"].startswith("http://")
        code, text = await api.call("GET", "/metrics")
        assert "scheduler_leader 1.0" in text and "scheduler_leader_elections_total" in text
        assert "scheduler_fires_caught_up_total 0.0" in text
    finally:
        await close_api(api)


def test_the_default_node_name_is_the_host_and_the_http_port() -> None:
    assert default_node_name("tcp:3000:interface=127.0.0.1").endswith(":3000")
    assert default_node_name("tcp:port=8080").endswith(":8080")


def test_the_database_url_comes_from_the_option_a_private_file_or_the_environment(tmp_path: Path) -> None:
    url = "postgresql://sched:pw@db/jobs"
    assert read_db_url(None, None, {}) is None
    assert read_db_url(url, None, {}) == url
    assert read_db_url(None, None, {"SCHEDULER_DB": url}) == url
    secret = tmp_path / "db-url"
    secret.write_text(url + "\n")
    secret.chmod(0o600)
    assert read_db_url(None, str(secret), {}) == url
    secret.chmod(0o644)
    with pytest.raises(AccessError, match="can be read by others") as caught:
        read_db_url(None, str(secret), {})
    assert "pw" not in str(caught.value).replace(str(tmp_path), "")
    with pytest.raises(AccessError, match="not both"):
        read_db_url(url, str(secret), {})
    with pytest.raises(AccessError, match="must start with postgresql://"):
        read_db_url("mysql://x", None, {})


@pytest_twisted.async_yield_fixture
async def node(tmp_path: Path, reactor: Any, pg_url: str) -> AsyncIterator[Api]:
    made = await make_api(tmp_path, reactor, db_url=pg_url, node_name="n1")
    yield made
    made.service.leadership.stop()
    await close_api(made)
    assert made.service.lease_store is not None
    made.service.lease_store.close()


async def _until(condition: Any, reactor: Any) -> None:
    for _ in range(100):
        if condition():
            return
        await deferLater(reactor, 0.05, lambda: None)
    raise AssertionError("never happened")


@pytest_twisted.ensureDeferred
async def test_with_a_database_the_node_fires_only_once_it_holds_the_lease(node: Api, reactor: Any) -> None:
    service = node.service
    code, added = await node.call("POST", "/api/tasks", {"schedule": "* * * * *", "command": "true", "jobName": "every_minute"})
    assert code == 201
    code, health = await node.call("GET", "/api/health")
    assert (health["node"], health["leader"]) == ("n1", False)
    # Not the leader (yet): a fire is the leader's, and makes no job here.
    service.fires.on_fires([Fire(1_700_000_000.0, added["id"])])
    assert len(service.jobs) == 0

    assert service.lease_store is not None
    service.lease_store.start()
    service.leadership.start()
    await _until(service.leadership.leading, reactor)
    code, health = await node.call("GET", "/api/health")
    assert (health["node"], health["leader"], health["epoch"]) == ("n1", True, 1)
    code, cluster = await node.call("GET", "/api/cluster")
    assert code == 200 and cluster["leader"] == "n1" and cluster["epoch"] == 1
    assert cluster["leaderSince"] is not None  # when epoch 1 began, by the database's clock
    assert [(each["name"], each["leader"]) for each in cluster["nodes"]] == [("n1", True)]
    service.fires.on_fires([Fire(1_700_000_060.0, added["id"])])
    # The job is made here; no worker of this node can take it, so it is
    # offered to the cluster (scheduler.job_claims), stored with no node.
    assert len(service.jobs) == 0 and service.dispatcher.queued == 0
    stored = await service.job_store.query()
    assert [(job.key, job.status.value) for job in stored] == [(f"{added['id']}@1700000060", "queued")]
