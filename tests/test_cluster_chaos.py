"""The chaos test of a cluster, short form (``bench/cases/cluster.py``'s run at
``QUICK`` sizes): three real ``twistd scheduler --db`` nodes on a real
PostgreSQL, real workers listing every node, every-second tasks; kill -9 of
the leader, SIGSTOP of the leader past its lease, its database sessions
terminated, a PostgreSQL restart, and a worker's node killed mid-job.

Asserted: what must never happen (a task's second lost or run twice, a fire
committed by a leader after its takeover, a job whose worker's node died
ending without its whole output). How fast things went is printed, not
asserted: that is ``make bench``'s."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.cases.cluster import QUICK, run_chaos
from bench.common import Runtime
from tests.postgres_support import PostgresServer, pg_url, postgres_server  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent


def test_no_fire_lost_or_doubled_through_five_faults(
    tmp_path: Path, postgres_server: PostgresServer, pg_url: str  # noqa: F811
) -> None:
    runtime = Runtime(python=sys.executable, workdir=tmp_path, quick=True, peers=False, tree=ROOT)
    report = run_chaos(runtime, postgres_server, pg_url, QUICK)
    print(json.dumps(report, indent=1))
    assert report["task_seconds"] >= QUICK.tasks * 20, "the window is too short to say anything"
    assert (report["lost"], report["not_run"], report["problems"]) == (0, 0, [])
    assert (report["doubled"], report["run_twice"]) == (0, 0)
    faults = {fault["fault"]: fault for fault in report["faults"]}
    frozen = faults[f"SIGSTOP leader {QUICK.frozen:g} s"]
    assert frozen["fires_by_the_old_leader_after_thaw"] == 0
    moved = faults["worker's node killed mid-job"]
    assert moved["worker_back_on"] != moved["node"]
    assert (moved["status"], moved["exit_code"], moved["whole_output"]) == ("succeeded", 0, True), moved
