"""Case 3, many tasks: a tasks.db of 100,000 tasks, then one of a million, with a realistic mix of schedules.

Measured on a real scheduler started with that file: ``LOAD`` and ``LIST``
over TCP (the seed's way: send the line, half-close, read to the end), and
its resident memory; during each ``LOAD`` and ``LIST``, a probe sends
``PING`` on connections of its own, so a reactor turn that held it shows as
a slow ``PONG``: the slowest is the figure for the longest turn.  (Not the
lag histogram in ``/metrics``: with a series per task, a scrape of a
million tasks is itself a long turn.)  The ``LIST`` reply is counted as it
arrives, never joined into one string: decoding and splitting 100 MB in
this process held its GIL, and so the probe's thread: the slowest PING
read 260-330 ms where, counted this way, the same scheduler's was 64-80 ms.  Measured in-process (``bench/inproc_tasks.py``): a start-up load
of the file, and a quiet cron tick (``CronEngine.due()`` when nothing is
due).  Beside the 100,000: APScheduler 3 adding the same cron jobs to a
``BackgroundScheduler`` and starting it (not beside the million: that takes
it minutes and gigabytes).

The sizes: ``--tasks N`` (repeatable) on ``bench/run.py``; 100,000 and
1,000,000 by default, 1,000 with ``--quick``.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time

from bench.common import BENCH, STALL_TARGET, CaseResult, Figure, Runtime, Scheduler, log, median, tcp_command
from bench.taskgen import write_tasks

NAME = "many_tasks"
# What each size must meet (the targets): LOAD, resident memory.
TARGETS = {100_000: (1.0, 150.0), 1_000_000: (3.0, 400.0)}
# Beyond this many tasks the peer is left out (APScheduler at 1,000,000:
# minutes, and several GB).
PEER_UP_TO = 100_000


def sizes(runtime: Runtime) -> tuple[int, ...]:
    if runtime.task_counts:
        return runtime.task_counts
    return (1000,) if runtime.quick else (100_000, 1_000_000)


def run(runtime: Runtime) -> CaseResult:
    result = CaseResult(NAME)
    for count in sizes(runtime):
        one_size(runtime, result, count)
    return result


class PingProbe:
    """PING on a fresh connection every 10 ms while running: the reactor's responsiveness."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._stop = threading.Event()
        self.seconds: list[float] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            lines, seconds = tcp_command(self._port, "PING\n", timeout=60)
            if lines != ["PONG"]:
                raise RuntimeError(f"PING answered {lines[:3]}")
            self.seconds.append(seconds)
            self._stop.wait(0.01)

    def stop(self) -> list[float]:
        self._stop.set()
        self._thread.join(timeout=60)
        return self.seconds


def read_listing(port: int, timeout: float = 600) -> tuple[int, str, float]:
    """``LIST``: (lines in the reply, its last line, seconds), counted as the
    bytes come, so this process never holds the GIL for long (see above)."""
    started = time.perf_counter()
    lines = 0
    tail = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"LIST\n")
        sock.shutdown(socket.SHUT_WR)
        while chunk := sock.recv(1 << 20):
            lines += chunk.count(b"\n")
            tail = (tail + chunk)[-200:]
    elapsed = time.perf_counter() - started
    if not tail.endswith(b"\n"):
        lines += 1
    return lines, tail.rstrip(b"\n").rpartition(b"\n")[2].decode(), elapsed


def settle(port: int, quick: float = STALL_TARGET, timeout: float = 120.0) -> list[float]:
    """PING until three in a row answer within *quick* seconds: the
    scheduler is done with its start-up turns.  The PINGs' seconds."""
    seconds: list[float] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not (len(seconds) >= 3 and max(seconds[-3:]) < quick):
        lines, took = tcp_command(port, "PING\n", timeout=timeout)
        if lines != ["PONG"]:
            raise RuntimeError(f"PING answered {lines[:3]}")
        seconds.append(took)
        time.sleep(0.01)
    return seconds


def one_size(runtime: Runtime, result: CaseResult, count: int) -> None:
    big = count >= 1_000_000
    suffix = "" if count == 100_000 else f" ({count:,} tasks)"
    loads = 2 if runtime.quick else 3 if big else 5
    lists = 2 if runtime.quick else 3
    folder = runtime.scratch(f"{NAME}-{count}")
    tasks_file = folder / "tasks.db"
    started = time.perf_counter()
    exprs = write_tasks(tasks_file, count)
    details: dict[str, object] = {
        "tasks": count,
        "distinct_schedules": len(set(exprs)),
        "file_bytes": tasks_file.stat().st_size,
        "write_seconds": time.perf_counter() - started,
    }
    del exprs

    # A copy for the in-process and APScheduler runs: LOAD must not see them write.
    spare = folder / "tasks-copy.db"
    spare.write_bytes(tasks_file.read_bytes())

    # Maintenance on: every few minutes a fifth of the tasks are due, and
    # with no worker their jobs would pile up in the queue and the job
    # store, in the memory measured here.  The fires are still handed out
    # (and dropped).
    (folder / "maintenance.json").write_text(json.dumps({"on": True, "since": None, "by": "bench"}))
    load_seconds: list[float] = []
    # The scheduler's own CPU for each LOAD (/proc): what a LOAD costs
    # whatever else the machine is doing.
    load_cpu: list[float] = []
    list_seconds: list[float] = []
    # The probe's PINGs during the LOADs, and during the LISTs.
    load_pings: list[float] = []
    pings: list[float] = []
    scheduler = Scheduler(runtime, folder)
    try:
        details["scheduler_start_seconds"] = scheduler.startup_seconds
        # The turns right after start-up (the alert watch arms every task)
        # are not a LOAD's: measured apart, and waited out.
        settle_pings = settle(scheduler.tcp)
        details["rss_kib_after_start"] = scheduler.rss_kib()
        scheduler.profile(f"{NAME}-{count}-load")
        for _ in range(loads):
            cpu_before = scheduler.cpu_seconds()
            probe = PingProbe(scheduler.tcp)
            lines, seconds = tcp_command(scheduler.tcp, "LOAD\n", timeout=600)
            load_pings.extend(probe.stop())
            if lines != [f"OK loaded {count} tasks"]:
                raise RuntimeError(f"LOAD answered {lines[:3]}")
            load_seconds.append(seconds)
            load_cpu.append(scheduler.cpu_seconds() - cpu_before)
        scheduler.end_profile()
        # The trim after a load runs on the turn after its reply.
        time.sleep(0.5)
        rss_after_load = scheduler.rss_kib()
        scheduler.profile(f"{NAME}-{count}-list")
        for _ in range(lists):
            probe = PingProbe(scheduler.tcp)
            listed, last, seconds = read_listing(scheduler.tcp)
            pings.extend(probe.stop())
            if listed != count + 1 or last != f"OK {count} tasks":
                raise RuntimeError(f"LIST answered {listed} lines, last {last!r}")
            list_seconds.append(seconds)
        scheduler.end_profile()
        details["rss_kib_after_list"] = scheduler.rss_kib()
    finally:
        scheduler.stop()

    inproc = json.loads(
        subprocess.run(
            [runtime.python, str(BENCH / "inproc_tasks.py"), str(spare), "--loads", "1" if big else "3",
             "--ticks", "2000" if runtime.quick else "20000"],
            env=runtime.env(),
            cwd=folder,
            check=True,
            capture_output=True,
            timeout=900,
        ).stdout
    )

    aps: dict[str, float] | None = None
    if runtime.peers and count <= PEER_UP_TO:
        assert runtime.peer_python is not None
        log(f"APScheduler 3: adding {count} cron jobs (about 30 s for 100,000)")
        aps = json.loads(
            subprocess.run(
                [str(runtime.peer_python), str(BENCH / "peer_apscheduler.py"), str(spare)],
                cwd=folder,
                check=True,
                capture_output=True,
                timeout=600,
            ).stdout
        )
    spare.unlink()
    tasks_file.unlink()

    load_target, rss_target = TARGETS.get(count, (None, None))
    load = median(load_seconds)
    assert load is not None
    peer = "APScheduler 3, add + start" if aps else None
    result.add(
        Figure(
            "LOAD over TCP" + suffix,
            load,
            "s",
            peer=peer,
            peer_value=aps["seconds"] if aps else None,
            ratio=aps["seconds"] / load if aps else None,
            target=f"< {load_target:g} s" if load_target else None,
            met=load < load_target if load_target else None,
            samples=load_seconds,
        )
    )
    cpu = median(load_cpu)
    assert cpu is not None
    result.add(Figure("LOAD, scheduler CPU" + suffix, cpu, "s", samples=load_cpu))
    rss_mb = rss_after_load * 1024 / 1e6
    result.add(
        Figure(
            "resident memory after LOAD" + suffix,
            rss_mb,
            "MB",
            peer="APScheduler 3, RSS" if aps else None,
            peer_value=aps["rss_kib"] * 1024 / 1e6 if aps else None,
            ratio=aps["rss_kib"] / rss_after_load if aps else None,
            target=f"< {rss_target:g} MB" if rss_target else None,
            met=rss_mb < rss_target if rss_target else None,
        )
    )
    tick = median(inproc["quiet_tick_seconds"])
    assert tick is not None
    result.add(
        Figure(
            "quiet tick, CronEngine.due()" + suffix,
            tick * 1e6,
            "us",
            target="< 1 ms",
            met=tick < 1e-3,
            samples=[value * 1e6 for value in inproc["quiet_tick_seconds"]],
        )
    )
    startup = median(inproc["load_seconds"])
    assert startup is not None
    result.add(Figure("start-up load, in-process" + suffix, startup, "s", samples=inproc["load_seconds"]))
    listing = median(list_seconds)
    assert listing is not None
    result.add(Figure("LIST over TCP" + suffix, listing, "s", samples=list_seconds))
    result.add(
        Figure(
            "PING just after start-up, slowest" + suffix,
            max(settle_pings) * 1e3,
            "ms",
            samples=[value * 1e3 for value in settle_pings],
        )
    )
    for what, seconds_each in (("LIST", pings), ("LOAD", load_pings)):
        if seconds_each:
            # The longest reactor turn meanwhile, give or take a PING's own time.
            result.add(
                Figure(
                    f"PING during {what}, slowest" + suffix,
                    max(seconds_each) * 1e3,
                    "ms",
                    target=f"< {STALL_TARGET * 1e3:g} ms",
                    met=max(seconds_each) < STALL_TARGET,
                    samples=[value * 1e3 for value in seconds_each],
                )
            )
    details.update(inproc=inproc, apscheduler=aps, pings=len(pings), load_pings=len(load_pings))
    result.details[str(count)] = details
