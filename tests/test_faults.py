"""Nothing is lost under faults: real ``twistd`` processes, killed and frozen.

- kill -9 of the scheduler while it rewrites a tasks.db of 100,000 tasks,
  many times over: the file is always the old one or the new one, holds
  every acknowledged change, and loads again;
- a broken tasks.db stops start-up (and LOAD) with its name and line, and
  is left byte for byte as it was;
- a worker frozen with SIGSTOP mid-job: its job is lost and retried on
  another worker, and its late report changes nothing;
- kill -9 of the scheduler while jobs run and tasks are due: no scheduled
  time runs twice, and the missed-run policies cover exactly the downtime;
- 200 workers reconnecting after a scheduler restart spread out and all
  come back.

Waits are on observable events (``wait_until``); the only sleeps are the
random delays before a kill and a deliberate downtime, which are the point.
"""

from __future__ import annotations

import json
import random
import select
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from scheduler.service import SchedulerService
from tests.e2e import (
    SCHEDULER_ON_ANY_PORTS,
    TWISTD,
    Scheduler,
    http_json,
    start_scheduler,
    start_worker,
    stop,
    wait_until,
)

TASKS = 100_000


def _help() -> str:
    done = subprocess.run([*TWISTD, "scheduler", "--help"], capture_output=True, timeout=60)
    return done.stdout.decode()


def _needs_options(*names: str) -> None:
    missing = [name for name in names if f"--{name}=" not in _help()]
    if missing:
        pytest.skip(f"twistd scheduler has no {', '.join('--' + n for n in missing)} yet")


# -- 1. kill -9 while writing 100,000 tasks -----------------------------------------


def _far_month() -> int:
    """The month six months from now, so no seed task fires during the test."""
    return (datetime.now(UTC).month + 5) % 12 + 1


def _seed_file(path: Path) -> None:
    month = _far_month()
    schedules = [
        f"0 4 9 {month} *",
        f"*/15 3 * {month} *",
        f"0 9 * {month} MON-FRI",
        f"30 2 1 {month} *",
        f"0 0 * {month} * 30",
        f"5,35 1-3 10-20 {month} *",
        f"0 12 1-7 {month} SUN",
    ]
    with path.open("w", encoding="utf-8") as handle:
        for number in range(1, TASKS + 1):
            record = {
                "schedule": schedules[number % len(schedules)],
                "command": f"echo seed {number} >> /tmp/never-run",
                "jobName": f"task_{number}",
            }
            handle.write(json.dumps(record) + "\n")


def _read_tasks_file(path: Path) -> list[str]:
    """Every line must be a whole seed-format record; returns the jobNames in order."""
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), f"{path} ends in a torn line: {data[-80:]!r}"
    lines = data.split(b"\n")[:-1]
    try:
        # One parse of the whole file is much faster than 100,000 small ones ...
        records = json.loads(b"[" + b",".join(lines) + b"]")
        assert len(records) == len(lines)
    except (ValueError, AssertionError):
        records = []
        for number, raw in enumerate(lines, start=1):
            # ... which find the broken line.
            assert raw.strip(), f"{path}, line {number} is empty"
            try:
                records.append(json.loads(raw))
            except ValueError as error:
                raise AssertionError(f"{path}, line {number}: {error}: {raw[:80]!r}") from None
    names = []
    for number, record in enumerate(records, start=1):
        assert isinstance(record, dict), f"line {number}: {record!r:.80}"
        for key in ("schedule", "command", "jobName"):
            assert isinstance(record.get(key), str), f"line {number} lacks {key}: {record!r:.80}"
        names.append(record["jobName"])
    assert len(set(names)) == len(names), "a jobName appears twice"
    return names


def _task_count(scheduler: Scheduler) -> int:
    (status,) = scheduler.command("STATUS\n")
    assert status.startswith("OK tasks="), status
    return int(status.split()[1].split("=")[1])


class Round:
    """One batch of commands on one connection, and what each does to the file."""

    def __init__(self, rng: random.Random, names: list[str]) -> None:
        self.start = set(names)
        high_water = max(int(name.split("_")[1]) for name in names) if names else 0
        existing = list(names)
        self.ops: list[tuple[str, str]] = []  # (command line, the jobName it adds or removes)
        added: list[str] = []
        month = _far_month()
        for _ in range(rng.randint(4, 24)):
            roll = rng.random()
            if roll < 0.08 and existing:
                name = existing.pop(rng.randrange(len(existing)))
                self.ops.append((f"REMOVE {name}", name))
            elif roll < 0.12 and added:
                name = added.pop(rng.randrange(len(added)))
                self.ops.append((f"REMOVE {name[5:]}", name))
            elif roll < 0.14:
                self.ops.append(("REMOVE task_0", "task_0"))
            else:
                high_water += 1
                name = f"task_{high_water}"
                added.append(name)
                line = f"ADD {rng.randint(0, 59)} {rng.randint(0, 23)} * {month} * echo added {high_water}"
                self.ops.append((line, name))
        if rng.random() < 0.12:
            self.ops.insert(rng.randrange(len(self.ops)), ("LOAD", ""))
        if rng.random() < 0.08:
            self.ops.insert(rng.randrange(len(self.ops)), ("CLEAR", ""))

    def replay(self) -> Iterator[tuple[int, set[str], str]]:
        """For every prefix: commands applied, the task set then, and the last one's reply.

        The reply is what the reply line must start with.
        """
        current = set(self.start)
        yield 0, current, ""
        for done, (line, name) in enumerate(self.ops, start=1):
            count = len(current)
            plural = "" if count == 1 else "s"
            if line == "CLEAR":
                reply = f"OK cleared {count} task{plural}"
                current.clear()
            elif line == "LOAD":
                reply = f"OK loaded {count} task{plural}"
            elif line.startswith("ADD"):
                reply = f"OK id={name[5:]} jobName={name} next="
                current.add(name)
            elif name in current:
                reply = f"OK removed id={name[5:]} jobName={name}"
                current.discard(name)
            else:
                reply = f"ERR no task with id or jobName '{line.split()[1]}'"
            yield done, current, reply


def _poll(check: Any, timeout: float) -> bool:
    """Like wait_until, at a millisecond pace: a write lasts only tens of them."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def _run_round(scheduler: Scheduler, plan: Round, rng: random.Random, aim: bool) -> tuple[int, bool, str]:
    """Send the batch, SIGKILL at a random moment; (replies received, killed mid-write, when).

    The moment is after a random number of replies, plus a random delay;
    when *aim*, it is a random delay after the next write's temporary file
    appears, so some kills surely land mid-write.
    """
    process = scheduler.process

    def writing() -> bool:
        # Temp files have random names; start-up removed any a kill left.
        return any(scheduler.workdir.glob(".tasks.db.*.tmp"))

    wanted = rng.randint(0, len(plan.ops) - 1 if aim else len(plan.ops))
    if aim:
        delay = rng.uniform(0, 0.005)  # a write of 100,000 tasks keeps its temporary file 5-30 ms
    elif wanted == 0:
        delay = rng.uniform(0, 2.0)  # the first write also formats every line: slow
    else:
        delay = rng.uniform(0, 0.15)
    sock = socket.create_connection(("127.0.0.1", scheduler.tcp), timeout=30)
    try:
        sock.sendall(b"SESSION\n" + b"".join(line.encode() + b"\n" for line, _ in plan.ops))
        data = b""
        while data.count(b"\n") < wanted + 1:  # +1: the SESSION reply
            chunk = sock.recv(65536)
            assert chunk, "the scheduler closed the connection"
            data += chunk
        if aim:
            _poll(writing, 3)  # unless only LOAD or a failing REMOVE is left
        time.sleep(delay)  # the random moment of the kill
        process.send_signal(signal.SIGKILL)
        process.wait()
        mid_write = writing()
        # Replies already on their way were sent before the kill: they count.
        sock.settimeout(5)
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except OSError:
            pass
    finally:
        sock.close()
    replies = data.split(b"\n")[:-1]  # a torn last reply is not an acknowledgement
    assert replies[0].startswith(b"OK session")
    replies = replies[1:]
    assert len(replies) <= len(plan.ops)
    expected = [reply for done, _, reply in plan.replay() if done]
    for reply, (line, _), wanted_reply in zip(replies, plan.ops, expected, strict=False):
        assert reply.decode().startswith(wanted_reply), (line, reply)
    when = f"{'temp file + ' if aim else ''}{wanted} replies + {delay * 1000:.0f} ms"
    return len(replies), mid_write, when


def _kill_rounds(work: Path, base: Path, seed: int, rounds: int, deadline: float) -> list[str]:
    """One chain of kill -9 rounds on one tasks.db; returns a line per round.

    Runs *rounds* rounds, or stops after at least ``MIN_ROUNDS`` once the
    *deadline* (``time.monotonic()``) has passed, on a busy machine.
    """
    rng = random.Random(seed)
    work.mkdir()
    tasks_file = work / "tasks.db"
    tasks_file.write_bytes(base.read_bytes())
    names = _read_tasks_file(tasks_file)
    report: list[str] = []
    scheduler: Scheduler | None = None
    try:
        for number in range(rounds):
            if number >= MIN_ROUNDS and time.monotonic() > deadline:
                break
            scheduler = start_scheduler(work, "--timezone", "UTC", "--tcp-idle-timeout", "600")
            # The restart loads what the previous kill left.
            assert _task_count(scheduler) == len(names)
            if len(names) < TASKS // 2:
                # A CLEAR went through last time: back to 100,000 tasks to write,
                # and no job history: it names the ids the last rounds added,
                # which a restart never gives out again (Round counts from the file).
                stop(scheduler.process, signal.SIGKILL)
                tasks_file.write_bytes(base.read_bytes())
                for history in work.glob("jobs.sqlite*"):
                    history.unlink()
                names = _read_tasks_file(tasks_file)
                scheduler = start_scheduler(work, "--timezone", "UTC", "--tcp-idle-timeout", "600")
            plan = Round(rng, names)
            acknowledged, mid_write, when = _run_round(scheduler, plan, rng, aim=number % 2 == 1)
            names = _read_tasks_file(tasks_file)
            on_disk = set(names)
            matches = [done for done, state, _ in plan.replay() if done >= acknowledged and state == on_disk]
            assert matches, (
                f"{work.name} round {number}: tasks.db ({len(on_disk)} tasks) is not the state after any"
                f" write at or after the {acknowledged} acknowledged commands of {len(plan.ops)}"
            )
            extra = "".join(f" ({line} at {at + 1})" for at, (line, _) in enumerate(plan.ops) if line in ("LOAD", "CLEAR"))
            report.append(
                f"{work.name} round {number}: {len(plan.ops)} commands{extra}, {acknowledged} acknowledged,"
                f" killed at {when}{' MID-WRITE' if mid_write else ''}; the file is the state after {matches[0]}"
            )
        # The last kill's file loads too.
        scheduler = start_scheduler(work, "--timezone", "UTC")
        assert _task_count(scheduler) == len(names)
    finally:
        if scheduler is not None:
            stop(scheduler.process, signal.SIGKILL)
    return report


# Each round costs a start-up on 100,000 tasks and their first full write
# (some 4 CPU-seconds), so two chains run side by side, 8 rounds each, or
# at least MIN_ROUNDS each when the machine is too busy to finish in time.
ROUNDS = 8
MIN_ROUNDS = 5
BUDGET = 50.0


def test_kill_9_while_writing_100k_tasks_loses_nothing(tmp_path: Path) -> None:
    """SIGKILL at random moments of a batch of ADD/REMOVE (and LOAD, CLEAR) on 100,000 tasks.

    After each kill: every line of tasks.db is a whole seed-format record;
    the file is exactly the task set after some prefix of the batch that
    includes every acknowledged command (so it holds every acknowledged ADD
    and no acknowledged REMOVE); and the next start-up loads all of it.
    Every other round aims at a write (a moment after its temporary file
    appears); a kill counts as mid-write when that file outlives the process.
    """
    from concurrent.futures import ThreadPoolExecutor

    base = tmp_path / "base.db"
    _seed_file(base)
    began = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        chains = [
            pool.submit(_kill_rounds, tmp_path / f"chain{seed}", base, seed, ROUNDS, began + BUDGET)
            for seed in (1, 2)
        ]
        report = [line for chain in chains for line in chain.result()]
    hits = sum("MID-WRITE" in line for line in report)
    print("\n".join(report))
    print(f"{len(report)} kill rounds in {time.monotonic() - began:.1f}s; {hits} landed mid-write")
    assert hits, "no kill landed while the temporary file existed"


# -- 2. a broken tasks.db -------------------------------------------------------------


def _good_line(number: int) -> bytes:
    record = {"schedule": "*/5 * * * *", "command": f"echo good {number}", "jobName": f"task_{number}"}
    return json.dumps(record).encode() + b"\n"


def _broken(line_number: int, bad: bytes, total: int = 6) -> bytes:
    """*total* lines with *bad* (no newline added) as line *line_number*."""
    lines = [_good_line(number) for number in range(1, total + 1)]
    lines[line_number - 1] = bad
    return b"".join(lines)


BROKEN_FILES = {
    # A crash mid-write without the atomic rename: the last line cut short.
    "torn last line": (6, _broken(6, b'{"schedule": "*/5 * * * *", "command": "ech'), "not valid JSON"),
    "torn last line after its brace": (6, _broken(6, b'{"schedule": "*/5 * * * *", "command": "e", "jobName": "task_6"'), "not valid JSON"),
    "garbage in the middle": (3, _broken(3, b"}{ not json at all\n"), "not valid JSON"),
    "zeros in the middle": (4, _broken(4, b"\x00" * 64 + b"\n"), "not valid JSON"),
    "not UTF-8": (2, _broken(2, b'{"schedule": "@daily", "command": "caf\xe9", "jobName": "task_2"}\n'), "not UTF-8"),
    "missing key": (3, _broken(3, b'{"schedule": "@daily", "jobName": "task_3"}\n'), "missing key 'command'"),
    "bad schedule": (5, _broken(5, b'{"schedule": "61 * * * *", "command": "x", "jobName": "task_5"}\n'), "minute must be 0-59"),
    "not an object": (2, _broken(2, b'["@daily", "x", "task_2"]\n'), "expected a JSON object"),
}


def test_a_broken_tasks_file_stops_startup_and_is_left_alone(tmp_path: Path) -> None:
    """Each broken file: exit != 0, an error naming the file and line, the file untouched."""
    runs = {}
    for name, (_, content, _) in BROKEN_FILES.items():
        folder = tmp_path / name.replace(" ", "-")
        folder.mkdir()
        (folder / "tasks.db").write_bytes(content)
        runs[name] = subprocess.Popen(
            SCHEDULER_ON_ANY_PORTS,
            cwd=folder,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
    for name, process in runs.items():
        line, content, reason = BROKEN_FILES[name]
        try:
            output = process.communicate(timeout=60)[0].decode(errors="replace")
        finally:
            stop(process, signal.SIGKILL)
        folder = tmp_path / name.replace(" ", "-")
        assert process.returncode != 0, f"{name}: the scheduler started on a broken file"
        message = output[output.find(f"{folder / 'tasks.db'}, line {line}: ") :].split("\n", 1)[0]
        assert message and reason in message, (name, output[-2000:])
        assert "Traceback" not in output, (name, output[-2000:])
        assert (folder / "tasks.db").read_bytes() == content, f"{name}: the file was changed"


def test_load_of_a_broken_tasks_file_changes_nothing(tmp_path: Path) -> None:
    good = b"".join(_good_line(number) for number in range(1, 4))
    tasks_file = tmp_path / "tasks.db"
    tasks_file.write_bytes(good)
    scheduler = start_scheduler(tmp_path, "--timezone", "UTC")
    try:
        listed = scheduler.command("LIST\n")
        assert listed[-1] == "OK 3 tasks"
        for name, (line, content, reason) in BROKEN_FILES.items():
            tasks_file.write_bytes(content)
            (reply,) = scheduler.command("LOAD\n")
            # The reply names the file, not the server's folder.
            assert reply.startswith(f"ERR tasks.db, line {line}: ") and reason in reply, (name, reply)
            assert scheduler.command("LIST\n") == listed, name
            assert tasks_file.read_bytes() == content, f"{name}: LOAD changed the file"
    finally:
        stop(scheduler.process)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        pytest.param(b"[" * 100_000 + b"\n", "not valid JSON", id="nested-100000-deep"),
        pytest.param(
            json.dumps({"schedule": "9" * 5000 + " * * * *", "command": "x", "jobName": "task_2"}).encode() + b"\n",
            "minute must be 0-59",
            id="5000-digit-minute",
        ),
    ],
)
def test_a_pathological_line_stops_startup_with_its_line_number(tmp_path: Path, line: bytes, reason: str) -> None:
    content = _good_line(1) + line + _good_line(3)
    (tmp_path / "tasks.db").write_bytes(content)
    done = subprocess.run(
        SCHEDULER_ON_ANY_PORTS,
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
    )
    output = (done.stdout + done.stderr).decode(errors="replace")
    assert (tmp_path / "tasks.db").read_bytes() == content
    assert done.returncode != 0
    assert "Traceback" not in output, output[-1500:]
    assert "tasks.db, line 2: " in output and reason in output, output[-1500:]


# -- 3. a worker frozen mid-job ----------------------------------------------------------


class Api:
    def __init__(self, scheduler: Scheduler) -> None:
        self.url = scheduler.url

    def call(self, method: str, path: str, body: object = None) -> Any:
        code, answer = http_json(method, self.url + path, body)
        assert 200 <= code < 300, (method, path, code, answer)
        return answer

    def online(self) -> list[str]:
        return [worker["name"] for worker in self.call("GET", "/api/workers")]

    def job(self, job_id: int) -> dict[str, Any]:
        job: dict[str, Any] = self.call("GET", f"/api/jobs/{job_id}")
        return job

    def jobs(self, task: int | None = None) -> list[dict[str, Any]]:
        query = "limit=1000" + ("" if task is None else f"&task={task}")
        jobs: list[dict[str, Any]] = self.call("GET", f"/api/jobs?{query}")
        return jobs

    def final(self, job_id: int, timeout: float = 30.0) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            job = self.job(job_id)
            return job if job["status"] not in ("queued", "running") else None

        return wait_until(done, timeout, f"job {job_id} to end")


def test_a_frozen_worker_loses_its_job_and_its_late_report_changes_nothing(tmp_path: Path) -> None:
    """SIGSTOP past the ping timeout: lost, retried on w2; after SIGCONT, w1's report is dropped."""
    _needs_options("ping-interval", "ping-timeout", "lost-after")
    scheduler = start_scheduler(tmp_path, "--ping-interval", "1", "--ping-timeout", "1", "--lost-after", "2")
    workers: list[subprocess.Popen[bytes]] = []
    try:
        api = Api(scheduler)
        # The job sleeps as long as its worker's folder says: long on w1, not at all on w2.
        for name, delay in (("w1", "30"), ("w2", "0")):
            (tmp_path / name).mkdir()
            (tmp_path / name / "delay").write_text(delay)
        frozen = start_worker(scheduler.http, "w1", workdir=tmp_path / "w1")
        workers.append(frozen)
        wait_until(lambda: "w1" in api.online(), what="w1 to connect")
        task = api.call(
            "POST",
            "/api/tasks",
            {"schedule": "@yearly", "command": "sleep $(cat delay); echo done", "retries": 1, "retryDelay": 0},
        )
        first = api.call("POST", f"/api/tasks/{task['id']}/run")
        wait_until(lambda: api.job(first["id"])["startedAt"], what="the job to start on w1")
        assert api.job(first["id"])["worker"] == "w1"
        workers.append(start_worker(scheduler.http, "w2", workdir=tmp_path / "w2"))
        wait_until(lambda: "w2" in api.online(), what="w2 to connect")

        frozen.send_signal(signal.SIGSTOP)
        # Its TCP connection stays up (the kernel still answers): only the pings can tell.
        lost = api.final(first["id"])
        assert lost["status"] == "lost", lost
        assert "w1" not in api.online()
        retry = wait_until(lambda: [job for job in api.jobs(task["id"]) if job["attempt"] == 2], what="the retry")[0]
        retried = api.final(retry["id"])
        assert retried["status"] == "succeeded" and retried["worker"] == "w2", retried

        frozen.send_signal(signal.SIGCONT)
        # It reconnects and reports the old job (still running) in its hello; the welcome drops it.
        wait_until(lambda: "w1" in api.online(), what="w1 to come back")
        log = tmp_path / "w1" / "worker-w1.log"
        wait_until(lambda: "dropping 1" in log.read_text(), what="w1's report of the old job to be answered")
        assert api.job(first["id"])["status"] == "lost"
        jobs = sorted(api.jobs(), key=lambda job: job["id"])
        assert [(job["id"], job["attempt"], job["status"], job["worker"]) for job in jobs] == [
            (first["id"], 1, "lost", "w1"),
            (retry["id"], 2, "succeeded", "w2"),
        ]
        assert next(worker for worker in api.call("GET", "/api/workers") if worker["name"] == "w1")["running"] == 0
    finally:
        for process in workers:
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
            stop(process)
        stop(scheduler.process)


# -- 4. kill -9 of the scheduler while jobs run and tasks are due ------------------------


def _epoch(iso: str | None) -> float:
    assert iso is not None
    return datetime.fromisoformat(iso).timestamp()


def test_kill_9_of_the_scheduler_runs_each_scheduled_time_at_most_once(tmp_path: Path) -> None:
    """Every second, missed "skip"; a sparse schedule with missed "once"; and with "all" (cap 3).

    The sparse schedule fires at T0 (before the kill) and at T0+3 ... T0+6
    (during the downtime), then not for a minute.  The boundaries:

    - A time the old process fired is <= the kill plus the ticker's lead
      (a second's jobs are recorded that much ahead of it); whether its job
      reached the job database first is a race.  So the last *recorded*
      time is read back (the latest scheduledAt <= kill + lead), and the
      downtime's missed times are the sparse times after it, up to the
      restart.
    - The new process starts its cron engine at some moment in (launch,
      ready] and applies the missed policies at a later one, still <=
      ready.  No sparse time lies in (launch, ready] (checked), so "once"
      must run exactly the last missed time and "all" the last three.
    - "skip" must have no job for a time in (kill + lead, launch]; what the new
      engine fires after it starts is ordinary.
    - No (task, scheduledAt) may have two jobs, whatever the timing.
    """
    scheduler = start_scheduler(tmp_path, "--timezone", "UTC")
    worker: subprocess.Popen[bytes] | None = None
    try:
        api = Api(scheduler)
        worker = start_worker(scheduler.http, "w1", "--slots", "20", workdir=tmp_path)
        wait_until(lambda: "w1" in api.online(), what="w1 to connect")
        t0 = int(time.time()) + 4
        sparse = [t0, t0 + 3, t0 + 4, t0 + 5, t0 + 6]
        seconds = ",".join(str(second) for second in sorted({moment % 60 for moment in sparse}))
        every = api.call("POST", "/api/tasks", {"schedule": "* * * * * *", "command": "sleep 2"})
        once = api.call("POST", "/api/tasks", {"schedule": f"* * * * * {seconds}", "command": "true", "missed": "once"})
        every_missed = api.call(
            "POST", "/api/tasks", {"schedule": f"* * * * * {seconds}", "command": "true", "missed": "all", "missedCap": 3}
        )
        sparse_tasks = (once["id"], every_missed["id"])
        # Before the kill: the sparse tasks have run (so the scheduler knows their last time) and jobs are running.
        wait_until(lambda: all(api.jobs(task) for task in sparse_tasks), 15, "the sparse tasks to fire")
        wait_until(
            lambda: any(job["status"] == "running" for job in api.jobs(every["id"])), 15, "a running job"
        )
        killed_at = time.time()
        fired_by = killed_at + SchedulerService.FIRE_LEAD  # the latest second the old process could fire
        scheduler.process.send_signal(signal.SIGKILL)
        scheduler.process.wait()
        # The downtime: until every sparse time has passed.
        time.sleep(max(0.0, t0 + 6.5 - time.time()))
        launched_at = time.time()
        scheduler = start_scheduler(tmp_path, "--timezone", "UTC", ports=(scheduler.tcp, scheduler.http))
        ready_at = time.time()
        assert sparse[-1] < launched_at and ready_at < t0 + 50, "no sparse time may fall during the start-up"

        # Everything from before the kill ends (the worker reconnects with its results).
        wait_until(lambda: "w1" in api.online(), 40, "w1 to reconnect")
        wait_until(
            lambda: all(
                job["status"] not in ("queued", "running")
                for task in (every["id"], *sparse_tasks)
                for job in api.jobs(task)
                if _epoch(job["scheduledAt"]) <= fired_by
            ),
            40,
            "the jobs from before the kill to end",
        )
        # The every-second task runs again after the restart.
        wait_until(
            lambda: any(_epoch(job["scheduledAt"]) > ready_at for job in api.jobs(every["id"])), 15, "new fires"
        )

        listed_jobs = {task: api.jobs(task) for task in (every["id"], *sparse_tasks)}
        for task, listed in listed_jobs.items():
            keys = [job["scheduledAt"] for job in listed]
            assert len(keys) == len(set(keys)), f"task {task}: a scheduled time ran twice: {sorted(keys)}"
            # Times the missed policy did not run are recorded as missed, and
            # only times from the downtime (which lasts until the new process
            # is up, a little after its launch).
            for job in listed:
                if job["status"] == "missed":
                    assert fired_by < _epoch(job["scheduledAt"]) <= ready_at, (task, job)
        # What ran, from here on.
        jobs = {task: [job for job in listed if job["status"] != "missed"] for task, listed in listed_jobs.items()}
        downtime = [
            job["scheduledAt"]
            for job in jobs[every["id"]]
            if fired_by < _epoch(job["scheduledAt"]) <= launched_at
        ]
        assert downtime == [], f"missed=skip ran times from the downtime: {downtime}"
        for task, keep in ((once["id"], 1), (every_missed["id"], 3)):
            times = sorted(_epoch(job["scheduledAt"]) for job in jobs[task])
            recorded = max(moment for moment in times if moment <= fired_by)
            missed = [moment for moment in sparse if recorded < moment <= launched_at]
            assert len(missed) >= 2, f"the kill came too late to test anything ({recorded=} {killed_at=})"
            caught_up = [moment for moment in times if moment > recorded]
            assert caught_up == missed[-keep:], (task, caught_up, missed)
            # And those runs happen.
            for job in jobs[task]:
                if _epoch(job["scheduledAt"]) > recorded:
                    assert api.final(job["id"])["status"] == "succeeded"
    finally:
        if worker is not None:
            stop(worker)
        stop(scheduler.process)


# -- 5. 200 workers reconnecting after a restart -----------------------------------------

CROWD = '''"""200 worker agents in one process: the real WorkerAgent, Backoff and ClientService.

Prints "all welcomed" once every agent has had its first welcome, and
{name: [welcome times]} as JSON when its stdin closes.
"""
import json
import sys
import time

from twisted.application.internet import ClientService
from twisted.internet import reactor, stdio
from twisted.internet.protocol import Protocol

from worker.agent import WorkerAgent, job_runs
from worker.backoff import Backoff
from worker.connection import WorkerClientFactory
from worker.service import WorkerService
from worker.tap import endpoint_for

port, count, workdir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
url = f"ws://127.0.0.1:{port}/ws/worker"
welcomes = {}


def worker(name):
    # As worker.tap.makeService, with the welcome also noted down.
    backoff = Backoff()

    def welcomed():
        backoff.reset()
        welcomes.setdefault(name, []).append(time.time())
        if len(welcomes) == count and sum(map(len, welcomes.values())) == count:
            sys.stdout.write("all welcomed\\n")
            sys.stdout.flush()

    agent = WorkerAgent(reactor, job_runs(reactor), name=name, slots=1, workdir=workdir, on_welcome=welcomed)
    factory = WorkerClientFactory(agent, url, reactor=reactor)
    endpoint = endpoint_for(reactor, secure=False, host="127.0.0.1", port=port)
    return WorkerService(agent, ClientService(endpoint, factory, retryPolicy=backoff, clock=reactor))


class Stdin(Protocol):
    def connectionLost(self, reason=None):
        sys.stdout.write(json.dumps(welcomes) + "\\n")
        sys.stdout.flush()
        reactor.stop()


for number in range(count):
    worker(f"crowd-{number:03d}").startService()
stdio.StandardIO(Stdin())
reactor.run()
'''


def test_200_workers_come_back_spread_out_after_a_restart(tmp_path: Path) -> None:
    scheduler = start_scheduler(tmp_path)
    script = tmp_path / "crowd.py"
    script.write_text(CROWD)
    with (tmp_path / "crowd.log").open("wb") as log:
        crowd = subprocess.Popen(
            [sys.executable, str(script), str(scheduler.http), "200", str(tmp_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
        )
    try:
        api = Api(scheduler)
        wait_until(lambda: len(api.online()) == 200, 60, "200 workers to connect")
        # The scheduler counts a worker when it sends the welcome; wait until all have arrived.
        assert crowd.stdout is not None
        assert select.select([crowd.stdout], [], [], 30)[0], "the crowd never saw 200 welcomes"
        assert crowd.stdout.readline() == b"all welcomed\n"
        stopped_at = time.time()
        stop(scheduler.process)
        scheduler = start_scheduler(tmp_path, ports=(scheduler.tcp, scheduler.http))
        up_at = time.time()
        wait_until(lambda: len(api.online()) == 200, 45, "200 workers to come back")
        back_after = time.time() - up_at
        output, _ = crowd.communicate(timeout=30)  # closes its stdin: it prints and exits
    finally:
        if crowd.poll() is None:
            crowd.kill()
            crowd.wait()
        stop(scheduler.process)
    welcomes: dict[str, list[float]] = json.loads(output)
    again = {name: [moment for moment in times if moment > stopped_at] for name, times in welcomes.items()}
    counts = Counter(len(times) for times in again.values())
    assert len(again) == 200 and counts == {1: 200}, f"welcomes after the restart per worker: {counts}"
    times = sorted(moment for (moment,) in again.values())
    spread = times[-1] - times[0]
    buckets = Counter(int(moment * 10) for moment in times)
    print(
        f"200 workers back {back_after:.1f}s after the restart; reconnections spread over {spread:.2f}s,"
        f" at most {max(buckets.values())} in one 100 ms"
    )
    assert spread > 0.5
    assert max(buckets.values()) <= 100, "half the workers or more came back in the same 100 ms"
