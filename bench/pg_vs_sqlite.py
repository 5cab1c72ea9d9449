"""One node on PostgreSQL beside the same node on SQLite, rounds alternating in one run.

    python bench/pg_vs_sqlite.py [--tree PATH ...] [--jobs 2000] [--rounds 3]

Each round is ``bench/cases/cluster.py``'s ``_throughput``: one real
``twistd scheduler`` (on a fresh PostgreSQL schema, or on SQLite), 4 real
workers of 1 slot, *jobs* ``true`` jobs posted, timed until all are
recorded as ended; jobs/s and the scheduler's CPU ms per job.  With
several ``--tree`` (source trees run through PYTHONPATH, e.g. main's and a
branch's), every tree runs each round, so their ratios compare too.
PostgreSQL is the tests' throwaway server (``tests/postgres_support``).
The machine is shared and noisy: read the ratios of medians, not either
value alone.  Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import psycopg

    from bench.cases.cluster import _throughput
    from bench.common import Runtime, log, median
    from tests.postgres_support import start_postgres

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, action="append", help="a source tree to run (default: this one)")
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    trees = [tree.resolve() for tree in args.tree or [Path(__file__).resolve().parent.parent]]

    scratch = Path(tempfile.mkdtemp(prefix="bench-pg-vs-sqlite-"))
    server, stop = start_postgres()
    samples: dict[str, dict[str, list[tuple[float, float]]]] = {
        str(tree): {"postgres": [], "sqlite": []} for tree in trees
    }
    try:
        for number in range(args.rounds):
            # Alternate which backend goes first, so neither always follows the other.
            order = ("postgres", "sqlite") if number % 2 == 0 else ("sqlite", "postgres")
            for index, tree in enumerate(trees):
                runtime = Runtime(python=sys.executable, workdir=scratch / f"{number}-{index}", tree=tree)
                runtime.workdir.mkdir(parents=True)
                for backend in order:
                    url = None
                    if backend == "postgres":
                        schema = f"round{number}_{index}"
                        with psycopg.connect(server.url(), autocommit=True) as conn:
                            conn.execute(f"CREATE SCHEMA {schema}")  # type: ignore[arg-type]
                        url = server.url(schema=schema)
                    rate, cpu = _throughput(runtime, url, args.jobs)
                    samples[str(tree)][backend].append((rate, cpu))
                    log(f"round {number + 1} {tree.name} {backend}: {rate:.0f} jobs/s, {cpu:.2f} ms CPU per job")
    finally:
        stop()
    report: dict[str, object] = {"jobs": args.jobs, "rounds": args.rounds, "trees": {}}
    for tree, found in samples.items():
        pg = median(rate for rate, _ in found["postgres"]) or 0.0
        lite = median(rate for rate, _ in found["sqlite"]) or 0.0
        ratios = [p / s for (p, _), (s, _) in zip(found["postgres"], found["sqlite"], strict=True)]
        report["trees"][tree] = {  # type: ignore[index]
            "postgres_jobs_s": pg,
            "sqlite_jobs_s": lite,
            "ratio_of_medians": pg / lite if lite else None,
            "ratio_per_round": ratios,
            "postgres_cpu_ms_per_job": median(cpu for _, cpu in found["postgres"]),
            "sqlite_cpu_ms_per_job": median(cpu for _, cpu in found["sqlite"]),
            "samples": found,
        }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
