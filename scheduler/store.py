"""Where tasks live between runs.

:class:`TaskStore` is the small interface the rest of the scheduler uses;
:class:`FlatFileTaskStore` implements it with the seed's tasks.db, one JSON
object per line.  Every write replaces the whole file atomically (temp file
in the same folder, fsync, rename, fsync of the folder), so a crash at any
moment leaves the old file or the new one, never a mix.  File work runs in
a thread so other clients are not stalled.

A shared database (the planned PostgreSQL mode) would implement the same
two calls.
"""

from __future__ import annotations

import gc
import glob
import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import tzinfo
from pathlib import Path
from typing import Protocol

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from scheduler.tasks import Task, TaskError, TaskRecord, parse_record

log = Logger()


class LoadError(Exception):
    """The tasks file cannot be used; names the file, line and reason."""

    def __init__(self, path: str, line: int | None, reason: str) -> None:
        where = f"{path}, line {line}" if line is not None else path
        super().__init__(f"{where}: {reason}")
        self.path = path
        self.line = line
        self.reason = reason


class StoreError(Exception):
    """A write failed; the previous file is still in place."""


class TaskStore(Protocol):
    def load(self) -> Deferred[list[TaskRecord]]:
        """Read every stored task.  Fails with LoadError, changing nothing."""

    def save(self, tasks: Sequence[Task]) -> Deferred[None]:
        """Make *tasks* the stored state, all or nothing.  Fails with StoreError."""


@contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection inside the block.

    Loading tasks allocates several objects per task and frees few, so the
    collector would run again and again, each time through every object the
    scheduler holds, for nothing: a third of the time of loading 100,000
    tasks.  Tasks, records and books hold no reference cycles.
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def parse_lines(data: bytes, path: str, tz: tzinfo) -> list[TaskRecord]:
    """Parse a whole tasks file; the first bad line raises LoadError."""
    with paused_gc():
        return _parse_lines(data, path, tz)


def _parse_lines(data: bytes, path: str, tz: tzinfo) -> list[TaskRecord]:
    records = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise LoadError(path, number, f"not UTF-8 ({error.reason} at byte {error.start})") from None
        try:
            decoded = json.loads(text)
        except json.JSONDecodeError as error:
            raise LoadError(path, number, f"not valid JSON ({error.msg} at column {error.colno})") from None
        except RecursionError:
            raise LoadError(path, number, "not valid JSON (nested too deeply)") from None
        try:
            records.append(parse_record(decoded, tz))
        except TaskError as error:
            raise LoadError(path, number, str(error)) from None
    return records


class FlatFileTaskStore:
    """tasks.db: the seed's JSON-lines file, written atomically."""

    def __init__(
        self,
        path: str,
        tz: tzinfo,
        threadpool: ThreadPool,
        reactor: object,
        *,
        fsync: Callable[[int], None] = os.fsync,
        replace: Callable[[str, str], None] = os.replace,
    ) -> None:
        self.path = str(Path(path).absolute())
        self._tz = tz
        self._pool = threadpool
        self._reactor = reactor
        # Injectable so tests can make the disk fail at each step.
        self._fsync = fsync
        self._replace = replace

    def load_now(self) -> list[TaskRecord]:
        """Blocking load, for start-up before the reactor runs."""
        try:
            data = Path(self.path).read_bytes()
        except FileNotFoundError:
            return []
        except OSError as error:
            raise LoadError(self.path, None, error.strerror or str(error)) from None
        return parse_lines(data, self.path, self._tz)

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def load(self) -> Deferred[list[TaskRecord]]:
        return deferToThreadPool(self._reactor, self._pool, self.load_now)  # type: ignore[arg-type]

    def save(self, tasks: Sequence[Task]) -> Deferred[None]:
        # The snapshot is taken here; formatting 100,000 lines the first time
        # (Task.line is computed once, then cached) happens in the thread.
        snapshot = list(tasks)
        return deferToThreadPool(self._reactor, self._pool, self._write_tasks, snapshot)  # type: ignore[arg-type]

    def _write_tasks(self, tasks: Sequence[Task]) -> None:
        self.write_now([task.line for task in tasks])

    def _temp_name(self) -> str:
        folder, name = os.path.split(self.path)
        return os.path.join(folder, f".{name}.{os.getpid()}.tmp")

    def remove_stale_temps(self) -> list[str]:
        """Delete temp files a killed writer left behind (never the real file)."""
        folder, name = os.path.split(self.path)
        removed = []
        for stale in Path(folder).glob(f".{glob.escape(name)}.*.tmp"):
            try:
                stale.unlink()
                removed.append(str(stale))
            except OSError:
                pass
        return removed

    def write_now(self, lines: Sequence[str]) -> None:
        folder = os.path.dirname(self.path)
        temp = self._temp_name()
        payload = "".join(line + "\n" for line in lines).encode("utf-8")
        try:
            with open(temp, "wb") as handle:
                handle.write(payload)
                handle.flush()
                self._fsync(handle.fileno())
            self._replace(temp, self.path)
        except OSError as error:
            try:
                os.unlink(temp)
            except OSError:
                pass
            raise StoreError(f"could not write {self.path}: {error.strerror or error}") from None
        try:
            directory = os.open(folder, os.O_RDONLY)
            try:
                self._fsync(directory)
            finally:
                os.close(directory)
        except OSError as error:
            # The new file is already in place, so failing now would leave
            # memory and disk disagreeing; the next write syncs again.
            log.warn(
                "wrote {path} but could not sync its folder: {error}",
                path=self.path,
                error=error.strerror or str(error),
            )
