"""The shared worker-protocol module, and docs/protocol.md saying the same."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from scheduler import worker_messages as wm
from scheduler.settings import Settings
from scheduler.worker_protocol import REPORTS

DOC = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text(encoding="utf-8")


def _sections(part: str) -> dict[str, str]:
    """The ``### `type` `` sections of one ``## ...`` part of the document."""
    body = DOC.split(f"## {part}\n", 1)[1].split("\n## ", 1)[0]
    chunks = re.split(r"^### ", body, flags=re.MULTILINE)[1:]
    out: dict[str, str] = {}
    for chunk in chunks:
        heading, _, text = chunk.partition("\n")
        match = re.fullmatch(r"`([a-z]+)`", heading.strip())
        if match:
            out[match.group(1)] = text
    return out


def _examples(text: str) -> list[dict[str, Any]]:
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", text, flags=re.DOTALL)]


WORKER_SECTIONS = _sections("Worker to scheduler")
SCHEDULER_SECTIONS = _sections("Scheduler to worker")


# -- the document and the module ------------------------------------------------------


def test_every_message_type_has_a_section_and_every_section_a_type() -> None:
    # ``error`` goes either way; the document describes it once, among the
    # scheduler's messages.
    assert set(WORKER_SECTIONS) | {"error"} == set(wm.WORKER_MESSAGES)
    assert set(SCHEDULER_SECTIONS) == set(wm.SCHEDULER_MESSAGES)


@pytest.mark.parametrize(
    ("kind", "direction"),
    [(kind, "worker") for kind in WORKER_SECTIONS] + [(kind, "scheduler") for kind in SCHEDULER_SECTIONS],
)
def test_the_documents_examples_parse(kind: str, direction: str) -> None:
    sections = WORKER_SECTIONS if direction == "worker" else SCHEDULER_SECTIONS
    table = wm.WORKER_MESSAGES if direction == "worker" else wm.SCHEDULER_MESSAGES
    examples = _examples(sections[kind])
    assert examples, f"no example for {kind}"
    for example in examples:
        message = wm.as_message(wm.decode(json.dumps(example)))
        assert message["type"] == kind
        table[kind](message)  # does not raise


def test_the_documented_error_text_is_the_modules() -> None:
    (example,) = _examples(SCHEDULER_SECTIONS["error"])
    with pytest.raises(wm.BadMessage) as raised:
        wm.WORKER_MESSAGES[example["message"]["type"]](example["message"])
    assert str(raised.value) == example["reason"]
    assert wm.error_fields(str(raised.value), example["message"]) == {
        key: value for key, value in example.items() if key != "type"
    }


def test_the_documented_refusal_for_a_protocol_is_the_modules() -> None:
    (example,) = _examples(SCHEDULER_SECTIONS["refused"])
    assert wm.unsupported_protocol({"protocol": 1}) == example["reason"]
    assert wm.unsupported_protocol({"protocol": wm.PROTOCOL_VERSION}) is None


def test_the_documents_numbers_are_the_modules() -> None:
    assert f"# The worker protocol (version {wm.PROTOCOL_VERSION})" in DOC
    assert wm.MAX_INT == 2**53 and "| job id | integer, 1 to 2^53;" in DOC
    assert f"| `slots` | integer, 1 to {wm.MAX_SLOTS:,} |" in DOC
    assert f"a string of 1 to {wm.MAX_NAME} characters" in DOC
    assert f"pings every {wm.PING_INTERVAL:g} s and drop a peer that has not\nanswered for {wm.PING_TIMEOUT:g} s more" in DOC
    assert f"(at most\n{wm.MAX_START_DELAY:g};" in DOC
    assert f"cut to {wm.MAX_REASON} characters" in DOC
    assert f"a list of 1 to {wm.MAX_BATCH:,} messages" in DOC
    assert f"hold `started` back for up to {wm.STARTED_HOLD * 1000:g} ms" in DOC
    assert f"at most **{Settings.ws_max_message // 2**20} MiB**" in DOC


def test_the_scheduler_handles_every_worker_message() -> None:
    # The hello is the protocol's own; a worker's error is logged like an
    # unknown type (counted, so it cannot flood the log).
    assert set(REPORTS) | {"hello", "error"} == set(wm.WORKER_MESSAGES)


def test_the_agent_handles_every_scheduler_message() -> None:
    from twisted.internet.task import Clock

    from worker.agent import WorkerAgent

    agent = WorkerAgent(Clock(), lambda *a, **k: None, name="w", slots=1, workdir="/")  # type: ignore[arg-type]
    assert set(agent._handlers) == set(wm.SCHEDULER_MESSAGES)


# -- frames ---------------------------------------------------------------------------


def test_encode_is_ascii_json_and_carries_lone_surrogates() -> None:
    payload = wm.encode("output", job=1, stream="stdout", seq=1, data="é \ud800")
    payload.decode("ascii")
    assert json.loads(payload) == {"type": "output", "job": 1, "stream": "stdout", "seq": 1, "data": "é \ud800"}


@pytest.mark.parametrize(
    ("payload", "binary", "reason"),
    [
        (b"{}", True, "messages must be JSON text frames"),
        (b"\xff", False, "not valid JSON"),
        (b"{", False, "not valid JSON"),
        (b"[" * 100_000, False, "not valid JSON"),
        ("{not json", False, "not valid JSON"),
    ],
)
def test_decode_errors(payload: bytes | str, binary: bool, reason: str) -> None:
    with pytest.raises(wm.BadMessage, match=f"^{reason}$"):
        wm.decode(payload, binary=binary)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ([1], "a message must be a JSON object"),
        ("run", "a message must be a JSON object"),
        ({"job": 1}, "field 'type' must be a string"),
        ({"type": 7}, "field 'type' must be a string"),
    ],
)
def test_what_is_not_a_message(value: object, reason: str) -> None:
    with pytest.raises(wm.BadMessage, match=f"^{reason}$"):
        wm.as_message(value)


def test_the_echo_is_type_and_job_only_and_bounded() -> None:
    assert wm.echo([1]) is None
    assert wm.echo({"type": "x" * 500, "job": 3, "data": "y" * 500}) == {"type": "x" * 100, "job": 3}
    assert wm.echo({"type": 1, "job": 2**60}) == {}
    assert wm.echo({"job": True}) == {}
    assert wm.error_fields("why", "not an object") == {"reason": "why"}


# -- parsers --------------------------------------------------------------------------


FINISHED = {"job": 3, "exitCode": 0, "signal": None, "timedOut": False, "cancelled": False, "seq": 0,
            "startedAt": 5, "finishedAt": 6}


def test_parsers_return_typed_messages() -> None:
    assert wm.parse_started({"job": 3, "at": 5, "pid": 9}) == wm.Started(3, 5.0)
    assert wm.parse_output({"job": 3, "stream": "stderr", "seq": 2, "data": "x"}) == wm.Output(3, "stderr", 2, "x")
    assert wm.parse_finished(FINISHED) == wm.Finished(3, 0, None, False, False, 0, 5.0, 6.0, ())
    inline = {**FINISHED, "seq": 1, "output": [{"stream": "stdout", "seq": 1, "data": "hi"}]}
    assert wm.parse_finished(inline).output == (("stdout", 1, "hi"),)
    assert wm.parse_rejected({"job": 3, "reason": "x" * 300}) == wm.Rejected(3, "x" * wm.MAX_REASON)
    assert wm.parse_rejected({"job": 3}) == wm.Rejected(3, "")
    welcome = {"resume": {"17": 38}, "drop": [12], "clockOffset": -1}
    assert wm.parse_welcome(welcome) == wm.Welcome({17: 38}, [12], -1.0)
    assert wm.parse_refused({"reason": None}) == wm.Refused("None")
    assert wm.parse_run({"job": 1, "command": "true", "delay": 0.04}) == wm.Run(1, "true", None, None, None, 0.04)
    assert wm.parse_cancel({"job": 1}) == wm.Cancel(1)
    assert wm.parse_ack({"jobs": [1, 2]}) == wm.Ack([1, 2])
    assert wm.parse_drop({"jobs": [1]}) == wm.Drop([1], "")
    hello = wm.parse_hello(
        {"name": "w1", "slots": 2, "instance": "i1", "time": 7, "jobs": [{"job": 4, "state": "running", "seq": 0}]}
    )
    assert hello == wm.Hello("w1", frozenset(), 2, {4: ("running", 0)}, "i1", 7.0)


@pytest.mark.parametrize(
    ("parse", "message", "reason"),
    [
        (wm.parse_started, {"job": 0, "at": 1, "pid": 1}, "field 'job' must be an integer from 1 to 9007199254740992"),
        (wm.parse_started, {"job": 1, "at": 1.8e12, "pid": 1}, "field 'at' must be a Unix time in seconds"),
        (wm.parse_started, {"job": 1, "at": 10**400, "pid": 1}, "field 'at' must be a Unix time in seconds"),
        (wm.parse_started, {"job": 1, "at": float("nan"), "pid": 1}, "field 'at' must be a Unix time in seconds"),
        (wm.parse_started, {"job": 1, "at": 1}, "field 'pid' must be an integer from 1 to 2147483647"),
        (wm.parse_output, {"job": 1, "stream": "tty", "seq": 1, "data": ""}, "field 'stream' must be 'stdout' or 'stderr'"),
        (wm.parse_output, {"job": 1, "stream": "stdout", "seq": 0, "data": ""}, "field 'seq' must be an integer from 1"),
        (wm.parse_finished, {**FINISHED, "exitCode": 2**31}, "field 'exitCode' must be a 32-bit integer or null"),
        (wm.parse_finished, {**FINISHED, "timedOut": 1}, "field 'timedOut' must be true or false"),
        (wm.parse_finished, {"job": 18}, "field 'exitCode' is required"),
        (wm.parse_finished, {**FINISHED, "timedOut": True, "cancelled": True},
         "fields 'timedOut' and 'cancelled' cannot both be true"),
        (wm.parse_rejected, {"job": 3, "reason": 7}, "field 'reason' must be a string or null"),
        (wm.parse_finished, {**FINISHED, "seq": -1}, "field 'seq' must be an integer from 0"),
        (wm.parse_finished, {**FINISHED, "output": [{"stream": "stdout", "seq": 0, "data": ""}]},
         "field 'seq' must be an integer from 1"),
        (wm.parse_hello, {"name": "a b", "slots": 1}, "field 'name' must be a string of 1 to 100 characters without"),
        (wm.parse_hello, {"name": "w", "slots": 0}, "field 'slots' must be an integer from 1 to 10000"),
        (wm.parse_hello, {"name": "w", "slots": 1, "time": 1}, "field 'instance' must be a string of 1 to 100"),
        (wm.parse_hello, {"name": "w", "slots": 1, "instance": "i"}, "field 'time' must be a Unix time in seconds"),
        (wm.parse_hello, {"name": "w", "slots": 1, "labels": ["a,b"]}, "field 'labels' must be a list of strings"),
        (wm.parse_run, {"job": 1, "command": "x", "timeout": float("inf")}, "field 'timeout' must be a non-negative number or null"),
        (wm.parse_run, {"job": 1, "command": "x", "timeout": 10**400}, "field 'timeout' must be a non-negative number or null"),
        (wm.parse_run, {"job": 1, "command": "x", "delay": 6}, "field 'delay' must be at most 5 seconds"),
        (wm.parse_welcome, {"resume": {" 17": 1}, "clockOffset": 0}, "field 'resume' must map job ids to integer seqs"),
        (wm.parse_welcome, {"drop": [True], "clockOffset": 0}, "field 'drop' must be a list of integers"),
        (wm.parse_welcome, {}, "field 'clockOffset' must be a number of seconds"),
        (wm.parse_ack, {"job": 1}, "field 'jobs' must be a non-empty list of job ids"),
        (wm.parse_drop, {"jobs": []}, "field 'jobs' must be a non-empty list of job ids"),
    ],
)
def test_parser_errors(parse: Any, message: dict[str, Any], reason: str) -> None:
    with pytest.raises(wm.BadMessage) as raised:
        parse(message)
    assert str(raised.value).startswith(reason)


def test_websocket_options_are_the_documented_pings() -> None:
    options = wm.websocket_options(max_message=1024, handshake_timeout=3)
    assert (options["autoPingInterval"], options["autoPingTimeout"]) == (wm.PING_INTERVAL, wm.PING_TIMEOUT)
    assert options["maxMessagePayloadSize"] == options["maxFramePayloadSize"] == 1024


def test_no_delay_turns_nagle_off_where_there_is_tcp() -> None:
    calls: list[bool] = []

    class Tcp:
        def setTcpNoDelay(self, enabled: bool) -> None:
            calls.append(enabled)

    class Unix:
        def setTcpNoDelay(self, enabled: bool) -> None:
            raise OSError("not a TCP socket")

    wm.no_delay(Tcp())
    wm.no_delay(Unix())
    wm.no_delay(object())
    assert calls == [True]


# -- what each end really sends parses at the other ---------------------------------


def test_everything_the_agent_sends_parses_at_the_scheduler() -> None:
    from tests.test_worker_agent import Harness

    h = Harness()
    sent = [h.connect(), *h.run(1)]
    h.runs.last.emit("é\n")
    h.runs.last.end(0)  # at once: one finished, its output inside
    sent += [*h.link.take(), *h.run(2)]
    h.runs.last.emit("x")
    h.clock.advance(wm.STARTED_HOLD)  # a longer one: started, then output
    h.runs.last.emit("y")
    sent += [*h.link.take(), *h.run(3), *h.run(4)]  # 4: no free slot
    h.clock.advance(wm.STARTED_HOLD)
    sent += h.link.take()
    assert [m["type"] for m in sent] == ["hello", "finished", "started", "output", "output", "rejected", "started"]
    assert sent[1]["output"] == [{"stream": "stdout", "seq": 1, "data": "é\n"}]
    assert wm.unsupported_protocol(sent[0]) is None
    for message in sent:
        wm.WORKER_MESSAGES[message["type"]](message)


def test_everything_the_dispatcher_sends_parses_at_the_worker() -> None:
    from twisted.internet.task import Clock

    from scheduler.dispatch import Dispatcher, NoRecorder
    from scheduler.job_book import JobBook
    from scheduler.worker_registry import Worker, WorkerRegistry
    from tests.fakes import FakeLink

    clock = Clock()
    clock.advance(1_000_000)
    dispatcher = Dispatcher(clock, JobBook(clock), WorkerRegistry(), NoRecorder(), lambda task_id: None)
    link = FakeLink()
    worker = Worker("w1", frozenset(), 2, link, clock.seconds())
    welcome = dispatcher.hello(worker, {7: ("running", 0)})
    link.send("welcome", **welcome)
    first, second = (job.id for _ in range(2) for job in dispatcher.run_now("true", target="worker:w1"))
    clock.advance(0)
    dispatcher.cancel(second)
    now = clock.seconds()
    dispatcher.finished(worker, wm.Finished(first, 0, None, False, False, 0, now, now, ()))
    clock.advance(0)
    kinds = [m["type"] for m in link.sent]
    assert {"welcome", "run", "cancel", "ack"} <= set(kinds), kinds
    for message in link.sent:
        wm.SCHEDULER_MESSAGES[message["type"]](message)
