"""Starting the real ``twistd`` processes for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# The twistd of the interpreter running the tests (the project venv).
TWISTD = [str(Path(sys.executable).with_name("twistd"))]

# A scheduler in the foreground on ports the system picks: for runs that
# must stop at start-up, where no one connects.
SCHEDULER_ON_ANY_PORTS = [
    *TWISTD,
    "--pidfile=",
    "-n",
    "scheduler",
    "--tcp",
    "tcp:0:interface=127.0.0.1",
    "--http",
    "tcp:0:interface=127.0.0.1",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(
    port: int, process: subprocess.Popen[Any] | None = None, timeout: float = 20.0, log: Path | None = None
) -> None:
    """Wait until *port* accepts connections (event: a successful connect).

    Gives up early if *process* exits; a failure quotes *log*, the
    process's output, when it is given.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process {process.args!r} exited with {process.returncode}{log_text(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            # Poll the connect itself: the listener appears when startup is done.
            time.sleep(0.05)
    raise TimeoutError(f"port {port} never opened{log_text(log)}")


def log_text(log: Path | None) -> str:
    """*log*'s content, to end an error message with; nothing without one."""
    return "" if log is None else f":\n{log.read_text(errors='replace')}"


class Scheduler:
    def __init__(self, workdir: Path, process: subprocess.Popen[bytes], tcp: int, http: int) -> None:
        self.workdir = workdir
        self.process = process
        self.tcp = tcp
        self.http = http
        self.log = workdir / "scheduler.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http}"

    def command(self, text: str, timeout: float = 10.0) -> list[str]:
        """Send lines, half-close, read every reply until the server closes."""
        with socket.create_connection(("127.0.0.1", self.tcp), timeout=timeout) as sock:
            sock.sendall(text.encode())
            sock.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return data.decode().splitlines()


def start_scheduler(
    workdir: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    ports: tuple[int, int] | None = None,
    interface: str = "127.0.0.1",
    twistd: list[str] | None = None,
) -> Scheduler:
    tcp, http = ports or (free_port(), free_port())
    log = open(workdir / "scheduler.log", "ab")  # closed when the process exits
    process = subprocess.Popen(
        [
            *(twistd or TWISTD),
            "--pidfile=",
            "-n",
            "scheduler",
            "--tcp",
            f"tcp:{tcp}:interface={interface}",
            "--http",
            f"tcp:{http}:interface={interface}",
            *extra,
        ],
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    wait_for_port(tcp, process)
    wait_for_port(http, process)
    return Scheduler(workdir, process, tcp, http)


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    """Stop *process* with *sig* (SIGKILL after 15 s); its exit status."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@contextmanager
def scheduler(workdir: Path, *extra: str) -> Iterator[Scheduler]:
    running = start_scheduler(workdir, *extra)
    try:
        yield running
    finally:
        stop(running.process)


def start_worker(
    scheduler_http: int, name: str, *extra: str, workdir: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    log = open(workdir / f"worker-{name}.log", "ab")  # closed when the process exits
    return subprocess.Popen(
        [
            *TWISTD,
            "--pidfile=",
            "-n",
            "worker",
            "--url",
            f"ws://127.0.0.1:{scheduler_http}/ws/worker",
            "--name",
            name,
            "--workdir",
            str(workdir),
            *extra,
        ],
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )


def http_json(method: str, url: str, body: object = None, token: str | None = None) -> tuple[int, object]:
    import json
    import urllib.error
    import urllib.request

    # POSTs always carry JSON, as the server requires (its CSRF defence).
    if body is None and method == "POST":
        body = {}
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            kind = response.headers.get("Content-Type", "")
            return response.status, json.loads(raw) if "json" in kind else raw.decode()
    except urllib.error.HTTPError as error:
        raw = error.read()
        try:
            return error.code, json.loads(raw)
        except ValueError:
            return error.code, raw.decode(errors="replace")


def get_json(url: str) -> Any:
    """The body of a GET answered 200, else None (a node still starting, say)."""
    code, body = http_json("GET", url)
    return body if code == 200 else None


@contextmanager
def leader_and_follower(
    workdir: Path, env: dict[str, str], *extra: str, names: tuple[str, str] = ("a", "b")
) -> Iterator[tuple[Scheduler, Scheduler]]:
    """Two nodes on the database *env* names, in folders ``a`` and ``b`` under
    *workdir* (made if missing): the first started and leading, then the
    second; both stopped at the end.  *names* are their --node-name."""
    folders = (workdir / "a", workdir / "b")
    for folder in folders:
        folder.mkdir(exist_ok=True)
    first = start_scheduler(folders[0], "--node-name", names[0], *extra, env=env)
    second = None
    try:
        wait_until(
            lambda: (body := get_json(first.url + "/api/health")) and body["leader"], 20, f"{names[0]} to lead"
        )
        second = start_scheduler(folders[1], "--node-name", names[1], *extra, env=env)
        yield first, second
    finally:
        stop(first.process)
        if second is not None:
            stop(second.process)


def wait_until(
    check: Callable[[], T | None], timeout: float = 30.0, what: str = "condition", interval: float = 0.05
) -> T:
    """Poll *check* until it returns something truthy (an observed event)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


class Proxy:
    """A TCP relay that a test can cut, to drop a worker's connection for real."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self.accepting = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.accepting:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for each in (source, sink):
                try:
                    each.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        """Drop every relayed connection and refuse new ones."""
        self.accepting = False
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for each in sockets:
            try:
                each.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            each.close()

    def resume(self) -> None:
        self.accepting = True

    def close(self) -> None:
        self.cut()
        self.listener.close()
