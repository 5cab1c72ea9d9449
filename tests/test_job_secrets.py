"""Secrets: the folder, their resolution into run messages, and masking on both ends."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from scheduler.access import AccessError
from scheduler.job_secrets import SecretBook, references
from scheduler.jobs import JobStatus
from scheduler.worker_messages import MASK, OutputMask, mask_text, parse_run
from tests.test_dispatch import World
from tests.test_worker_agent import Harness

VALUE = "hunter2-correct-horse"


def secrets_dir(tmp_path: Path, **secrets: str) -> Path:
    folder = tmp_path / "secrets"
    folder.mkdir(exist_ok=True)
    for name, value in secrets.items():
        path = folder / name
        path.write_text(value)
        path.chmod(0o600)
    return folder


def book(folder: Path) -> SecretBook:
    found = SecretBook(str(folder))
    found.load()
    return found


def test_a_secret_readable_by_others_is_refused_with_the_file_named(tmp_path: Path) -> None:
    folder = secrets_dir(tmp_path, DB_PASSWORD=VALUE + "\n")
    (folder / "DB_PASSWORD").chmod(0o640)
    with pytest.raises(AccessError, match=r"DB_PASSWORD can be read by others .*mode 0640.*chmod 600"):
        book(folder)
    (folder / "DB_PASSWORD").chmod(0o600)
    secrets = book(folder)
    assert secrets.secrets["DB_PASSWORD"].value == VALUE  # one trailing newline dropped
    assert VALUE not in repr(secrets.secrets["DB_PASSWORD"])


@pytest.mark.parametrize(
    ("files", "said"),
    [
        ({"bad name": VALUE}, "is not a secret name"),
        ({"SHORT": "abc"}, "shorter than 4 characters"),
        ({"ORPHAN.labels": "gpu"}, "gives labels to a secret there is no file for"),
    ],
)
def test_a_bad_file_is_refused(tmp_path: Path, files: dict[str, str], said: str) -> None:
    with pytest.raises(AccessError, match=said):
        book(secrets_dir(tmp_path, **files))


def test_a_reload_with_a_bad_file_keeps_the_secrets_read_before(tmp_path: Path) -> None:
    folder = secrets_dir(tmp_path, TOKEN=VALUE)
    secrets = book(folder)
    assert not secrets.load()
    (folder / "OTHER").write_text("x")
    (folder / "OTHER").chmod(0o600)
    with pytest.raises(AccessError):
        secrets.load()
    assert set(secrets.secrets) == {"TOKEN"}
    (folder / "OTHER").write_text("long enough")
    os.utime(folder / "OTHER", ns=(5, 5))
    assert secrets.load() and set(secrets.secrets) == {"TOKEN", "OTHER"}


def test_resolution_fills_command_and_env_and_says_what_is_missing_or_not_allowed(tmp_path: Path) -> None:
    folder = secrets_dir(tmp_path, API_KEY=VALUE, GPU_KEY="gpu-secret-value")
    (folder / "GPU_KEY.labels").write_text("gpu, cuda\n")
    secrets = book(folder)
    resolved = secrets.resolve("curl -H ${secret:API_KEY} x", {"K": "${secret:API_KEY}", "Z": "plain"}, "w1", frozenset())
    assert resolved.command == f"curl -H {VALUE} x" and resolved.env == {"K": VALUE, "Z": "plain"}
    assert resolved.mask == (VALUE,)
    assert references("echo ${secret:A} ${secret:B}", {"X": "${secret:A}"}) == ["A", "B"]
    with pytest.raises(Exception, match="no secret named 'NOPE'"):
        secrets.resolve("echo ${secret:NOPE}", {}, "w1", frozenset())
    with pytest.raises(Exception, match="secret 'GPU_KEY' is only for workers with label cuda, gpu; worker w1 has linux"):
        secrets.resolve("echo ${secret:GPU_KEY}", {}, "w1", frozenset({"linux"}))
    assert secrets.resolve("echo ${secret:GPU_KEY}", {}, "w2", frozenset({"gpu"})).mask == ("gpu-secret-value",)


def test_the_output_mask_catches_a_value_split_across_chunks() -> None:
    mask = OutputMask([VALUE, "other-secret"])
    shown = []
    for piece in ["log: hun", "ter2-corr", "ect-horse and hunt", "ing\n"]:
        shown.append(mask.feed("stdout", piece))
    shown.append(mask.flush("stdout"))
    text = "".join(shown)
    assert text == f"log: {MASK} and hunting\n"
    assert VALUE not in text
    # Only a possible start of a value is held back.
    assert OutputMask([VALUE]).feed("stdout", "plain text\n") == "plain text\n"
    assert mask_text(f"a{VALUE}b{VALUE}", [VALUE]) == f"a{MASK}b{MASK}"


def test_the_dispatcher_sends_the_value_only_in_the_run_and_masks_output(tmp_path: Path) -> None:
    world = World(secrets=book(secrets_dir(tmp_path, API_KEY=VALUE)))
    worker, link = world.connect("w1", slots=2)
    job = world.dispatcher.run_now("echo ${secret:API_KEY}", env={"KEY": "${secret:API_KEY}"})[0]
    world.clock.advance(0)
    run = next(m for m in link.sent if m["type"] == "run")
    assert run["command"] == f"echo {VALUE}" and run["env"] == {"KEY": VALUE} and run["mask"] == [VALUE]
    assert parse_run(run).mask == (VALUE,)
    stored = world.jobs.get(job.id)
    assert stored is not None and stored.command == "echo ${secret:API_KEY}" and VALUE not in json.dumps(dict(stored.env))
    seen: list[str] = []
    world.dispatcher.output_listeners.append(lambda job_id, seq, stream, data: seen.append(data))
    world.dispatcher.output(worker, job.id, 1, "stdout", f"{VALUE}\n")  # a worker that did not mask
    assert seen == [f"{MASK}\n"]
    assert world.dispatcher.live_output(job.id) == f"{MASK}\n"


def test_a_job_whose_secret_is_missing_or_not_for_its_worker_fails_before_it_is_sent(tmp_path: Path) -> None:
    folder = secrets_dir(tmp_path, GPU_KEY="gpu-secret-value")
    (folder / "GPU_KEY.labels").write_text("gpu")
    world = World(secrets=book(folder))
    _worker, link = world.connect("w1", labels=("linux",))
    unknown = world.dispatcher.run_now("echo ${secret:NOPE}")[0]
    wrong = world.dispatcher.run_now("echo ${secret:GPU_KEY}")[0]
    world.clock.advance(0)
    assert [m for m in link.sent if m["type"] == "run"] == []
    for job, said in ((unknown, "no secret named 'NOPE'"), (wrong, "only for workers with label gpu")):
        ended = world.jobs.get(job.id) or next(j for j in world.ended if j.id == job.id)
        assert ended.status is JobStatus.FAILED and said in (ended.reason or "")


def test_the_worker_masks_before_buffering_and_sending(tmp_path: Path) -> None:
    h = Harness()
    h.connect()
    h.run(7, f"echo {VALUE}", mask=[VALUE])
    run = h.runs.last
    run.emit("key=hunter2-cor")
    run.emit("rect-horse\n")
    run.emit("tail hunter2")  # could be a start: held until the end says it is not
    run.end(0)
    messages = h.link.take()
    output = "".join(
        chunk["data"] for message in messages for chunk in [message, *message.get("output", [])] if "data" in chunk
    )
    assert output == f"key={MASK}\ntail hunter2"
    assert VALUE not in json.dumps(messages)
    # What a reconnect would resend is the masked text too.
    h.disconnect()
    hello = h.connect(resume={7: 0})
    assert VALUE not in json.dumps(hello) and VALUE not in json.dumps(h.link.take())
