"""Schemathesis against a real scheduler: /api/openapi.json is the contract.

Every phase (examples, coverage, fuzzing, stateful) and the checks the
issue names run against ``twistd scheduler`` on loopback, started from
this checkout (PYTHONPATH), and the run must end with no failure and no
warning: an undocumented status, a response that does not match its
schema or content type, a server error, or invalid data the server takes
all fail it, and so does a warning that generated requests mostly bounce
off (a schema looser than the route's checks).

The budget (examples per operation, steps per stateful scenario) keeps it
to some seconds; ``SCHEMATHESIS_MAX_EXAMPLES`` and ``SCHEMATHESIS_SEED``
turn it up or vary it for a longer hunt.  The seed is fixed by default, so
``make test`` tries the same cases each run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from scheduler.http_openapi import PING_EXAMPLE
from tests.e2e import start_scheduler, stop

pytest.importorskip("schemathesis")

ROOT = Path(__file__).resolve().parent.parent
SCHEMATHESIS = [str(Path(sys.executable).with_name("schemathesis"))]
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
)
PHASES = ("examples", "coverage", "fuzzing", "stateful")


def config(base_url: str, max_examples: int, seed: int) -> str:
    """schemathesis.toml: the checks and phases, every warning an error.

    The live feed never ends by itself; schemathesis reads an event stream
    until the request timeout, so /api/events gets a short one.
    """
    checks = "\n".join(f"{name}.enabled = true" for name in CHECKS)
    phases = "\n".join(f"{name}.enabled = true" for name in PHASES)
    return f"""
base-url = "{base_url}"
seed = {seed}
workers = 1

[generation]
max-examples = {max_examples}

[checks]
enabled = false
{checks}

[phases]
{phases}
stateful.max-steps = 6

[warnings]
fail-on = true

[[operations]]
include-path = "/api/events"
request-timeout = 0.3

# Its one success is 101 and a WebSocket, which an HTTP client cannot
# take; every other answer is a refusal, which schemathesis would report
# as generated data the server rejects.  Its plain GET is checked below.
[[operations]]
include-path = "/ws/worker"
enabled = false
"""


def test_the_api_keeps_its_openapi_contract(tmp_path: Path) -> None:
    paths = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    running = start_scheduler(tmp_path, env={"PYTHONPATH": os.pathsep.join(paths)})
    try:
        toml = tmp_path / "schemathesis.toml"
        toml.write_text(
            config(
                running.url,
                int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "10")),
                int(os.environ.get("SCHEMATHESIS_SEED", "1")),
            )
        )
        # Task 1 and its job: the documented example id, so routes on one
        # task or job have something to act on besides 404s; and a ping
        # check with the documented example uuid, for the ping routes.
        for path, body in (
            ("/api/tasks", {"schedule": "@daily", "command": "true"}),
            ("/api/tasks/1/run", {}),
            ("/api/tasks", {"schedule": "@daily", "command": "elsewhere", "ping": PING_EXAMPLE}),
        ):
            posted = urllib.request.Request(
                f"{running.url}{path}", json.dumps(body).encode(), {"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(posted, timeout=10) as answer:
                assert answer.status in (201, 202)
        worker = urllib.request.Request(f"{running.url}/ws/worker")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(worker, timeout=10)
        assert refused.value.code == 426 and refused.value.headers["Upgrade"] == "websocket"
        assert refused.value.headers["Content-Type"] == "application/json"
        assert set(json.loads(refused.value.read())) == {"error"}
        done = subprocess.run(
            [*SCHEMATHESIS, "--config-file", str(toml), "run", f"{running.url}/api/openapi.json", "--no-color"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        stop(running.process)
    report = done.stdout + done.stderr
    assert done.returncode == 0, report
    summary = report.rpartition("=== SUMMARY")[2]
    for trouble in ("Failures:", "Errors:", "Warnings:"):
        assert trouble not in summary, report
    assert "passed" in summary, report
