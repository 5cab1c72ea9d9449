"""Protected by default, with the real processes: tokens, refusals, revocation."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

from tests.e2e import TWISTD, free_port, http_json, start_scheduler, start_worker, stop, wait_until

API = "api-token-0123456789abcdef"
TCP = "tcp-token-0123456789abcdef"
WORKERS = "worker-token-0123456789abcdef"


def test_open_listener_without_tokens_refuses_to_start(tmp_path: Path) -> None:
    done = subprocess.run(
        [*TWISTD, "--pidfile=", "-n", "scheduler", "--tcp", f"tcp:{free_port()}", "--http", f"tcp:{free_port()}"],
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode != 0
    message = done.stderr.decode()
    assert "refusing to accept commands from the network without tokens" in message
    assert "--api-token-file" in message and "--tcp-token-file" in message
    assert "Traceback" not in message


def test_tokens_guard_every_door(tmp_path: Path) -> None:
    (tmp_path / "api.token").write_text(API + "\n")
    env = {"SCHEDULER_TCP_TOKEN": TCP, "SCHEDULER_WORKER_TOKEN": WORKERS}
    scheduler = start_scheduler(
        tmp_path, "--api-token-file", str(tmp_path / "api.token"), env=env, interface="0.0.0.0"
    )
    workers = []
    try:
        # The command line shows no token: they come from a file and the environment.
        assert API not in " ".join(str(arg) for arg in scheduler.process.args)  # type: ignore[union-attr]
        code, body = http_json("GET", scheduler.url + "/api/tasks")
        assert code == 401
        code, body = http_json("GET", scheduler.url + "/api/tasks", token=API)
        assert code == 200 and body == []

        assert scheduler.command("ADD * * * * * echo no\n") == ["ERR authentication required: send AUTH <token> first"]
        reply = scheduler.command(f"AUTH {TCP}\nADD @daily echo yes\n")
        assert reply[0] == "OK authenticated" and reply[1].startswith("OK id=1 ")

        good = start_worker(scheduler.http, "good", workdir=tmp_path, env={"WORKER_TOKEN": WORKERS})
        bad = start_worker(scheduler.http, "bad", workdir=tmp_path, env={"WORKER_TOKEN": "wrong-0123456789abcdef"})
        workers += [good, bad]

        def online() -> list[str]:
            _, listed = http_json("GET", scheduler.url + "/api/workers", token=API)
            assert isinstance(listed, list)
            return [w["name"] for w in listed]

        wait_until(lambda: "good" in online(), what="the good worker")
        log = (tmp_path / "scheduler.log").read_text()
        wait_until(
            lambda: "missing or wrong worker token" in (tmp_path / "scheduler.log").read_text(),
            what="the bad worker's refusal",
        )
        assert online() == ["good"]
        log = (tmp_path / "scheduler.log").read_text()
        for secret in (API, TCP, WORKERS):
            assert secret not in log
        assert "401" in (tmp_path / "worker-bad.log").read_text()
    finally:
        for worker in workers:
            stop(worker)
        stop(scheduler.process)


def test_removing_a_line_revokes_that_worker(tmp_path: Path) -> None:
    tokens = tmp_path / "workers.tokens"
    tokens.write_text("w1 w1-token-0123456789abcdef\nw2 w2-token-0123456789abcdef\n")
    scheduler = start_scheduler(tmp_path, "--worker-tokens-file", str(tokens))
    w1 = start_worker(scheduler.http, "w1", workdir=tmp_path, env={"WORKER_TOKEN": "w1-token-0123456789abcdef"})
    # w2's token used under another name is refused.
    impostor = start_worker(scheduler.http, "w3", workdir=tmp_path, env={"WORKER_TOKEN": "w2-token-0123456789abcdef"})
    try:
        def online() -> list[str]:
            _, listed = http_json("GET", scheduler.url + "/api/workers")
            assert isinstance(listed, list)
            return sorted(w["name"] for w in listed)

        wait_until(lambda: online() == ["w1"], what="w1 to connect")
        wait_until(
            lambda: "token is not valid for the worker name 'w3'" in (tmp_path / "worker-w3.log").read_text(),
            what="the impostor's refusal",
        )
        tokens.write_text("w2 w2-token-0123456789abcdef\n")
        wait_until(lambda: online() == [], timeout=30, what="w1 to be disconnected")
        assert "its token was revoked" in (tmp_path / "scheduler.log").read_text()
    finally:
        stop(w1)
        stop(impostor)
        stop(scheduler.process)


def test_a_browser_speaking_http_to_the_command_port_runs_nothing(tmp_path: Path) -> None:
    scheduler = start_scheduler(tmp_path)
    try:
        with socket.create_connection(("127.0.0.1", scheduler.tcp)) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: localhost:5050\r\nContent-Type: text/plain\r\n\r\nADD * * * * * touch pwned\n")
            assert sock.recv(100) == b""  # closed without an answer
        assert scheduler.command("LIST\n") == ["OK 0 tasks"]
    finally:
        stop(scheduler.process)


def raw_http(port: int, method: str, target: str, headers: dict[str, str] | None = None, body: bytes = b"") -> tuple[int, bytes]:
    """One request with the target sent exactly as written (no client tidies it)."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.putrequest(method, target, skip_accept_encoding=True)
        for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            connection.putheader(name, value)
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_no_spelling_of_the_api_runs_a_job_without_the_token(tmp_path: Path) -> None:
    env = {"SCHEDULER_API_TOKEN": API, "SCHEDULER_WORKER_TOKEN": WORKERS}
    scheduler = start_scheduler(tmp_path, env=env)
    worker = start_worker(scheduler.http, "w1", workdir=tmp_path, env={"WORKER_TOKEN": WORKERS})
    try:
        wait_until(
            lambda: [w["name"] for w in http_json("GET", scheduler.url + "/api/workers", token=API)[1]] == ["w1"],  # type: ignore[union-attr]
            what="the worker",
        )
        body = json.dumps({"command": "touch pwned"}).encode()
        json_headers = {"Content-Type": "application/json"}
        for target, status in [("/%61pi/jobs", 401), ("//api/jobs", 400), ("/api/%6aobs", 401), ("/api%2fjobs", 400)]:
            code, answer = raw_http(scheduler.http, "POST", target, json_headers, body)
            assert code == status, (target, answer)
            assert b"error" in answer
        code, _ = raw_http(scheduler.http, "post", "/api/jobs", json_headers, body)
        assert code == 400
        # Nothing was queued, so nothing can still run later.
        assert http_json("GET", scheduler.url + "/api/jobs", token=API) == (200, [])
        assert not (tmp_path / "pwned").exists()
        # The same route with the token does run.
        code, _job = http_json("POST", scheduler.url + "/%61pi/jobs", {"command": "touch ran"}, token=API)
        assert code == 202
        wait_until(lambda: (tmp_path / "ran").exists(), what="the job run with the token")
    finally:
        stop(worker)
        stop(scheduler.process)


def test_slow_requests_are_cut_off_at_the_deadline(tmp_path: Path) -> None:
    scheduler = start_scheduler(tmp_path, "--http-request-timeout", "1")
    lorises = []
    try:
        for _ in range(50):
            sock = socket.create_connection(("127.0.0.1", scheduler.http), timeout=15)
            sock.sendall(b"GET /api/tasks HTTP/1.1\r\nHost: localhost\r\nX-Slow: 1\r\n")
            lorises.append(sock)
        for sock in lorises:
            answer = b""
            while chunk := sock.recv(4096):  # blocks until the server answers and closes
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert http_json("GET", scheduler.url + "/api/health")[0] == 200
    finally:
        for sock in lorises:
            sock.close()
        stop(scheduler.process)


def test_an_endpoint_with_interface_twice_refuses_to_start(tmp_path: Path) -> None:
    # Twisted listens on the last interface=: 0.0.0.0 here, without tokens.
    done = subprocess.run(
        [*TWISTD, "--pidfile=", "-n", "scheduler", "--tcp", "tcp:0:interface=127.0.0.1",
         "--http", "tcp:0:interface=127.0.0.1:interface=0.0.0.0"],
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode != 0
    message = done.stderr.decode()
    assert "gives interface more than once" in message and "Traceback" not in message


def test_deleting_the_worker_tokens_file_disconnects_its_workers(tmp_path: Path) -> None:
    tokens = tmp_path / "workers.tokens"
    tokens.write_text("w1 w1-token-0123456789abcdef\n")
    scheduler = start_scheduler(tmp_path, "--worker-tokens-file", str(tokens))
    w1 = start_worker(scheduler.http, "w1", workdir=tmp_path, env={"WORKER_TOKEN": "w1-token-0123456789abcdef"})
    try:
        def online() -> list[str]:
            _, listed = http_json("GET", scheduler.url + "/api/workers")
            assert isinstance(listed, list)
            return [w["name"] for w in listed]

        wait_until(lambda: online() == ["w1"], what="w1 to connect")
        tokens.unlink()
        wait_until(lambda: online() == [], timeout=30, what="w1 to be disconnected")
        log = (tmp_path / "scheduler.log").read_text()
        assert "cannot read the worker tokens file" in log and "its token was revoked" in log
        # It cannot come back while the file is missing (it keeps trying).
        wait_until(lambda: "missing or wrong worker token" in (tmp_path / "scheduler.log").read_text(),
                   what="w1's retry to be refused")
        assert online() == []
    finally:
        stop(w1)
        stop(scheduler.process)
