"""The live feed across nodes, end to end: two real ``twistd scheduler --db``
nodes on one PostgreSQL, a real worker on b only, a job started through a
(offered, claimed by b, run on b's worker): a's ``GET /api/events?job=<id>``
shows its output lines in order and its end, as if a ran it."""

from __future__ import annotations

import http.client
import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

from tests.e2e import get_json, http_json, start_scheduler, start_worker, stop, wait_until

ROOT = Path(__file__).resolve().parent.parent
ENV = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}

LINES = 7
# One line every 0.3 s for about 2 s, each with the time it was printed.
COMMAND = f'for i in $(seq {LINES}); do echo "line $i $(date +%s.%N)"; sleep 0.3; done'


class EventStream(threading.Thread):
    """GET *path* as Server-Sent Events: each event, its data and when it arrived."""

    def __init__(self, port: int, path: str) -> None:
        super().__init__(daemon=True)
        self.events: list[tuple[str, dict[str, Any], float]] = []
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.connection.request("GET", path)
        self.response = self.connection.getresponse()
        assert self.response.status == 200
        self.start()

    def run(self) -> None:
        buffer = b""
        try:
            while chunk := self.response.read1(65536):
                arrived = time.time()
                buffer += chunk
                while b"\n\n" in buffer:
                    frame, buffer = buffer.split(b"\n\n", 1)
                    fields = dict(line.split(": ", 1) for line in frame.decode().splitlines() if not line.startswith(":"))
                    if "event" in fields:
                        self.events.append((fields["event"], json.loads(fields["data"]), arrived))
        except (OSError, ValueError, AttributeError, http.client.HTTPException):
            # Closed by close(), from the test's thread.
            pass

    def close(self) -> None:
        self.connection.close()


def test_a_job_run_by_another_nodes_worker_shows_its_output_and_its_end_on_this_nodes_feed(
    tmp_path: Path,
    pg_url: str,
) -> None:
    env = {**ENV, "SCHEDULER_DB": pg_url}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = start_scheduler(tmp_path / "a", "--node-name", "a", env=env)
    b = worker = stream = local = None
    try:
        b = start_scheduler(tmp_path / "b", "--node-name", "b", env=env)
        worker = start_worker(b.http, "w1", workdir=tmp_path / "b", env=ENV)
        wait_until(lambda: get_json(b.url + "/api/workers"), 20, "the worker to connect to b")
        code, created = http_json("POST", a.url + "/api/jobs", {"command": COMMAND})
        assert code == 202, created
        job_id = created["id"]  # type: ignore[index]
        stream = EventStream(a.http, f"/api/events?job={job_id}")
        # The same job's feed on b, which manages it: the delay the relay adds.
        local = EventStream(b.http, f"/api/events?job={job_id}")
        outputs = stream.events

        def ended() -> bool:
            return any(kind == "job" and data["id"] == job_id and data["status"] == "succeeded" for kind, data, _ in outputs)

        wait_until(ended, 30, "a's feed to show the job's end")
        job = get_json(f"{b.url}/api/jobs/{job_id}")
        assert job["worker"] == "w1"
        lines = [(data["seq"], data["data"], arrived) for kind, data, arrived in outputs if kind == "output"]
        text = "".join(data for _, data, _ in lines)
        # Every line, in order, once (chunks may hold more than one line).
        assert [line.split()[:2] for line in text.splitlines()] == [["line", str(n)] for n in range(1, LINES + 1)]
        assert [seq for seq, _, _ in lines] == sorted({seq for seq, _, _ in lines})
        # The output came before the end, and the job was running on a's feed while it printed.
        kinds = [(kind, data.get("status")) for kind, data, _ in outputs if kind in ("job", "output")]
        assert kinds.index(("job", "succeeded")) > max(index for index, (kind, _) in enumerate(kinds) if kind == "output")
        assert ("job", "running") in kinds
        # The delay from a line printed on b's worker to its event on a (one machine, one clock).
        wait_until(lambda: any(kind == "job" and data["status"] == "succeeded" for kind, data, _ in local.events), 10, "b's feed")
        for where, events in (("a's feed (relayed)", outputs), ("b's feed (local)", local.events)):
            delays = sorted(
                arrived - float(line.split()[2])
                for kind, data, arrived in events
                if kind == "output"
                for line in data["data"].splitlines()
                if line.startswith("line ")
            )
            print(
                f"output printed on b's worker to {where}: {delays[0] * 1000:.0f}-{delays[-1] * 1000:.0f} ms "
                f"(median {delays[len(delays) // 2] * 1000:.0f} ms) over {len(delays)} lines"
            )
        # a's log of the job (read from the store) tells the page where it ends.
        connection = http.client.HTTPConnection("127.0.0.1", a.http, timeout=10)
        connection.request("GET", f"/api/jobs/{job_id}/log")
        log = connection.getresponse()
        assert log.status == 200 and log.getheader("X-Output-Seq") == str(lines[-1][0])
        assert log.read().decode() == text
        connection.close()
        metrics = str(http_json("GET", a.url + "/metrics")[1])
        reads = re.search(r"^scheduler_feed_relay_reads_total (\S+)$", metrics, re.M)
        assert reads is not None and float(reads.group(1)) >= 1
    finally:
        for each in (stream, local):
            if each is not None:
                each.close()
        if worker is not None:
            stop(worker)
        for node in (a, b):
            if node is not None:
                stop(node.process)
