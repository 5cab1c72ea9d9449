"""Case 6, runs for months, in process: memory flat in the number of fires, a fire's cost flat in the jobs waiting.

``bench/inproc_fires.py`` runs on a ``task.Clock``: 1,000 every-second
tasks fire a million times onto in-memory workers; resident memory is
sampled along the way and compared between the first and the last tenth
of the run.  Then the cost of a fire that ``overlap: skip`` skips is timed
with 10, 1,000 and 10,000 jobs waiting.  The soak case does the same with
real processes, for a wall-clock time.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from bench.common import BENCH, CaseResult, Figure, Runtime

NAME = "long_run"


def in_process(runtime: Runtime) -> dict[str, Any]:
    fires = 20_000 if runtime.quick else 1_000_000
    active = "10,100" if runtime.quick else "10,1000,10000"
    output = subprocess.run(
        [runtime.python, str(BENCH / "inproc_fires.py"), "--fires", str(fires), "--tasks", "1000", "--active", active],
        check=True,
        capture_output=True,
        text=True,
        env=runtime.env(),
        cwd=BENCH.parent,
    ).stdout
    result: dict[str, Any] = json.loads(output)
    return result


def run(runtime: Runtime) -> CaseResult:
    result = CaseResult(NAME)
    inproc = in_process(runtime)
    costs = {int(count): us for count, us in inproc["skip_fire_us"].items()}
    result.add(Figure("fires", float(inproc["fires"]), "jobs"))
    result.add(
        Figure(
            "RSS growth, first to last tenth",
            inproc["rss_growth_mib"],
            "MiB",
            target="< 5 MiB",
            met=inproc["rss_growth_mib"] < 5,
        )
    )
    for count, us in sorted(costs.items()):
        result.add(Figure(f"skipped fire, {count:,} jobs waiting", us, "µs"))
    # Whether the cost grows with the jobs waiting: the most against the fewest.
    growth = costs[max(costs)] / costs[min(costs)]
    result.add(
        Figure(
            "skipped fire, most / fewest jobs waiting", growth, "x", target="no growth (< 1.5x)", met=growth < 1.5
        )
    )
    inproc.pop("skip_fire_us")
    result.details.update(inproc)
    return result
