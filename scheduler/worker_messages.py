"""The worker protocol's messages, for both ends (docs/protocol.md says the same).

The scheduler (``scheduler/worker_protocol.py``) and the worker agent
(``worker/agent.py``) both decode, check and answer messages through this
module: one parser per message type, returning a typed value, one set of
error texts, one JSON encoding, the ``error`` echo, the link interface and
the WebSocket settings both ends share.  It imports nothing of either end,
so the worker package can use it without the scheduler's dependencies.

To add a message type: a section in docs/protocol.md, a dataclass and a
parser here, an entry in ``WORKER_MESSAGES`` or ``SCHEDULER_MESSAGES``, and
a handler on the receiving end (``tests/test_worker_messages.py`` checks the
document and these tables against each other).

Frames go out through an :class:`Outbox`, which gathers what one end says
within a turn of its reactor into one frame (a ``batch``); ``unbatch``
undoes that on the receiving end.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime

PROTOCOL_VERSION = 2

# Ids and sequence numbers stay exact in JSON and fit SQLite's integers.
MAX_INT = 2**53
# Unix times up to the year 9999: anything else is a unit mistake.
MAX_TIME = 253402300799.0
# Names, labels, instance ids, and what an error echoes of a type.
MAX_NAME = 100
MAX_SLOTS = 10_000
# A rejected run's reason is kept for the log, cut to this.
MAX_REASON = 200
# The scheduler sends a cron fire's run up to 50 ms ahead of its second,
# with the delay to wait; a far larger one would hold a slot for nothing.
MAX_START_DELAY = 5.0
# Messages in one batch frame.
MAX_BATCH = 1000
# What an Outbox puts in one frame before it starts another: well under
# the 2 MiB frame limit, whatever the messages hold.
BATCH_BYTES = 512 * 1024
# A worker may hold a job's ``started`` back this long: a job that ends
# sooner is reported by its ``finished`` alone (start, output and exit).
STARTED_HOLD = 0.05

# Both ends ping every 20 s and drop a peer silent for 20 s more, so a dead
# NAT mapping is noticed within a minute on both sides.
PING_INTERVAL = 20.0
PING_TIMEOUT = 20.0
CLOSE_HANDSHAKE_TIMEOUT = 5.0

# A scheduler that stops on purpose (SIGTERM, Ctrl-C, docker stop) closes
# each worker connection with WebSocket's "going away" code, so a worker
# tells a restart from a crash (1006) and dials again at once.
GOING_AWAY = 1001
GOING_AWAY_REASON = "scheduler restarting"
# How long a stopping scheduler waits for its workers to answer that close.
GOING_AWAY_WAIT = 2.0


class BadMessage(ValueError):
    """A message that breaks the protocol; ``str()`` is the reason ``error`` sends."""


# -- the link -----------------------------------------------------------------------


class Link(Protocol):
    """One end's view of a connection: send a message, or close it."""

    def send(self, type: str, /, **fields: Any) -> None: ...

    def close(self, reason: str) -> None: ...


# -- frames -------------------------------------------------------------------------


def encode(type: str, /, **fields: object) -> bytes:
    """One message as a text frame's payload.

    JSON's ``\\u`` escapes for everything beyond ASCII: the payload is
    valid UTF-8 whatever the strings hold, lone surrogates included (job
    output may carry them).
    """
    return _dumps(type, fields).encode("ascii")


def _dumps(type: str, fields: Mapping[str, object]) -> str:
    return json.dumps({"type": type, **fields})


def decode(payload: bytes | str, *, binary: bool = False) -> object:
    """A frame's JSON value (any value: ``as_message`` checks it is a message)."""
    if binary:
        raise BadMessage("messages must be JSON text frames")
    try:
        return json.loads(payload.decode("utf-8") if isinstance(payload, bytes) else payload)
    # Deep nesting raises RecursionError rather than ValueError.
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadMessage("not valid JSON") from None


def as_message(value: object) -> dict[str, Any]:
    """*value* if it is a message: a JSON object with a string ``type``."""
    if not isinstance(value, dict):
        raise BadMessage("a message must be a JSON object")
    if not isinstance(value.get("type"), str):
        raise BadMessage("field 'type' must be a string")
    return value


def echo(received: object) -> dict[str, Any] | None:
    """What an ``error`` repeats of a bad message: its ``type`` and ``job``.

    Never the whole message: a peer that sends megabytes of junk and reads
    nothing would have every byte of it queued back to it.
    """
    if not isinstance(received, dict):
        return None
    out: dict[str, Any] = {}
    kind = received.get("type")
    if isinstance(kind, str):
        out["type"] = kind[:MAX_NAME]
    job = received.get("job")
    if isinstance(job, int) and not isinstance(job, bool) and abs(job) <= MAX_INT:
        out["job"] = job
    return out


def error_fields(reason: str, received: object = None) -> dict[str, Any]:
    """The fields of an ``error`` answering *received* (``message`` only for an object)."""
    fields: dict[str, Any] = {"reason": reason}
    echoed = echo(received)
    if echoed is not None:
        fields["message"] = echoed
    return fields


def unbatch(message: dict[str, Any]) -> list[object]:
    """The messages one received message stands for: a batch's entries, or itself.

    The entries are checked one by one by the caller (each gets its own
    ``error``), so only the batch's own shape is checked here.
    """
    if message["type"] != "batch":
        return [message]
    entries = message.get("messages")
    if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_BATCH:
        raise BadMessage(f"field 'messages' must be a list of 1 to {MAX_BATCH} messages")
    return entries


def as_entry(value: object) -> dict[str, Any]:
    """One entry of a batch as a message (a batch may not hold another)."""
    message = as_message(value)
    if message["type"] == "batch":
        raise BadMessage("a batch may not contain another batch")
    return message


def unsupported_protocol(message: Mapping[str, Any]) -> str | None:
    """Why a hello's protocol is refused, or None if the scheduler speaks it."""
    protocol = message.get("protocol")
    if isinstance(protocol, bool) or protocol != PROTOCOL_VERSION:
        # As JSON, as the worker wrote it (null, not None), and short.
        written = json.dumps(protocol)[:20]
        return (
            f"protocol {written} is not supported: this scheduler speaks protocol {PROTOCOL_VERSION}; "
            "upgrade the worker to the scheduler's release"
        )
    return None


class Outbox:
    """What one end sends, gathered per reactor turn into as few frames as fit.

    ``send`` queues a message and asks *clock* for a call in the same turn's
    wake (``callLater(0)``); by then every message that turn produced, such
    as the ``run`` for each job one commit placed on a worker, is queued, and
    goes out as one frame: a ``batch`` when there are several.  ``ack``
    messages are merged into one ``ack`` listing all their jobs, at the end
    of the frame.  ``flush`` sends at once (before a close, say).
    """

    def __init__(self, clock: IReactorTime, write: Callable[[bytes], None]) -> None:
        self._clock = clock
        self._write = write
        self._queued: list[str] = []
        self._acks: list[int] = []
        self._call: IDelayedCall | None = None

    def send(self, type: str, /, **fields: object) -> None:
        if type == "ack":
            jobs = fields.get("jobs")
            assert isinstance(jobs, list)
            self._acks.extend(jobs)
        else:
            self._queued.append(_dumps(type, fields))
        if self._call is None:
            self._call = self._clock.callLater(0, self.flush)

    def flush(self) -> None:
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None
        queued, self._queued = self._queued, []
        if self._acks:
            queued.append(_dumps("ack", {"jobs": self._acks}))
            self._acks = []
        for frame in frames(queued):
            self._write(frame)

    def discard(self) -> None:
        """Forget what is queued (the connection is gone)."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._queued = []
        self._acks = []


def frames(messages: Sequence[str]) -> list[bytes]:
    """Encoded messages as frames: alone, or batched by MAX_BATCH and BATCH_BYTES."""
    out: list[bytes] = []
    group: list[str] = []
    size = 0
    for message in messages:
        if group and (len(group) == MAX_BATCH or size + len(message) > BATCH_BYTES):
            out.append(_frame(group))
            group, size = [], 0
        group.append(message)
        size += len(message) + 2
    if group:
        out.append(_frame(group))
    return out


def _frame(group: list[str]) -> bytes:
    if len(group) == 1:
        return group[0].encode("ascii")
    return ('{"type": "batch", "messages": [' + ", ".join(group) + "]}").encode("ascii")


def websocket_options(
    *,
    max_message: int,
    handshake_timeout: float,
    ping_interval: float = PING_INTERVAL,
    ping_timeout: float = PING_TIMEOUT,
) -> dict[str, Any]:
    """Autobahn protocol options for either end (``setProtocolOptions(**...)``)."""
    return {
        "autoPingInterval": ping_interval,
        "autoPingTimeout": ping_timeout,
        "maxMessagePayloadSize": max_message,
        "maxFramePayloadSize": max_message,
        "openHandshakeTimeout": handshake_timeout,
        "closeHandshakeTimeout": CLOSE_HANDSHAKE_TIMEOUT,
    }


def no_delay(transport: object) -> None:
    """Turn off Nagle's algorithm on a TCP transport (a no-op for others).

    Autobahn tries to set TCP_NODELAY before it has copied its options onto
    the protocol, so it never does: without it a small frame sent right
    after another (a ``finished`` after its ``started``) waits for the
    peer's delayed ACK, 40 ms on Linux.  Both ends call this from
    ``connectionMade``.
    """
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        try:
            set_no_delay(True)
        except OSError:
            pass  # not a TCP socket (a Unix socket, say)


# -- fields -------------------------------------------------------------------------

_INTEGER_KEY = re.compile(r"-?[0-9]+")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(message: Mapping[str, Any], name: str, *, low: int = 0, high: int = MAX_INT) -> int:
    value = message.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadMessage(f"field '{name}' must be an integer from {low} to {high}")
    return value


def _job(message: Mapping[str, Any]) -> int:
    return _int(message, "job", low=1)


def _signed32(message: Mapping[str, Any], name: str) -> int | None:
    value = message.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not -(2**31) <= value < 2**31):
        raise BadMessage(f"field '{name}' must be a 32-bit integer or null")
    return value


def _time(message: Mapping[str, Any], name: str) -> float:
    """A Unix time in seconds."""
    value = message.get(name)
    # The range also rules out NaN and the infinities json.loads accepts.
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= MAX_TIME:
        raise BadMessage(f"field '{name}' must be a Unix time in seconds")
    return float(value)


def _optional_time(message: Mapping[str, Any], name: str) -> float | None:
    return None if message.get(name) is None else _time(message, name)


def _duration(message: Mapping[str, Any], name: str) -> float | None:
    """Seconds, or null for none."""
    value = message.get(name)
    if value is None:
        return None
    # json.loads accepts NaN and Infinity, which no timer can use, and ints
    # too large for a float (which math.isfinite would raise on).
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= sys.float_info.max:
        raise BadMessage(f"field '{name}' must be a non-negative number or null")
    return float(value)


def _name(message: Mapping[str, Any], name: str) -> str:
    value = message.get(name)
    if not _is_name(value):
        raise BadMessage(
            f"field '{name}' must be a string of 1 to {MAX_NAME} characters without spaces, commas or colons"
        )
    assert isinstance(value, str)
    return value


def _is_name(value: object) -> bool:
    # Names go into targets ("worker:<name>", "label:<label>") and
    # comma-separated lists, so those characters would be ambiguous.
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_NAME
        and not any(ch.isspace() or ch in ",:" for ch in value)
    )


def _text(message: Mapping[str, Any], name: str) -> str:
    value = message.get(name)
    if not isinstance(value, str):
        raise BadMessage(f"field '{name}' must be a string")
    return value


def _optional_text(message: Mapping[str, Any], name: str) -> str | None:
    value = message.get(name)
    if value is not None and not isinstance(value, str):
        raise BadMessage(f"field '{name}' must be a string or null")
    return value


def _bool(message: Mapping[str, Any], name: str) -> bool:
    value = message.get(name)
    if not isinstance(value, bool):
        raise BadMessage(f"field '{name}' must be true or false")
    return value


def _stream(message: Mapping[str, Any]) -> str:
    stream = message.get("stream")
    if stream not in ("stdout", "stderr"):
        raise BadMessage("field 'stream' must be 'stdout' or 'stderr'")
    assert isinstance(stream, str)
    return stream


def _env(message: Mapping[str, Any], name: str) -> dict[str, str] | None:
    value = message.get(name)
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise BadMessage(f"field '{name}' must be an object of strings or null")
    return value


def _int_list(message: Mapping[str, Any], name: str) -> list[int]:
    value = message.get(name, [])
    if not isinstance(value, list) or not all(_is_int(v) for v in value):
        raise BadMessage(f"field '{name}' must be a list of integers")
    return value


def _job_list(message: Mapping[str, Any], name: str) -> list[int]:
    value = message.get(name)
    if (
        not isinstance(value, list)
        or not value
        or not all(_is_int(v) and 1 <= v <= MAX_INT for v in value)
    ):
        raise BadMessage(f"field '{name}' must be a non-empty list of job ids")
    return value


def _optional(message: Mapping[str, Any], name: str, default: Any) -> Any:
    """An optional field's value: missing and null both mean *default*."""
    value = message.get(name)
    return default if value is None else value


def _required(message: Mapping[str, Any], *names: str) -> None:
    """Fields that may be null but must be there."""
    for name in names:
        if name not in message:
            raise BadMessage(f"field '{name}' is required")


def _seq_map(message: Mapping[str, Any], name: str) -> dict[int, int]:
    value = message.get(name, {})
    problem = BadMessage(f"field '{name}' must map job ids to integer seqs")
    if not isinstance(value, dict):
        raise problem
    out: dict[int, int] = {}
    for key, seq in value.items():
        # JSON object keys are strings; int() alone would also take " 17"
        # and "1_7", which no scheduler means.
        if not _INTEGER_KEY.fullmatch(key) or not _is_int(seq):
            raise problem
        out[int(key)] = seq
    return out


# -- worker to scheduler ------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    name: str
    labels: frozenset[str]
    slots: int
    # job id -> (state, last seq) for the jobs the worker still holds.
    jobs: dict[int, tuple[str, int]]
    # The agent process's id: the same instance reconnecting may take its
    # name over at once.
    instance: str
    # The worker's clock when it sent the hello.
    time: float


def parse_hello(message: Mapping[str, Any]) -> Hello:
    """A hello's fields; its ``protocol`` is checked first, by ``unsupported_protocol``."""
    name = _name(message, "name")
    labels = _optional(message, "labels", [])
    if not isinstance(labels, list) or not all(_is_name(label) for label in labels):
        raise BadMessage(
            f"field 'labels' must be a list of strings of 1 to {MAX_NAME} characters "
            "without spaces, commas or colons"
        )
    slots = _int(message, "slots", low=1, high=MAX_SLOTS)
    instance = _name(message, "instance")
    sent = _time(message, "time")
    jobs = _optional(message, "jobs", [])
    if not isinstance(jobs, list):
        raise BadMessage("field 'jobs' must be a list")
    reported: dict[int, tuple[str, int]] = {}
    for entry in jobs:
        if not isinstance(entry, dict):
            raise BadMessage("each entry of 'jobs' must be an object")
        state = entry.get("state")
        if state not in ("running", "finished"):
            raise BadMessage("a job's 'state' must be 'running' or 'finished'")
        reported[_job(entry)] = (state, _int(entry, "seq"))
    return Hello(name, frozenset(labels), slots, reported, instance, sent)


@dataclass(frozen=True)
class Started:
    job: int
    at: float


def parse_started(message: Mapping[str, Any]) -> Started:
    job = _job(message)
    at = _time(message, "at")
    # pid is for people reading the log; nothing depends on it.
    _int(message, "pid", low=1, high=2**31 - 1)
    return Started(job, at)


@dataclass(frozen=True)
class Output:
    job: int
    stream: str
    seq: int
    data: str


def parse_output(message: Mapping[str, Any]) -> Output:
    return Output(_job(message), *_chunk(message))


def _chunk(message: Mapping[str, Any]) -> tuple[str, int, str]:
    stream = _stream(message)
    seq = _int(message, "seq", low=1)
    return stream, seq, _text(message, "data")


@dataclass(frozen=True)
class Finished:
    job: int
    exit_code: int | None
    signal: int | None
    timed_out: bool
    cancelled: bool
    # The job's last output chunk: the scheduler checks it has them all.
    seq: int
    started_at: float
    finished_at: float
    # Chunks not sent before, as (stream, seq, data): a quick job's output.
    output: tuple[tuple[str, int, str], ...]


def parse_finished(message: Mapping[str, Any]) -> Finished:
    job = _job(message)
    _required(message, "exitCode", "signal")
    exit_code = _signed32(message, "exitCode")
    signal = _signed32(message, "signal")
    output = _optional(message, "output", [])
    if not isinstance(output, list):
        raise BadMessage("field 'output' must be a list of chunks")
    chunks = []
    for chunk in output:
        if not isinstance(chunk, dict):
            raise BadMessage("each entry of 'output' must be an object")
        chunks.append(_chunk(chunk))
    timed_out = _bool(message, "timedOut")
    cancelled = _bool(message, "cancelled")
    if timed_out and cancelled:
        # The worker decides which came first; the scheduler will not guess.
        raise BadMessage("fields 'timedOut' and 'cancelled' cannot both be true")
    return Finished(
        job=job,
        exit_code=exit_code,
        signal=signal,
        timed_out=timed_out,
        cancelled=cancelled,
        seq=_int(message, "seq"),
        started_at=_time(message, "startedAt"),
        finished_at=_time(message, "finishedAt"),
        output=tuple(chunks),
    )


@dataclass(frozen=True)
class Rejected:
    job: int
    reason: str


def parse_rejected(message: Mapping[str, Any]) -> Rejected:
    job = _job(message)
    reason = _optional_text(message, "reason") or ""
    return Rejected(job, reason[:MAX_REASON])


# -- scheduler to worker ------------------------------------------------------------


@dataclass(frozen=True)
class Welcome:
    # job id -> the seq up to which the scheduler has every chunk.
    resume: dict[int, int]
    drop: list[int]
    # Seconds the scheduler's clock is ahead of the worker's.
    clock_offset: float


def parse_welcome(message: Mapping[str, Any]) -> Welcome:
    offset = message.get("clockOffset")
    if isinstance(offset, bool) or not isinstance(offset, int | float) or not abs(offset) <= MAX_TIME:
        raise BadMessage("field 'clockOffset' must be a number of seconds")
    return Welcome(_seq_map(message, "resume"), _int_list(message, "drop"), float(offset))


@dataclass(frozen=True)
class Refused:
    reason: str


def parse_refused(message: Mapping[str, Any]) -> Refused:
    reason = message.get("reason")
    return Refused(reason if isinstance(reason, str) else repr(reason))


@dataclass(frozen=True)
class Run:
    job: int
    command: str
    env: dict[str, str] | None
    cwd: str | None
    timeout: float | None
    # Seconds to wait before starting (a cron fire sent ahead of its second).
    delay: float
    # Values to replace with MASK in the output (the job's secrets).
    mask: tuple[str, ...] = ()


def parse_run(message: Mapping[str, Any]) -> Run:
    job = _job(message)
    command = _text(message, "command")
    env = _env(message, "env")
    cwd = _optional_text(message, "cwd")
    timeout = _duration(message, "timeout")
    delay = _duration(message, "delay") or 0.0
    if delay > MAX_START_DELAY:
        raise BadMessage(f"field 'delay' must be at most {MAX_START_DELAY:g} seconds")
    mask = _optional(message, "mask", [])
    if not isinstance(mask, list) or not all(isinstance(value, str) and value for value in mask):
        raise BadMessage("field 'mask' must be a list of non-empty strings")
    return Run(job, command, env, cwd, timeout, delay, tuple(mask))


# -- masking secrets in output (the run's ``mask``) -------------------------------

#: What a masked value reads as in the output.
MASK = "***"


def mask_text(text: str, values: Sequence[str]) -> str:
    """*text* with every one of *values* replaced by MASK, the longest first."""
    for value in sorted(values, key=len, reverse=True):
        if value in text:
            text = text.replace(value, MASK)
    return text


class OutputMask:
    """Masks values in a stream of output chunks, also across chunk boundaries.

    A chunk's end that could be the start of a value is held back until the
    next chunk (or :meth:`flush`) says whether it is one; each stream is
    held apart.  Nothing else is delayed.
    """

    def __init__(self, values: Sequence[str]) -> None:
        self._values = sorted({value for value in values if value}, key=len, reverse=True)
        self._held: dict[str, str] = {}

    def __bool__(self) -> bool:
        return bool(self._values)

    def feed(self, stream: str, text: str) -> str:
        """The part of the output so far that can be shown, masked."""
        text = mask_text(self._held.pop(stream, "") + text, self._values)
        keep = self._open_prefix(text)
        if keep:
            self._held[stream] = text[-keep:]
            text = text[:-keep]
        return text

    def flush(self, stream: str) -> str:
        """What is held back of *stream*, at its end."""
        return self._held.pop(stream, "")

    def _open_prefix(self, text: str) -> int:
        """The length of the longest end of *text* that begins a value (0: none)."""
        best = 0
        for value in self._values:
            for size in range(min(len(value) - 1, len(text)), best, -1):
                if text.endswith(value[:size]):
                    best = size
                    break
        return best


@dataclass(frozen=True)
class Cancel:
    job: int


def parse_cancel(message: Mapping[str, Any]) -> Cancel:
    return Cancel(_job(message))


@dataclass(frozen=True)
class Ack:
    jobs: list[int]


def parse_ack(message: Mapping[str, Any]) -> Ack:
    return Ack(_job_list(message, "jobs"))


@dataclass(frozen=True)
class Drop:
    jobs: list[int]
    reason: str


def parse_drop(message: Mapping[str, Any]) -> Drop:
    reason = message.get("reason")
    return Drop(_job_list(message, "jobs"), reason if isinstance(reason, str) else "")


# -- either way ---------------------------------------------------------------------


@dataclass(frozen=True)
class Error:
    reason: object
    # The type and job of the message it answers, if it was an object.
    message: object


def parse_error(message: Mapping[str, Any]) -> Error:
    # Only ever logged: a peer's complaint must not start another round.
    return Error(message.get("reason"), message.get("message"))


# One table per direction: every message type, and its parser.
WORKER_MESSAGES: Mapping[str, Callable[[Mapping[str, Any]], object]] = {
    "hello": parse_hello,
    "started": parse_started,
    "output": parse_output,
    "finished": parse_finished,
    "rejected": parse_rejected,
    "error": parse_error,
}
SCHEDULER_MESSAGES: Mapping[str, Callable[[Mapping[str, Any]], object]] = {
    "welcome": parse_welcome,
    "refused": parse_refused,
    "run": parse_run,
    "cancel": parse_cancel,
    "ack": parse_ack,
    "drop": parse_drop,
    "error": parse_error,
}
