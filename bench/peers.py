"""The comparison systems: Celery 5 on Redis, and APScheduler 3.

They live in a virtualenv of their own, ``bench/.venv-peers`` (never the
project's), made and filled on first use; Redis comes from Debian's
``redis-server`` package, installed if the machine lacks it, and each run
starts its own server on a free loopback port and stops it afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.common import BENCH, free_port, log, wait_for_port

PEER_VENV = BENCH / ".venv-peers"
# What the comparisons need; py-spy only when profiling is asked for.
PEER_PACKAGES = ("celery[redis]>=5,<6", "apscheduler>=3,<4")
PROFILER_PACKAGES = ("py-spy",)


def peer_python() -> Path:
    return PEER_VENV / "bin" / "python"


def ensure_peer_venv(extra: tuple[str, ...] = ()) -> Path:
    """The peer virtualenv's interpreter, creating and filling it if needed."""
    wanted = "\n".join(sorted({*PEER_PACKAGES, *extra}))
    stamp = PEER_VENV / ".bench-packages"
    python = peer_python()
    if python.exists() and stamp.exists() and set(wanted.split("\n")) <= set(stamp.read_text().split("\n")):
        return python
    if not python.exists():
        log(f"creating {PEER_VENV} (Celery, Redis client, APScheduler; not the project's venv)")
        base = getattr(sys, "_base_executable", None) or sys.executable
        subprocess.run([base, "-m", "venv", str(PEER_VENV)], check=True)
    log(f"installing into {PEER_VENV}: {', '.join(wanted.split(chr(10)))}")
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *wanted.split("\n")],
        check=True,
    )
    stamp.write_text(wanted)
    return python


def ensure_redis_server() -> str:
    """The path of redis-server, installing Debian's package if it is missing."""
    found = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None)
    if found:
        return found
    log("redis-server is missing: apt-get install redis-server")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", "redis-server"],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    found = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.path.exists(found):
        raise RuntimeError("redis-server is still missing after apt-get install")
    return found


class RedisServer:
    """A throwaway redis-server on a free loopback port, without persistence."""

    def __init__(self, executable: str, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._log = open(workdir / "redis.log", "wb")
        self.process = subprocess.Popen(
            [
                executable,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
                "--dir", str(workdir),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, self.process)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
