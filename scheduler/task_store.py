"""Where tasks live between runs.

:class:`TaskStore` is the small interface the rest of the scheduler uses;
:class:`FlatFileTaskStore` implements it with the seed's tasks.db, one JSON
object per line.  Every write replaces the whole file atomically (temp file
in the same folder, fsync, rename, fsync of the folder), so a crash at any
moment leaves the old file or the new one, never a mix.  File work runs in
a thread so other clients are not stalled.

The temp file gets a random name and is created exclusively, never through
a symbolic link, so nothing planted in the folder can make a write land in
another file.  A new tasks.db is private (0600); a rewrite keeps the mode
the file had.  Error messages name the file, not its folder: they go back
to clients, and the server's paths are none of their business (the log has
the full path).

A shared database (PostgreSQL with ``--db``: scheduler/task_store_postgres.py)
implements the same two calls, and :class:`SharedTaskStore`'s ``refresh``.
"""

from __future__ import annotations

import gc
import json
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import tzinfo
from itertools import chain, islice
from typing import Protocol, runtime_checkable

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from scheduler.atomic_file import AtomicFile
from scheduler.tasks import Task, TaskError, TaskRecord, parse_plain_record, parse_record

log = Logger()


class LoadError(Exception):
    """The tasks file cannot be used; names the file, line and reason.

    The message names the file as *shown* (its name alone, for replies to
    clients); :attr:`full_message` names *path*, for the log.
    """

    def __init__(self, path: str, line: int | None, reason: str, shown: str | None = None) -> None:
        super().__init__(self._where(shown or path, line) + reason)
        self.path = path
        self.line = line
        self.reason = reason

    @staticmethod
    def _where(path: str, line: int | None) -> str:
        return f"{path}, line {line}: " if line is not None else f"{path}: "

    @property
    def full_message(self) -> str:
        return self._where(self.path, self.line) + self.reason


class StoreError(Exception):
    """A write failed; the previous file is still in place."""


# The tasks in memory, by id (TaskBook.get).
Known = Callable[[int], Task | None]


class TaskStore(Protocol):
    def load(self, known: Known | None = None) -> Deferred[list[TaskRecord]]:
        """Read every stored task.  Fails with LoadError, changing nothing.

        *known* gives the tasks in memory by id: a stored task equal to
        one of them may come back as that very object (a LOAD of a mostly
        unchanged store then builds little).
        """

    def save(self, tasks: Sequence[Task]) -> Deferred[None]:
        """Make *tasks* the stored state, all or nothing.  Fails with StoreError."""


class TaskConflict(StoreError):
    """Another node changed the shared tasks since this one last read them;
    nothing was written.  TaskState refreshes and tries once more."""


@dataclass(frozen=True)
class TaskDelta:
    """What a shared store's tasks became since this node last read or wrote them."""

    generation: int
    changed: list[TaskRecord]  # added or edited, ids decided
    removed: list[int]
    # Above every id the store has ever held, removed tasks' included:
    # an id is never given to a second task.
    high_water: int


@runtime_checkable
class SharedTaskStore(TaskStore, Protocol):
    """A store several schedulers write (PostgreSQL with --db): it can say
    what the others changed, and ``save`` fails with TaskConflict when
    another node wrote since this one last read."""

    def refresh(self, seen: int | None = None) -> Deferred[TaskDelta | None]:
        """The changes since the last load, save or refresh; None if the
        store already holds generation *seen* or a later one."""


@contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection inside the block.

    Loading tasks allocates several objects per task and frees few, so the
    collector would run again and again, each time through every object the
    scheduler holds, for nothing (docs/performance.md, "tasks.db and
    memory").  Tasks, records and books hold no reference cycles.
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def parse_lines(
    data: bytes, path: str, tz: tzinfo, shown: str | None = None, known: Known | None = None
) -> list[TaskRecord]:
    """Parse a whole tasks file; the first bad line raises LoadError.

    A plain line (the seed's three keys, a ``task_<id>`` jobName) that says
    exactly what the task of its id in *known* holds comes back as that
    task, unparsed.
    """
    with paused_gc():
        try:
            return _parse_lines(data, path, tz, known)
        except LoadError as error:
            if shown is None:
                raise
            raise LoadError(error.path, error.line, error.reason, shown) from None


# One line of the file: the seed's three keys exactly as json.dumps writes
# them (strings without escapes, which read the same as JSON or as text;
# a task_<id> jobName's digits apart), or else (group 5) anything, for the
# JSON decoder.  Over the whole decoded file, so a plain line costs one
# regex step and no per-line bytes, str or dict (docs/performance.md, "A
# million tasks").
_LINE = re.compile(
    r'(?:\{"schedule": "([^"\\\x00-\x1f]*)", "command": "([^"\\\x00-\x1f]*)",'
    r' "jobName": "(?:task_([0-9]{1,18})|([^"\\\x00-\x1f]*))"\}|([^\n]*))(?:\n|\Z)'
)
# What bytes.strip() strips: a line of only these is blank.
_BLANK = " \t\n\r\x0b\x0c"


# Bytes decoded at a time (whole lines): decoding a million lines at once
# held the GIL, and so the reactor, for 50-100 ms.
_PIECE = 1 << 20


def _pieces(data: bytes) -> Iterator[tuple[str, int]]:
    """*data* decoded as UTF-8 a piece of whole lines at a time, each with
    its number of lines; UnicodeDecodeError as ``bytes.decode``."""
    start = 0
    while start < len(data):
        cut = data.find(b"\n", start + _PIECE)
        end = len(data) if cut < 0 else cut + 1
        piece = data[start:end]
        yield piece.decode("utf-8"), piece.count(b"\n") + (not piece.endswith(b"\n"))
        start = end


def _parse_lines(data: bytes, path: str, tz: tzinfo, known: Known | None) -> list[TaskRecord]:
    try:
        return _parse_text(data, path, tz, known)
    except UnicodeDecodeError:
        # Line by line, to name the first line that is not UTF-8.
        return _parse_byte_lines(data, path, tz)


def _parse_text(data: bytes, path: str, tz: tzinfo, known: Known | None) -> list[TaskRecord]:
    records: list[TaskRecord] = []
    append = records.append
    # Each piece's lines: the regex ends every text with an empty match
    # at its end, which is not a line of the file.
    matches = chain.from_iterable(islice(_LINE.finditer(text), lines) for text, lines in _pieces(data))
    for number, match in enumerate(matches, start=1):
        schedule, command, digits, job_name, other = match.groups()
        try:
            if other is not None:
                if other.strip(_BLANK):
                    append(parse_record(_decode(other, path, number), tz))
                continue
            if digits is not None:
                if known is not None:
                    # A task_<id> line that says what the task of that id
                    # in memory holds is that task: it passed the same
                    # checks when it was read or made.
                    task = known(int(digits))
                    if task is not None and task.reads(schedule, command, digits, tz):
                        append(task)
                        continue
                job_name = "task_" + digits
            append(parse_plain_record(schedule, command, job_name, tz))
        except TaskError as error:
            raise LoadError(path, number, str(error)) from None
    return records


def _parse_byte_lines(data: bytes, path: str, tz: tzinfo) -> list[TaskRecord]:
    records = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise LoadError(path, number, f"not UTF-8 ({error.reason} at byte {error.start})") from None
        try:
            records.append(parse_record(_decode(text, path, number), tz))
        except TaskError as error:
            raise LoadError(path, number, str(error)) from None
    return records


def _decode(text: str, path: str, number: int) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise LoadError(path, number, f"not valid JSON ({error.msg} at column {error.colno})") from None
    except RecursionError:
        raise LoadError(path, number, "not valid JSON (nested too deeply)") from None


# Lines formatted and written at a time (about 1 MB).
_WRITE_PIECE = 10_000


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
        self._file = AtomicFile(path, fsync=fsync, replace=replace)
        self.path = self._file.path
        # What error messages call the file (see the module's docstring).
        self.name = self._file.name
        self._tz = tz
        self._pool = threadpool
        self._reactor = reactor

    def load_now(self, *, missing_ok: bool = True, known: Known | None = None) -> list[TaskRecord]:
        """Blocking load, for start-up before the reactor runs.

        A missing file is no task at all when *missing_ok* (a first start);
        a symbolic link to nothing never is.
        """
        try:
            data = self._read()
        except FileNotFoundError:
            if os.path.islink(self.path):
                raise self._error("a symbolic link to a file that does not exist") from None
            if missing_ok:
                return []
            raise self._error("no such file") from None
        except OSError as error:
            raise self._error(error.strerror or str(error)) from None
        return parse_lines(data, self.path, self._tz, shown=self.name, known=known)

    def _read(self) -> bytes:
        # O_NONBLOCK: opening a FIFO would otherwise wait for a writer, and
        # with it every later change to the tasks; fstat then refuses it.
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb") as handle:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                kind = "a FIFO" if stat.S_ISFIFO(mode) else "a folder" if stat.S_ISDIR(mode) else "a device or socket"
                raise self._error(f"not a regular file ({kind}); tasks are read from regular files only")
            return handle.read()

    def _error(self, reason: str) -> LoadError:
        return LoadError(self.path, None, reason, shown=self.name)

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def load(self, known: Known | None = None) -> Deferred[list[TaskRecord]]:
        """LOAD: a missing file is an error here, not an empty task list."""
        return deferToThreadPool(
            self._reactor, self._pool, lambda: self.load_now(missing_ok=False, known=known)  # type: ignore[arg-type]
        )

    def save(self, tasks: Sequence[Task]) -> Deferred[None]:
        # The snapshot is taken here; formatting the lines happens in the thread.
        snapshot = list(tasks)
        return deferToThreadPool(self._reactor, self._pool, self._write_tasks, snapshot)  # type: ignore[arg-type]

    def _write_tasks(self, tasks: Sequence[Task]) -> None:
        self.write_now(task.line for task in tasks)

    def remove_stale_temps(self) -> list[str]:
        """Delete temp files a killed writer left behind (never the real file)."""
        return self._file.remove_stale_temps()

    def write_now(self, lines: Iterable[str]) -> None:
        # Formatted and encoded a piece at a time as the file is written: a
        # million lines at once were three copies of the file in memory (the
        # lines, the text, the bytes: 300 MB), which stayed with the process.
        lines = iter(lines)
        pieces = (
            "".join(line + "\n" for line in piece).encode("utf-8")
            for piece in iter(lambda: list(islice(lines, _WRITE_PIECE)), [])
        )
        try:
            self._file.write(pieces)
        except OSError as error:
            reason = error.strerror or str(error)
            log.error("could not write {path}: {error}", path=self.path, error=reason)
            raise StoreError(f"could not write {self.name}: {reason}") from None
