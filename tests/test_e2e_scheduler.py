"""The real ``twistd -n scheduler`` on loopback, driven as a user would."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import urllib.request
import venv
from pathlib import Path

import pytest

from tests.e2e import SCHEDULER_ON_ANY_PORTS, scheduler, start_scheduler, stop

ROOT = Path(__file__).resolve().parent.parent
NC = shutil.which("nc")


def nc(port: int, text: str, *flags: str) -> tuple[str, float]:
    import time

    started = time.monotonic()
    done = subprocess.run(
        ["nc", *flags, "localhost", str(port)],
        input=text.encode(),
        capture_output=True,
        timeout=20,
        check=True,
    )
    return done.stdout.decode(), time.monotonic() - started


@pytest.mark.skipif(NC is None, reason="make test installs netcat-openbsd")
def test_seed_one_liners_with_real_nc(tmp_path: Path) -> None:
    with scheduler(tmp_path) as running:
        out, took = nc(running.tcp, "PING\n")
        assert out == "PONG\n"
        assert took < 5  # returns because the server closes, not by nc's timeout
        out, _ = nc(running.tcp, "ADD * * * * * echo Hello every minute!\n")
        assert out.startswith("OK id=1 jobName=task_1 next=")
        out, _ = nc(running.tcp, "ADD */5 * * * * date\nLIST\nSTATUS\n")
        lines = out.splitlines()
        assert lines[0].startswith("OK id=2 jobName=task_2")
        assert lines[1].endswith("\techo Hello every minute!")
        assert lines[3] == "OK 2 tasks"
        assert lines[4].startswith("OK tasks=2")
        out, _ = nc(running.tcp, "REMOVE 2\n", "-N")
        assert out == "OK removed id=2 jobName=task_2\n"
        assert nc(running.tcp, "SAVE\n")[0] == "OK saved 1 task\n"
        assert (tmp_path / "tasks.db").read_text() == (
            '{"schedule": "* * * * *", "command": "echo Hello every minute!", "jobName": "task_1"}\n'
        )
        # Issue 13's verbs: edit in place, pause until a time, LIST and STATUS say so, resume.
        out, _ = nc(
            running.tcp,
            "EDIT 1 */2 * * * * echo edited\nPAUSE task_1 until 2099-01-01T00:00:00+00:00\nLIST\nSTATUS\n"
            "PAUSE 1 until yesterday\nRESUME 1\n",
        )
        edited, paused, listed, count, status, bad, resumed = out.splitlines()
        assert edited.startswith("OK edited id=1 jobName=task_1 next=")
        assert paused.startswith("OK paused id=1 jobName=task_1 until=")
        assert listed.startswith("1\ttask_1\t*/2 * * * *\tpaused (next ") and listed.endswith("\techo edited")
        assert count == "OK 1 task"
        # queued is 1 when a minute turned during the test: task 1 fired then,
        # and with no worker its job waits.
        assert re.fullmatch(r"OK tasks=1 workers=0 queued=[01] running=0 paused=1 maintenance=off", status), status
        assert bad.startswith("ERR the time after 'until' must be an ISO 8601 time")
        assert resumed.startswith("OK resumed id=1 jobName=task_1 next=")
        assert nc(running.tcp, "CLEAR\nLOAD\n")[0] == "OK cleared 1 task\nOK loaded 0 tasks\n"


TCP_TOKEN = "tcp-token-0123456789abcdef"


@pytest.mark.skipif(NC is None, reason="make test installs netcat-openbsd")
def test_the_command_port_with_a_token_with_real_nc(tmp_path: Path) -> None:
    """As a user: SESSION needs AUTH, silence is cut off, guesses wait."""
    import socket
    import time

    (tmp_path / "tcp.token").write_text(TCP_TOKEN + "\n")
    with scheduler(tmp_path, "--tcp-token-file", str(tmp_path / "tcp.token"), "--tcp-auth-timeout", "1") as running:
        out, _ = nc(running.tcp, "SESSION\n")
        assert out == "ERR authentication required: send AUTH <token> before SESSION\n"
        # A connection that says nothing is closed at the deadline, with a reason.
        with socket.create_connection(("127.0.0.1", running.tcp), timeout=20) as silent:
            started = time.monotonic()
            data = b""
            while chunk := silent.recv(4096):
                data += chunk
        assert data == b"ERR no AUTH within 1 s; closing\n"
        assert time.monotonic() - started < 10
        # Five wrong tokens, then even the right one waits.
        out, _ = nc(running.tcp, "AUTH guess-1\nAUTH guess-2\nAUTH guess-3\n")
        assert out.splitlines()[-1] == "ERR wrong token; closing after 3 attempts"
        out, _ = nc(running.tcp, "AUTH guess-4\nAUTH guess-5\n")
        assert out.splitlines()[-1].startswith("ERR wrong token; too many from 127.0.0.1, so AUTH is refused for 1 s")
        out, _ = nc(running.tcp, f"AUTH {TCP_TOKEN}\nPING\n")
        # (Unless a slow machine let the second pass already.)
        assert out.startswith("ERR too many wrong tokens from 127.0.0.1") or out == "OK authenticated\nPONG\n"


@pytest.mark.skipif(NC is None, reason="make test installs netcat-openbsd")
def test_tasks_files_and_load_with_real_nc(tmp_path: Path) -> None:
    """As a user: private files, no links followed, FIFOs refused by LOAD."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    old_umask = os.umask(0o022)
    try:
        with scheduler(tmp_path) as running:
            # Whatever is planted at a predictable temp name stays untouched.
            (tmp_path / f".tasks.db.{running.process.pid}.tmp").symlink_to(victim)
            out, _ = nc(running.tcp, "ADD @daily echo \x1b[2J\u202eevil\n" + "LIST\n")
            assert out.splitlines()[1].endswith("\techo \\x1b[2J\\u202eevil")
            assert victim.read_text() == "precious\n"
            tasks = tmp_path / "tasks.db"
            assert not tasks.is_symlink() and oct(tasks.stat().st_mode & 0o777) == "0o600"
            for name in ("jobs.sqlite", "jobs.sqlite-wal", "jobs.sqlite-shm"):
                assert oct((tmp_path / name).stat().st_mode & 0o777) == "0o600", name
            tasks.chmod(0o640)
            nc(running.tcp, "ADD @hourly echo two\n")
            assert oct(tasks.stat().st_mode & 0o777) == "0o640"
            # LOAD of a FIFO answers at once, and the next change still goes through.
            saved = tasks.read_bytes()
            tasks.unlink()
            os.mkfifo(tasks)
            out, took = nc(running.tcp, "LOAD\nADD @daily echo after\n")
            assert took < 10  # answered: nc returns when the server closes
            lines = out.splitlines()
            assert lines[0] == "ERR tasks.db: not a regular file (a FIFO); tasks are read from regular files only"
            assert lines[1].startswith("OK id=3 ")
            tasks.unlink()
            assert nc(running.tcp, "LOAD\n")[0] == "ERR tasks.db: no such file\n"
            assert nc(running.tcp, "STATUS\n")[0].startswith("OK tasks=3 ")
            tasks.write_bytes(saved)
            assert nc(running.tcp, "LOAD\n")[0] == "OK loaded 2 tasks\n"
    finally:
        os.umask(old_umask)


def test_tasks_survive_restart_with_their_ids(tmp_path: Path) -> None:
    (tmp_path / "tasks.db").write_text(
        '{"schedule": "@daily", "command": "echo a", "jobName": "task_12"}\n'
    )
    with scheduler(tmp_path) as running:
        assert running.command("ADD @hourly echo b\n")[0].startswith("OK id=13 ")
    assert "loaded 1 tasks from" in (tmp_path / "scheduler.log").read_text()
    with scheduler(tmp_path) as running:
        removed, listed, end = running.command("REMOVE 12\nLIST\n")
        assert removed == "OK removed id=12 jobName=task_12"
        assert listed.startswith("13\ttask_13\t@hourly\t")
        assert end == "OK 1 task"


def test_broken_tasks_file_stops_startup_and_is_left_alone(tmp_path: Path) -> None:
    content = b'{"schedule": "* * * * *", "command": "ok", "jobName": "task_1"}\n{"schedule": "* *\n'
    (tmp_path / "tasks.db").write_bytes(content)
    done = subprocess.run(
        SCHEDULER_ON_ANY_PORTS,
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode != 0
    message = done.stderr.decode() + done.stdout.decode()
    assert "tasks.db, line 2: not valid JSON" in message
    assert "Traceback" not in message
    assert (tmp_path / "tasks.db").read_bytes() == content


def test_plugins_listed_after_plain_pip_install(tmp_path: Path) -> None:
    """A fresh virtualenv, ``pip install .``, ``twistd --help`` from elsewhere."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    # Build from a copy so the repository's own build/ folder plays no part.
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", "build", "*.egg-info", ".git", "__pycache__"))
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(source)],
        check=True,
        timeout=600,
        capture_output=True,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run(
        [str(env_dir / "bin" / "twistd"), "--help"],
        cwd=elsewhere,
        capture_output=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    commands = done.stdout.decode()
    assert "    scheduler " in commands
    assert "    worker " in commands
    # And the installed scheduler serves the dashboard from any directory.
    running = start_scheduler(elsewhere, twistd=[str(env_dir / "bin" / "twistd")])
    try:
        for path in ("/", "/static/app.js", "/static/style.css"):
            with urllib.request.urlopen(running.url + path, timeout=10) as response:
                assert response.status == 200, path
    finally:
        stop(running.process)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))


def test_twistd_without_n_refuses_instead_of_hanging(tmp_path: Path) -> None:
    # Daemonized, the job store's thread was lost in twistd's fork: the
    # scheduler ran, but no job was ever recorded, sent or answered for.
    background = [arg for arg in SCHEDULER_ON_ANY_PORTS if arg != "-n"]
    done = subprocess.run(background, cwd=tmp_path, capture_output=True, timeout=60)
    assert done.returncode == 1
    message = done.stderr.decode() + done.stdout.decode()
    assert "twistd -n scheduler" in message and "Traceback" not in message
    assert not (tmp_path / "twistd.pid").exists()
