"""Shared plumbing for the benchmark cases.

Processes (a real ``twistd scheduler``, real ``twistd worker`` agents, the
simulated-worker process), small HTTP and TCP clients, readers for
``/proc`` and the Prometheus text format, statistics, and the record a case
hands back.  The benchmark process itself never imports the scheduler: it
measures the real thing over its real ports.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

# One set of process helpers for the tests and the benchmarks.
from bench.cpu_ledger import process_split
from tests.e2e import free_port, wait_for_port, wait_until

BENCH = Path(__file__).resolve().parent


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# -- what a case reports ------------------------------------------------------------


@dataclass
class Figure:
    """One line of the results table."""

    name: str
    value: float | None
    unit: str
    # The comparison, when there is one: what it is, its value, and how many
    # times better ours is (above 1: ours is better).
    peer: str | None = None
    peer_value: float | None = None
    # The peer's unit, when it differs from ours.
    peer_unit: str | None = None
    ratio: float | None = None
    target: str | None = None
    met: bool | None = None
    # Every sample behind a median, for the JSON.
    samples: list[float] = field(default_factory=list)


@dataclass
class CaseResult:
    case: str
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        return figure

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Runtime:
    """How a case runs: sizes, the interpreter and code under test, where files go."""

    python: str
    workdir: Path
    quick: bool = False
    peers: bool = True
    # A source tree to run instead of the installed package (PYTHONPATH).
    tree: Path | None = None
    peer_python: Path | None = None
    redis_server: str | None = None
    profile_dir: Path | None = None
    profile_format: str = "flamegraph"
    py_spy: Path | None = None
    # How long the soak case runs; None for its default.
    soak_seconds: float | None = None
    # The many_tasks case's sizes; empty for its defaults.
    task_counts: tuple[int, ...] = ()

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.tree is not None:
            env["PYTHONPATH"] = os.pathsep.join(
                [str(self.tree), *filter(None, [env.get("PYTHONPATH")])]
            )
        return env

    @property
    def twistd(self) -> str:
        return str(Path(self.python).with_name("twistd"))

    def scratch(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path


# -- sockets and waiting ----------------------------------------------------------


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's open-file limit (children inherit it); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = max(soft, wanted)
    if hard != resource.RLIM_INFINITY and target > hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, target))
            return target
        except (ValueError, OSError):
            target = hard
    if target != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def tcp_command(port: int, text: str, timeout: float = 120.0) -> tuple[list[str], float]:
    """Send lines to the command port, half-close, read to the end: (lines, seconds)."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(text.encode())
        sock.shutdown(socket.SHUT_WR)
        chunks: list[bytes] = []
        while chunk := sock.recv(1 << 20):
            chunks.append(chunk)
    elapsed = time.perf_counter() - started
    return b"".join(chunks).decode().splitlines(), elapsed


class Http:
    """A keep-alive HTTP/1.1 client for one host; reconnects when the server closes."""

    def __init__(self, port: int, timeout: float = 60.0) -> None:
        self.port = port
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                self._conn.request(method, path, body=payload, headers=headers)
                response = self._conn.getresponse()
                data = response.read()
                if response.will_close:
                    self.close()
                if response.status == 408 and attempt == 1:
                    # The server closed a connection kept idle past its
                    # request timeout, answering 408 before this request.
                    continue
                return response.status, data
            except (http.client.HTTPException, ConnectionError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, body: Any = None, expect: Iterable[int] = (200, 201, 202)) -> Any:
        status, data = self.request(method, path, body)
        if status not in tuple(expect):
            raise RuntimeError(f"{method} {path}: HTTP {status}: {data[:300]!r}")
        return json.loads(data)

    def metrics(self) -> dict[str, float]:
        status, data = self.request("GET", "/metrics")
        if status != 200:
            raise RuntimeError(f"GET /metrics: HTTP {status}")
        return parse_metrics(data.decode())

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format to {'name{labels}': value}."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            values[name] = float(value)
        except ValueError:
            continue
    return values


def histogram(metrics: dict[str, float], name: str) -> list[tuple[float, float]]:
    """Cumulative (upper bound, count) buckets of a histogram, +Inf last."""
    prefix = f"{name}_bucket{{le=\""
    buckets = []
    for key, value in metrics.items():
        if key.startswith(prefix):
            bound = key[len(prefix) :].split('"', 1)[0]
            buckets.append((math.inf if bound == "+Inf" else float(bound), value))
    return sorted(buckets)


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The upper bound of the bucket holding the q-quantile (a ceiling, not an estimate)."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    for bound, count in buckets:
        if count >= rank:
            return bound
    return math.inf


def histogram_delta(after: list[tuple[float, float]], before: list[tuple[float, float]]) -> list[tuple[float, float]]:
    earlier = dict(before)
    return [(bound, count - earlier.get(bound, 0.0)) for bound, count in after]


# -- /proc ------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    own, _ = process_split(pid)
    return own.user + own.system


def run_queue_wait_seconds(pid: int) -> float:
    """How long a process's threads have waited for a core so far (runnable,
    not running), from ``/proc/<pid>/task/*/schedstat``: on a shared machine,
    the time another process's work added to this one's."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return total / 1e9


def machine() -> dict[str, Any]:
    model = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as meminfo:
        total_kib = int(meminfo.readline().split()[1])
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(total_kib / 1024 / 1024, 1),
        "python": sys.version.split()[0],
        "kernel": os.uname().release,
    }


# -- statistics -------------------------------------------------------------------


def tenths(curve: list[tuple[float, float]]) -> tuple[float, float]:
    """The mean of the first and of the last tenth of a curve's values."""
    tenth = max(1, len(curve) // 10)
    return (
        sum(value for _, value in curve[:tenth]) / tenth,
        sum(value for _, value in curve[-tenth:]) / tenth,
    )


def median(values: Iterable[float]) -> float | None:
    ordered = sorted(values)
    if not ordered:
        return None
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def percentile(values: Iterable[float], q: float) -> float | None:
    """Nearest-rank percentile, q in [0, 100]."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


# -- processes --------------------------------------------------------------------


def stop_process(process: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Scheduler:
    """A real ``twistd -n scheduler`` on free loopback ports, in its own folder."""

    def __init__(
        self, runtime: Runtime, workdir: Path, *extra: str, backlog: int = 1024, env: dict[str, str] | None = None
    ) -> None:
        self.runtime = runtime
        self.workdir = workdir
        self.tcp = free_port()
        self.http_port = free_port()
        self.log_path = workdir / "scheduler.log"
        self._log = open(self.log_path, "ab")
        started = time.perf_counter()
        self.process = subprocess.Popen(
            [
                runtime.twistd,
                "--pidfile=",
                "-n",
                "scheduler",
                "--tcp",
                f"tcp:{self.tcp}:interface=127.0.0.1",
                "--http",
                f"tcp:{self.http_port}:interface=127.0.0.1:backlog={backlog}",
                "--tasks-file",
                str(workdir / "tasks.db"),
                "--jobs-db",
                str(workdir / "jobs.sqlite"),
                "--timezone",
                "UTC",
                *extra,
            ],
            cwd=workdir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**runtime.env(), **(env or {})},
        )
        wait_for_port(self.tcp, self.process, timeout=120)
        wait_for_port(self.http_port, self.process, timeout=120)
        self.startup_seconds = time.perf_counter() - started
        self.http = Http(self.http_port)
        self._profiler: subprocess.Popen[Any] | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.http_port}/ws/worker"

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def workers(self) -> int:
        return int(self.http.json("GET", "/api/health")["workers"])

    def wait_workers(self, count: int, timeout: float = 120.0) -> None:
        wait_until(lambda: self.workers() >= count, timeout, f"{count} workers to connect", interval=0.1)

    def finished(self, status: str = "succeeded") -> float:
        return self.http.metrics().get(f'scheduler_jobs_finished_total{{status="{status}"}}', 0.0)

    def running(self) -> float:
        return self.http.metrics().get("scheduler_jobs_running", 0.0)

    def profile(self, name: str) -> None:
        """Start py-spy on the scheduler, if profiling was asked for."""
        if self.runtime.py_spy is None or self.runtime.profile_dir is None:
            return
        self.runtime.profile_dir.mkdir(parents=True, exist_ok=True)
        fmt = self.runtime.profile_format
        out = self.runtime.profile_dir / f"{name}.{ {'raw': 'txt', 'speedscope': 'json'}.get(fmt, 'svg') }"
        self._profiler = subprocess.Popen(
            [str(self.runtime.py_spy), "record", "--pid", str(self.pid), "--rate", "250", "--format", fmt, "--output", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)  # attaching takes a moment

    def end_profile(self) -> None:
        if self._profiler is not None:
            self._profiler.send_signal(signal.SIGINT)
            try:
                self._profiler.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._profiler.kill()
                self._profiler.wait()
            self._profiler = None

    def stop(self) -> None:
        self.end_profile()
        self.http.close()
        stop_process(self.process)
        self._log.close()


# The scheduler's reactor lag probe (scheduler/reactor_lag.py), and the
# issue's bound on a reactor turn during any case.
LAG_METRIC = "scheduler_reactor_lag_seconds"
STALL_TARGET = 0.020


class SchedulerWatch:
    """The scheduler process's CPU, its wait for a core, and its reactor lag
    from the moment this is made.

    CPU from ``/proc/<pid>/stat`` (user + system, the scheduler alone: not
    its workers, not this process); the lag from the histogram in
    ``/metrics``, so the longest stall is known to its bucket's bound.
    """

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self._cpu = scheduler.cpu_seconds()
        self._waited = run_queue_wait_seconds(scheduler.pid)
        self._lag = histogram(scheduler.http.metrics(), LAG_METRIC)

    def cpu_seconds(self) -> float:
        return self.scheduler.cpu_seconds() - self._cpu

    def waited_seconds(self) -> float:
        """How long the scheduler's threads waited for a core since (schedstat)."""
        return run_queue_wait_seconds(self.scheduler.pid) - self._waited

    def longest_stall(self) -> tuple[float, float]:
        """Seconds: the bound of the highest bucket that got a sample since
        (inf when over the last bucket; 0 when none came), with the last finite bound."""
        return highest_bucket(histogram_delta(histogram(self.scheduler.http.metrics(), LAG_METRIC), self._lag))


def highest_bucket(buckets: list[tuple[float, float]]) -> tuple[float, float]:
    """Of cumulative (bound, count) buckets: the bound of the highest one that
    holds a sample (0 with none; inf past the last), and the last finite bound."""
    last = max((bound for bound, _ in buckets if math.isfinite(bound)), default=0.0)
    if not buckets or buckets[-1][1] <= 0:
        return 0.0, last
    return next(bound for bound, count in buckets if count >= buckets[-1][1]), last


def cpu_per_job_figure(samples_us: list[float], target_us: float | None = None) -> Figure:
    """The scheduler's CPU per job (µs, the median of the rounds), against a bound when the issue sets one."""
    value = median(samples_us)
    return Figure(
        "scheduler CPU per job",
        value,
        "µs",
        target=f"<= {target_us:g} µs" if target_us is not None else None,
        met=(value is not None and value <= target_us) if target_us is not None else None,
        samples=samples_us,
    )


def stall_figure(stalls: list[tuple[float, float]]) -> Figure:
    """The longest reactor stall over the case's measured stretches, in ms.

    Each stall is ``(bound, last finite bound)`` as SchedulerWatch.longest_stall
    gives it; a stall over the last bucket is shown as that bucket, "or more".
    """
    longest, last = max(stalls) if stalls else (0.0, 0.0)
    over = math.isinf(longest)
    value = (last if over else longest) * 1000
    return Figure(
        "longest reactor stall (at most)",
        value,
        "ms or more" if over else "ms",
        target=f"<= {STALL_TARGET * 1000:g} ms",
        met=longest <= STALL_TARGET,
        samples=[bound * 1000 for bound, _ in stalls if math.isfinite(bound)],
    )


class RealWorkers:
    """Real ``twistd -n worker`` agents running real shell commands."""

    def __init__(self, runtime: Runtime, scheduler: Scheduler, count: int, *, slots: int, prefix: str = "w") -> None:
        self.processes: list[subprocess.Popen[Any]] = []
        self._logs: list[IO[bytes]] = []
        folder = scheduler.workdir
        for index in range(count):
            log_file = open(folder / f"worker-{prefix}{index}.log", "ab")
            self._logs.append(log_file)
            self.processes.append(
                subprocess.Popen(
                    [
                        runtime.twistd,
                        "--pidfile=",
                        "-n",
                        "worker",
                        "--url",
                        scheduler.ws_url,
                        "--name",
                        f"{prefix}{index}",
                        "--slots",
                        str(slots),
                        "--workdir",
                        str(folder),
                    ],
                    cwd=folder,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env=runtime.env(),
                )
            )

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            stop_process(process)
        for log_file in self._logs:
            log_file.close()


@dataclass
class Started:
    """A simulated worker's report of one job: when ``run`` came, when the worker
    started it, and the run's ``delay`` (bench/simworkers.py says what each tells)."""

    job: int
    worker: str
    run_at: float
    started_at: float
    delay: float = 0.0
    # When the kernel had the run (None where Linux gave no receive timestamp).
    kernel_at: float | None = None


class SimWorkers:
    """``bench/simworkers.py`` in processes of their own: many workers on the real protocol.

    With *processes* above 1 the workers are shared out between that many
    processes (names ``prefix-0`` .. ``prefix-(count-1)`` as with one, each
    process a consecutive share), so that the jobs due at one second start
    side by side, as on separate machines, rather than one after another in
    one reactor.  Everything read from them (``started`` reports, problems,
    traffic counters) is gathered over all of them; ``ready_seconds`` is the
    slowest process's.
    """

    def __init__(
        self,
        runtime: Runtime,
        url: str,
        count: int,
        *,
        prefix: str = "sim",
        hold: float = 0.02,
        slots: int = 1,
        in_flight: int = 50,
        output: str = "",
        ready_timeout: float = 300.0,
        log_dir: Path | None = None,
        processes: int = 1,
    ) -> None:
        if processes < 1:
            raise ValueError(f"processes must be at least 1, got {processes}")
        processes = min(processes, count) if count > 0 else 1
        self.count = count
        self.prefix = prefix
        self.started: dict[int, Started] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.ready_seconds: float | None = None
        # Each process's ready time, once it has reported it.
        self._ready: list[float | None] = [None] * processes
        self.problems: list[str] = []
        # Each process's answers to ``counters``, in order.
        self._counters: list[list[dict[str, Any]]] = [[] for _ in range(processes)]
        # One log for all of them: each line is short, and the file is opened for appending.
        self._log = open((log_dir or runtime.workdir) / f"simworkers-{prefix}.log", "ab")
        self.processes: list[subprocess.Popen[bytes]] = []
        self._readers: list[threading.Thread] = []
        first = 0
        for number, share in enumerate(shares(count, processes)):
            process = subprocess.Popen(
                [
                    runtime.python,
                    str(BENCH / "simworkers.py"),
                    "--url", url,
                    "--count", str(share),
                    "--first", str(first),
                    "--prefix", prefix,
                    "--hold", str(hold),
                    "--slots", str(slots),
                    # The handshakes pending at once, over all the processes.
                    "--in-flight", str(max(1, in_flight // processes)),
                    f"--output={output}",
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._log,
                env=runtime.env(),
            )
            first += share
            self.processes.append(process)
            reader = threading.Thread(target=self._read, args=(number, process), daemon=True)
            reader.start()
            self._readers.append(reader)
        with self._changed:
            ready = self._changed.wait_for(
                lambda: self.ready_seconds is not None or any(p.poll() is not None for p in self.processes),
                ready_timeout,
            )
        if not ready or self.ready_seconds is None:
            self.stop()
            raise RuntimeError(f"simulated workers did not all connect: {self.problems[-5:]}")

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def cpu_seconds(self) -> float:
        """User + system CPU of all the simulated-worker processes so far."""
        return sum(cpu_seconds(pid) for pid in self.pids)

    def waited_seconds(self) -> float:
        """How long all the simulated-worker processes have waited for a core so far (schedstat)."""
        return sum(run_queue_wait_seconds(pid) for pid in self.pids)

    def name(self, index: int) -> str:
        return f"{self.prefix}-{index}"

    def _read(self, number: int, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            with self._changed:
                kind = event.get("event")
                if kind == "started":
                    self.started[event["job"]] = Started(
                        event["job"],
                        event["worker"],
                        event["run_at"],
                        event["started_at"],
                        event.get("delay", 0.0),
                        event.get("kernel_at"),
                    )
                elif kind == "ready":
                    self._ready[number] = float(event["seconds"])
                    if all(seconds is not None for seconds in self._ready):
                        self.ready_seconds = max(seconds for seconds in self._ready if seconds is not None)
                elif kind == "problem":
                    self.problems.append(str(event.get("what")))
                elif kind == "counters":
                    self._counters[number].append(event)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_started(self, jobs: Iterable[int], timeout: float = 60.0) -> list[Started]:
        wanted = list(jobs)
        with self._changed:
            done = self._changed.wait_for(lambda: all(job in self.started for job in wanted), timeout)
            if not done:
                missing = [job for job in wanted if job not in self.started]
                raise TimeoutError(f"{len(missing)} of {len(wanted)} jobs never reported started")
            return [self.started[job] for job in wanted]

    def counters(self, timeout: float = 30.0) -> dict[str, Any]:
        """WebSocket traffic so far over all the connections (of every process):
        ``{"sent": {"frames", "messages", "bytes"}, "received": {...}}``, sent
        meaning worker to scheduler."""
        with self._lock:
            seen = [len(answers) for answers in self._counters]
        # Not under the lock: the reader threads take it for every line.
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.write(b"counters\n")
            process.stdin.flush()

        def answered() -> bool:
            return all(len(answers) > before for answers, before in zip(self._counters, seen, strict=True))

        with self._changed:
            self._changed.wait_for(
                lambda: answered() or any(process.poll() is not None for process in self.processes), timeout
            )
            if not answered():
                raise RuntimeError("the simulated workers did not report their counters")
            events = [answers[before] for answers, before in zip(self._counters, seen, strict=True)]
        total: dict[str, Any] = {"sent": {}, "received": {}}
        for event in events:
            for way in ("sent", "received"):
                for key, value in event[way].items():
                    total[way][key] = total[way].get(key, 0) + value
        return total

    def snapshot(self) -> list[Started]:
        with self._lock:
            return list(self.started.values())

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None and process.stdin is not None:
                try:
                    process.stdin.write(b"quit\n")
                    process.stdin.flush()
                    process.stdin.close()
                except OSError:
                    pass
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
            stop_process(process)
        for reader in self._readers:
            reader.join(timeout=5)
        self._log.close()


def shares(count: int, parts: int) -> list[int]:
    """*count* split into *parts* consecutive shares differing by at most one, larger first."""
    base, extra = divmod(count, parts)
    return [base + (1 if part < extra else 0) for part in range(parts)]
