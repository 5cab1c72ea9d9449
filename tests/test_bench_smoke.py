"""Smoke test of ``make bench``: the benchmark runs end to end at tiny sizes.

Runs ``bench/run.py --quick --no-peers`` (no Celery, Redis or APScheduler,
so nothing beyond the test extras is installed) on every case but
``cluster``, whose chaos run is tests/test_cluster_chaos.py, and checks that every case
completed and that the JSON it wrote is well formed.  No timing is
asserted: this machine's speed is not what the test is about.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = {
    "throughput",
    "latency",
    "many_tasks",
    "many_workers",
    "fanout",
    "long_run",
    "soak",
    "wire",
    "batch",
    "herd",
}


def test_bench_quick_run_writes_every_case(tmp_path: Path) -> None:
    output = tmp_path / "latest.json"
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--quick",
            "--no-peers",
            "--output",
            str(output),
            *(arg for name in sorted(CASES) for arg in ("--only", name)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, f"bench failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"

    report = json.loads(output.read_text())
    assert report["quick"] is True and report["peers"] is False
    assert {"cpu", "cores", "memory_gib", "python"} <= set(report["machine"])
    assert set(report["cases"]) == CASES
    for name, case in report["cases"].items():
        assert case["case"] == name
        assert case["error"] is None, f"{name}: {case['error']}"
        assert case["figures"], f"{name} reported no figures"
        for figure in case["figures"]:
            assert isinstance(figure["name"], str) and figure["name"]
            assert isinstance(figure["unit"], str)
            value = figure["value"]
            assert isinstance(value, int | float) and math.isfinite(value), f"{name}: {figure}"
            assert figure["met"] in (True, False, None)
    # The table names every case too.
    for name in CASES:
        assert name in run.stdout
