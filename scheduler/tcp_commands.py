"""The command port's verbs (ADD, LIST, REMOVE, ... PING) and their replies.

:data:`VERBS`, at the end of this module, is the one list of verbs: for
each, its help line, its handler, whether it may run before ``AUTH`` and
whether it joins the ordered write queue.  ``HELP``, the line protocol's
AUTH check (``tcp_auth.py``) and its queueing (``tcp_protocol.py``) are all
read from it, and :func:`read_command` is the one place a line is split
into its command word and argument.

:class:`TcpCommands` answers the verbs that act on the tasks, with no
transport: a line in, a reply (or a Deferred of one) out.  Replies are
``OK ...``, ``ERR <reason>`` or ``PONG``; multi-line replies (LIST, HELP)
end with an ``OK`` line.  The verbs that act on the connection itself
(AUTH, SESSION, QUIT) have no handler here; the line protocol answers them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from scheduler.cron import iso
from scheduler.task_book import TaskBook, TaskNotFound
from scheduler.task_changes import TaskChanges
from scheduler.task_store import LoadError, StoreError
from scheduler.tasks import CRON_TZ, Task, TaskError, parse_time
from scheduler.triggers import TriggeredBy

log = Logger()

# A reply of many lines (LIST) is made a chunk of lines at a time, as the
# connection takes them (tcp_protocol.py), so a million tasks neither block
# the reactor for seconds nor sit in memory as one string.
Chunks = Iterator[str]
Reply = str | Deferred[str] | Chunks
# Lines per chunk: about a millisecond of formatting per reactor turn.
LIST_CHUNK = 200

_CRON_FIELD = re.compile(r"^[0-9*/,\-]+$")
# A client whose address is not known (the protocol passes its own).
TCP = TriggeredBy("tcp")


def read_command(line: str) -> tuple[str, str]:
    """*line*'s command word, upper-cased, and its argument, stripped."""
    word, _, argument = line.strip().partition(" ")
    return word.upper(), argument.strip()


_EXAMPLES = {"ADD": "ADD */5 * * * * echo hi", "EDIT": "EDIT 2 */5 * * * * echo hi"}


def split_add(argument: str, verb: str = "ADD") -> tuple[str, str]:
    """Split ``ADD``'s argument into (schedule, command).

    A ``@macro`` is one word; otherwise five fields, or six when the sixth
    looks like a cron field (seconds, croniter's convention) and a command
    still follows it.  A ``CRON_TZ=<zone>`` word in front stays with the
    schedule (the task's change splits it off into its ``timezone``).
    """
    words = argument.split()
    if not words:
        raise TaskError(f"{verb} needs a schedule and a command, e.g. {_EXAMPLES[verb]}")
    zoned = 1 if words[0].startswith(CRON_TZ) else 0
    if len(words) > zoned and words[zoned].startswith("@"):
        count = 1
    elif len(words) >= zoned + 6 and _CRON_FIELD.match(words[zoned + 5]):
        count = 6
    else:
        count = 5
    count += zoned
    if len(words) <= count:
        raise TaskError(
            f"{verb} needs a schedule and a command, e.g. {_EXAMPLES[verb]}"
            f" (got {len(words)} word{'s' if len(words) != 1 else ''})"
        )
    # Keep the command's own spacing: cut after the schedule's last word.
    match = re.match(rf"\s*(?:\S+\s+){{{count}}}(.*)$", argument, re.DOTALL)
    assert match is not None
    return " ".join(words[:count]), match.group(1).strip()


# Characters a terminal acts on instead of showing: C0 and C1 controls (ESC
# starts escape sequences; TAB would split LIST's columns), DEL, bidi
# embeddings, overrides and isolates (which reorder what is shown),
# invisible marks and line separators, and lone surrogates (which cannot
# even be encoded as UTF-8, and JSON in tasks.db can hold them).
_HIDDEN = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u180e\u200b-\u200f\u2028-\u202e"
    "\u2060-\u206f\ufeff\ufff9-\ufffb\ud800-\udfff]"
)
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def visible(text: str) -> str:
    """*text* with every control or bidi character shown as an escape (``\\x1b``, ``\\u202e``).

    For replies that show stored text (commands, jobNames) on an operator's
    terminal; the stored task is unchanged.  Backslashes are left alone, so
    commands read as written; the REST API gives the exact text.
    """
    if _HIDDEN.search(text) is None:
        return text
    return _HIDDEN.sub(_escape, text)


def _iso(timestamp: float | None, book: TaskBook) -> str:
    return iso(timestamp, book.tz) or "-"


class TcpCommands:
    """Answers one command against the scheduler's state."""

    def __init__(
        self,
        changes: TaskChanges,
        next_run: Callable[[int], float | None],
        status: Callable[[], dict[str, int | str]],
        health: Callable[[Task], str] = lambda task: "paused" if task.options.paused else "up",
    ) -> None:
        self._changes = changes
        self._next_run = next_run
        self._status = status
        self._health = health

    def handle(self, line: str, by: TriggeredBy = TCP) -> Reply:
        return self.answer(*read_command(line), by=by)

    def answer(self, word: str, argument: str, by: TriggeredBy = TCP) -> Reply:
        """The reply to verb *word* (upper-cased) with *argument*, from the client *by*."""
        if not word:
            return "ERR empty line (try HELP)"
        verb = VERBS.get(word)
        if verb is None or verb.handler is None:
            shown = word if len(word) <= 40 else word[:40] + "..."
            return f"ERR unknown command '{shown}' (try HELP)"
        return verb.handler(self, argument, by)

    def do_PING(self, argument: str, by: TriggeredBy) -> Reply:
        return "PONG"

    def do_HELP(self, argument: str, by: TriggeredBy) -> Reply:
        return HELP + "\nOK"

    def do_ADD(self, argument: str, by: TriggeredBy) -> Reply:
        try:
            schedule, command = split_add(argument)
        except TaskError as error:
            return f"ERR {error}"

        return self._changes.add(schedule, command, by=by).addCallbacks(
            lambda task: f"OK id={task.id} jobName={task.job_name} next={self._when(task)}", _error
        )

    def do_EDIT(self, argument: str, by: TriggeredBy) -> Reply:
        key, _, rest = argument.partition(" ")
        if not key or not rest.strip():
            return "ERR EDIT needs a task id or jobName, a schedule and a command, e.g. EDIT 2 */5 * * * * echo hi"
        try:
            schedule, command = split_add(rest, "EDIT")
            changed = self._changes.edit(key, {"schedule": schedule, "command": command}, by=by)
        except TaskError as error:
            return f"ERR {error}"
        return changed.addCallbacks(
            lambda task: f"OK edited id={task.id} jobName={visible(task.job_name)} next={self._when(task)}", _error
        )

    def do_PAUSE(self, argument: str, by: TriggeredBy) -> Reply:
        key, _, rest = argument.partition(" ")
        if not key:
            return "ERR PAUSE needs a task id or jobName, e.g. PAUSE 2 or PAUSE 2 until 2026-12-24T18:00:00+01:00"
        until = None
        rest = rest.strip()
        if rest:
            word, _, when = rest.partition(" ")
            if word.lower() != "until" or not when.strip():
                return "ERR PAUSE takes a task and optionally 'until <ISO time>', e.g. PAUSE 2 until 2026-12-24T18:00:00+01:00"
            try:
                until = parse_time(when.strip(), "the time after 'until'")
                paused = self._changes.pause(key, by=by, until=until)
            except TaskError as error:
                return f"ERR {error}"
        else:
            paused = self._changes.pause(key, by=by)
        return paused.addCallbacks(
            lambda task: f"OK paused id={task.id} jobName={visible(task.job_name)}"
            + (f" until={_iso(task.options.pausedUntil, self._changes.book)}" if task.options.pausedUntil else ""),
            _error,
        )

    def do_RESUME(self, argument: str, by: TriggeredBy) -> Reply:
        if not argument:
            return "ERR RESUME needs a task id or jobName, e.g. RESUME 2"
        return self._changes.resume(argument, by=by).addCallbacks(
            lambda task: f"OK resumed id={task.id} jobName={visible(task.job_name)} next={self._when(task)}", _error
        )

    def _when(self, task: Task) -> str:
        return _iso(self._next_run(task.id), self._changes.book)

    def do_LIST(self, argument: str, by: TriggeredBy) -> Reply:
        # The tasks as they stand now; what changes while the listing goes
        # out is not in it (changes replace the book, they never edit it, so
        # the book is walked as it is: a copy of a million tasks was 20 ms
        # on the reactor, and a young list of a million that every pass of
        # the collector walked while the listing lasted).
        return self._listing(self._changes.book)

    def _listing(self, book: TaskBook) -> Chunks:
        # Tasks on one schedule share their next run, and formatting a time
        # costs more than the rest of a line: format each time once.
        formatted: dict[float | None, str] = {}

        def when(task: Task) -> str:
            timestamp = self._next_run(task.id)
            text = formatted.get(timestamp)
            if text is None:
                text = formatted[timestamp] = _iso(timestamp, book)
            if task.options.paused:
                # The column still says when it would run: the next run is
                # kept computed for when the task resumes.
                return f"paused (next {text})"
            # A task that is not up says so after its time, as paused does
            # before it: the columns stay where clients split them.
            health = self._health(task)
            return text if health == "up" else f"{text} ({health})"

        def zone(task: Task) -> str:
            # Only tasks with a zone of their own: the seed's columns stay.
            name = task.options.timezone
            return "" if name is None else f"{CRON_TZ}{visible(name)} "

        tasks = iter(book)
        while chunk := list(islice(tasks, LIST_CHUNK)):
            yield "\n".join(
                f"{task.id}\t{visible(task.job_name)}\t{zone(task)}{visible(task.schedule.expression)}\t{when(task)}\t{visible(task.command)}"
                for task in chunk
            )
        yield f"OK {len(book)} task{'' if len(book) == 1 else 's'}"

    def do_REMOVE(self, argument: str, by: TriggeredBy) -> Reply:
        if not argument:
            return "ERR REMOVE needs a task id or jobName, e.g. REMOVE 2"
        return self._changes.remove(argument, by=by).addCallbacks(
            lambda task: f"OK removed id={task.id} jobName={visible(task.job_name)}", _error
        )

    def do_CLEAR(self, argument: str, by: TriggeredBy) -> Reply:
        return self._changes.clear(by=by).addCallbacks(
            lambda count: f"OK cleared {count} task{'' if count == 1 else 's'}", _error
        )

    def do_STATUS(self, argument: str, by: TriggeredBy) -> Reply:
        counts = self._status()
        return "OK " + " ".join(f"{name}={value}" for name, value in counts.items())

    def do_SAVE(self, argument: str, by: TriggeredBy) -> Reply:
        if argument:
            return "ERR SAVE takes no argument (the file is set when the scheduler starts)"
        return self._changes.save().addCallbacks(
            lambda count: f"OK saved {count} task{'' if count == 1 else 's'}", _error
        )

    def do_LOAD(self, argument: str, by: TriggeredBy) -> Reply:
        if argument:
            return "ERR LOAD takes no argument (the file is set when the scheduler starts)"
        return self._changes.load(by=by).addCallbacks(
            lambda count: f"OK loaded {count} task{'' if count == 1 else 's'}", _error
        )


def _error(failure: Failure) -> str:
    error = failure.value
    if isinstance(error, TaskNotFound):
        return f"ERR {error.args[0]}"
    if isinstance(error, TaskError | LoadError | StoreError):
        return f"ERR {error}"
    log.failure("command failed", failure)
    return "ERR internal error (logged on the scheduler)"


@dataclass(frozen=True)
class Verb:
    """One command of the port, as HELP shows it and the protocol treats it."""

    usage: str  # the word and its arguments, as HELP shows them
    summary: str  # HELP's one-line description
    # None: the line protocol answers it, since it acts on the connection
    # (AUTH, SESSION, QUIT), not on the tasks.
    handler: Callable[[TcpCommands, str, TriggeredBy], Reply] | None
    # May run on a connection that has not sent AUTH yet (when a TCP token
    # is set).  Not SESSION: it would keep a connection that has shown no
    # token open for the idle timeout.
    open_before_auth: bool = False
    # Goes through the task state's queue, which keeps the order of its
    # changes: a run of queueing lines is handed over at once (one write of
    # tasks.db for the lot), while any other line waits for their replies.
    queues: bool = False

    @property
    def word(self) -> str:
        return self.usage.split(" ", 1)[0]

    @property
    def help_line(self) -> str:
        return f"{self.usage:<26} {self.summary}"


_TABLE = (
    Verb(
        "ADD <schedule> <command>",
        "add a task; schedule is 5 cron fields (H: hashed), a @macro, or 6 fields with seconds last;"
        " CRON_TZ=<zone> before it sets its time zone",
        TcpCommands.do_ADD,
        queues=True,
    ),
    Verb(
        "LIST",
        "one line per task: id, jobName, schedule, next run, command (tab-separated)",
        TcpCommands.do_LIST,
    ),
    Verb(
        "EDIT <id|jobName> <schedule> <command>",
        "change a task's schedule and command in place (it keeps its id and history)",
        TcpCommands.do_EDIT,
        queues=True,
    ),
    Verb(
        "PAUSE <id|jobName> [until <time>]",
        "stop a task from firing (until an ISO 8601 time with offset, if given)",
        TcpCommands.do_PAUSE,
        queues=True,
    ),
    Verb("RESUME <id|jobName>", "let a paused task fire again", TcpCommands.do_RESUME, queues=True),
    Verb("REMOVE <id|jobName>", "remove a task", TcpCommands.do_REMOVE, queues=True),
    Verb("CLEAR", "remove every task", TcpCommands.do_CLEAR, queues=True),
    Verb("STATUS", "counts of tasks, workers and jobs", TcpCommands.do_STATUS),
    Verb("SAVE", "write the tasks to the tasks file", TcpCommands.do_SAVE, queues=True),
    Verb("LOAD", "replace the tasks with the tasks file's", TcpCommands.do_LOAD, queues=True),
    Verb("PING", "answers PONG", TcpCommands.do_PING, open_before_auth=True),
    Verb(
        "AUTH <token>",
        "authenticate (needed first when the scheduler has a TCP token)",
        None,
        open_before_auth=True,
    ),
    Verb("HELP", "this list of commands", TcpCommands.do_HELP, open_before_auth=True),
    Verb("SESSION", "keep this connection open (for typing; after AUTH); QUIT closes it", None),
    Verb("QUIT", "close the connection", None, open_before_auth=True),
)

VERBS: dict[str, Verb] = {verb.word: verb for verb in _TABLE}

HELP = "\n".join(verb.help_line for verb in _TABLE)
