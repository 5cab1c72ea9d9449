"""A throwaway PostgreSQL server for the tests of ``--db``: one per test session.

Debian's ``postgresql`` package (``make test`` installs it where missing)
gives ``initdb`` and ``pg_ctl``, which refuse to run as root: as root they
run as the ``postgres`` user, in a temporary folder it owns.  The server
listens on a free loopback port with password (SCRAM) authentication, so
the URLs the tests use carry a password as an operator's would.  Each test
gets a schema of its own (``pg_url``), so none sees another's rows.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import quote

import pytest

PASSWORD = "s3cret-Pg-Passw0rd"
DATABASE = "scheduler_tests"


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    password: str
    bin_dir: str
    data: str = ""
    log_file: str = ""

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every session ends, the server comes back on its port.

        With its log file again: without ``-l`` the new server would hold
        this call's output pipe open, and the call would wait for it."""
        subprocess.run(
            _as_postgres(
                [f"{self.bin_dir}/pg_ctl", "-D", self.data, "-l", self.log_file, "-m", "fast", "-w", "-t", "60", "restart"]
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )

    def url(self, database: str = DATABASE, schema: str | None = None) -> str:
        base = f"postgresql://postgres:{self.password}@{self.host}:{self.port}/{database}"
        return base if schema is None else f"{base}?options={quote(f'-csearch_path={schema}')}"


def _bin_dir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if found:
        return os.path.dirname(found[-1])
    on_path = shutil.which("pg_ctl")
    return os.path.dirname(on_path) if on_path else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _as_postgres(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


class NoPostgres(Exception):
    """PostgreSQL's server cannot be run here; the message says why."""


def start_postgres(root: str | None = None) -> tuple[PostgresServer, Callable[[], None]]:
    """A new server on a free loopback port, in *root* (a new temporary folder
    if None) or NoPostgres; returns it and the function that stops it and
    removes its files.  Its ``restart`` is ``pg_ctl restart`` (the chaos test's)."""
    bin_dir = _bin_dir()
    if bin_dir is None:
        raise NoPostgres("PostgreSQL's server binaries (initdb, pg_ctl) are not installed: `make test` installs Debian's postgresql")
    root = root or tempfile.mkdtemp(prefix="scheduler-pg-")
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            raise NoPostgres("no 'postgres' user to run initdb as (root may not)") from None
        os.chown(root, owner.pw_uid, owner.pw_gid)
    os.chmod(root, 0o700)
    data, log_file, pwfile = (os.path.join(root, name) for name in ("data", "server.log", "pw"))
    run = lambda command: subprocess.run(_as_postgres(command), check=True, capture_output=True, timeout=120)  # noqa: E731
    subprocess.run(_as_postgres(["sh", "-c", f"umask 077; printf %s '{PASSWORD}' > {pwfile}"]), check=True)
    run([f"{bin_dir}/initdb", "-D", data, "-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256",
         f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync"])
    port = _free_port()
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    run([f"{bin_dir}/pg_ctl", "-D", data, "-o", options, "-l", log_file, "-w", "-t", "60", "start"])

    def stop() -> None:
        subprocess.run(_as_postgres([f"{bin_dir}/pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"]), capture_output=True)
        shutil.rmtree(root, ignore_errors=True)

    try:
        server = PostgresServer("127.0.0.1", port, PASSWORD, bin_dir, data, log_file)
        import psycopg

        with psycopg.connect(server.url("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")
    except BaseException:
        stop()
        raise
    return server, stop


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    try:
        server, stop = start_postgres()
    except NoPostgres as why:
        pytest.skip(str(why))
    try:
        yield server
    finally:
        stop()


_schemas = itertools.count(1)


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> str:
    """A URL whose tables land in a new, empty schema of the test database."""
    import psycopg

    schema = f"t{os.getpid()}_{next(_schemas)}"
    with psycopg.connect(postgres_server.url(), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return postgres_server.url(schema=schema)
