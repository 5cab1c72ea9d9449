"""Starting the real ``twistd`` processes for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# The twistd of the interpreter running the tests (the project venv).
TWISTD = [str(Path(sys.executable).with_name("twistd"))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Wait until *port* accepts connections (event: a successful connect)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            # Poll the connect itself: the listener appears when startup is done.
            time.sleep(0.05)
    raise TimeoutError(f"port {port} never opened")


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


def start_scheduler(workdir: Path, *extra: str, env: dict[str, str] | None = None) -> Scheduler:
    tcp, http = free_port(), free_port()
    log = open(workdir / "scheduler.log", "ab")  # closed when the process exits
    process = subprocess.Popen(
        [
            *TWISTD,
            "--pidfile=",
            "-n",
            "scheduler",
            "--tcp",
            f"tcp:{tcp}:interface=127.0.0.1",
            "--http",
            f"tcp:{http}:interface=127.0.0.1",
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


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def scheduler(workdir: Path, *extra: str) -> Iterator[Scheduler]:
    running = start_scheduler(workdir, *extra)
    try:
        yield running
    finally:
        stop(running.process)
