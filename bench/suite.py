"""``make bench``: run the cases, print the table, write bench/results/latest.json.

Each case starts its own scheduler (and workers) in a scratch folder and
stops everything it started.  Peers (Celery on Redis, APScheduler) are
installed on first use into ``bench/.venv-peers``; ``--no-peers`` skips
them, so a run needs nothing beyond the project's test extras.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

from bench import peers
from bench.cases import (
    batch,
    cluster,
    fanout,
    herd,
    latency,
    long_run,
    many_tasks,
    many_workers,
    soak,
    throughput,
    wire,
)
from bench.common import BENCH, CaseResult, Figure, Runtime, log, machine, raise_fd_limit

CASES: dict[str, ModuleType] = {
    throughput.NAME: throughput,
    latency.NAME: latency,
    many_tasks.NAME: many_tasks,
    many_workers.NAME: many_workers,
    fanout.NAME: fanout,
    long_run.NAME: long_run,
    soak.NAME: soak,
    wire.NAME: wire,
    cluster.NAME: cluster,
    batch.NAME: batch,
    herd.NAME: herd,
}
# The cases that compare against a peer, and so need the peer venv.
NEEDS_PEERS = {
    throughput.NAME: ("celery", "redis"),
    batch.NAME: ("celery", "redis"),
    many_tasks.NAME: ("apscheduler",),
    herd.NAME: ("celery", "redis", "apscheduler"),
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (for the smoke test)")
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(CASES),
        metavar="CASE",
        help=f"run only this case (repeatable): {', '.join(CASES)}",
    )
    parser.add_argument("--no-peers", action="store_true", help="skip Celery, Redis and APScheduler")
    parser.add_argument(
        "--output", type=Path, default=BENCH / "results" / "latest.json", help="where the JSON goes"
    )
    parser.add_argument(
        "--tree",
        type=Path,
        help="run the scheduler and workers from this source tree (PYTHONPATH) instead of the installed package",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="record a py-spy flame graph of the scheduler during each case into DIR (py-spy goes into the peer venv)",
    )
    parser.add_argument(
        "--profile-format",
        choices=("flamegraph", "raw", "speedscope"),
        default="flamegraph",
        help="py-spy's output format (raw: collapsed stacks, for bench/profile_summary.py)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (logs, databases)")
    parser.add_argument(
        "--soak-seconds",
        type=float,
        help="how long the soak case measures, after its warm-up (default 120 s, 8 s with --quick)",
    )
    parser.add_argument(
        "--tasks",
        type=int,
        action="append",
        metavar="N",
        help="many_tasks: a tasks.db of N tasks (repeatable; default 100,000 and 1,000,000, 1,000 with --quick)",
    )
    return parser.parse_args(argv)


def _format(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".strip()


def table(results: list[CaseResult]) -> str:
    header = ("case", "figure", "ours", "peer", "peer's figure", "ratio", "target", "met")
    rows: list[tuple[str, ...]] = [header]
    for result in results:
        if result.error is not None:
            rows.append((result.case, "ERROR", result.error.splitlines()[-1][:60], "", "", "", "", ""))
            continue
        for figure in result.figures:
            rows.append(
                (
                    result.case,
                    figure.name,
                    _format(figure.value, figure.unit),
                    figure.peer or "",
                    _format(figure.peer_value, figure.peer_unit or figure.unit) if figure.peer else "",
                    f"{figure.ratio:.2f}x" if figure.ratio is not None else "",
                    figure.target or "",
                    {True: "yes", False: "NO", None: ""}[figure.met],
                )
            )
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = [" | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(lines)


def prepare(args: argparse.Namespace, selected: list[str], runtime: Runtime) -> None:
    wanted = {need for name in selected for need in NEEDS_PEERS.get(name, ())}
    extra: tuple[str, ...] = peers.PROFILER_PACKAGES if args.profile else ()
    if (runtime.peers and wanted) or extra:
        runtime.peer_python = peers.ensure_peer_venv(extra)
    if runtime.peers and "redis" in wanted:
        runtime.redis_server = peers.ensure_redis_server()
    if args.profile:
        runtime.profile_dir = args.profile.resolve()
        runtime.profile_format = args.profile_format
        runtime.py_spy = peers.PEER_VENV / "bin" / "py-spy"


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    selected = args.only or list(CASES)
    # 5,000 worker connections plus the scheduler's own files, with room.
    raise_fd_limit(20_000)
    scratch = Path(tempfile.mkdtemp(prefix="bench-"))
    runtime = Runtime(
        python=sys.executable,
        workdir=scratch,
        quick=args.quick,
        peers=not args.no_peers,
        tree=args.tree.resolve() if args.tree else None,
        soak_seconds=args.soak_seconds,
        task_counts=tuple(args.tasks or ()),
    )
    began = time.perf_counter()
    results: list[CaseResult] = []
    try:
        prepare(args, selected, runtime)
        for name in selected:
            log(f"case {name}{' (quick)' if args.quick else ''}")
            started = time.perf_counter()
            try:
                result = CASES[name].run(runtime)
            except Exception:
                result = CaseResult(name, error=traceback.format_exc())
                log(f"case {name} failed:\n{result.error}")
            result.seconds = time.perf_counter() - started
            results.append(result)
    finally:
        if args.keep:
            log(f"scratch folder kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)

    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "quick": args.quick,
        "peers": not args.no_peers,
        "tree": str(runtime.tree) if runtime.tree else None,
        "seconds": time.perf_counter() - began,
        "cases": {result.case: result.as_json() for result in results},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(table(results))
    print(f"\n{len(results)} case(s) in {report['seconds']:.0f} s; figures in {args.output}")
    print("ratio: how many times better ours is than the peer (above 1 = ours is better)")
    return 1 if any(result.error for result in results) else 0


__all__ = ["CASES", "Figure", "main", "table"]
