"""The deployment files agree with the code: Dockerfile, entrypoint, compose, systemd.

No Docker engine runs where the tests run, so nothing here builds an image.
Instead every command line the deployment files hand to ``twistd`` is
checked against the options ``twistd scheduler`` and ``twistd worker``
really have, the ports, paths and variable names against the code's, and
the image's scheduler command is actually started (with free ports and
tokens, through this venv's twistd) until it answers ``/api/health``.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from twisted.python import reflect, usage
from twisted.scripts._twistd_unix import ServerOptions  # what twistd uses on POSIX

import scheduler.tap
import worker.tap
from scheduler.access import is_loopback
from scheduler.http_guard import HEALTH_PATH, is_public
from scheduler.settings import Settings
from tests.e2e import free_port, stop, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
ENTRYPOINT = DEPLOY / "docker-entrypoint.sh"
UNITS = DEPLOY / "systemd"
VENV_BIN = Path(sys.executable).parent
TOKEN_VARIABLES = {"SCHEDULER_API_TOKEN", "SCHEDULER_TCP_TOKEN", "SCHEDULER_WORKER_TOKEN", "WORKER_TOKEN"}
TOKENS = {
    "api_token": "api-0123456789abcdef0123456789abcdef",
    "tcp_token": "tcp-0123456789abcdef0123456789abcdef",
    "worker_token": "wrk-0123456789abcdef0123456789abcdef",
}
ROLES: dict[str, type[usage.Options]] = {"scheduler": scheduler.tap.Options, "worker": worker.tap.Options}


# -- options ------------------------------------------------------------------


def declared(options: type[usage.Options]) -> tuple[set[str], set[str]]:
    """(parameters, flags): the long option names a usage.Options declares."""
    parameters: list[list[Any]] = []
    flags: list[list[Any]] = []
    reflect.accumulateClassList(options, "optParameters", parameters)
    reflect.accumulateClassList(options, "optFlags", flags)
    return {p[0] for p in parameters}, {f[0] for f in flags}


def default(options: type[usage.Options], name: str) -> Any:
    parameters: list[list[Any]] = []
    reflect.accumulateClassList(options, "optParameters", parameters)
    return next(p[2] for p in parameters if p[0] == name)


def parse_options(args: list[str], options: type[usage.Options]) -> dict[str, str | bool]:
    """Each ``--name value``/``--name=value``/``--flag`` in *args*; the last one wins, as in twistd."""
    parameters, flags = declared(options)
    found: dict[str, str | bool] = {}
    words = iter(args)
    for word in words:
        assert word.startswith("--"), f"{word!r}: not an option (twistd {options.__module__} takes no arguments)"
        name, equals, value = word[2:].partition("=")
        if name in flags:
            assert not equals, f"--{name} is a flag and takes no value"
            found[name] = True
        else:
            assert name in parameters, f"--{name} is not an option of {options.__module__}.Options"
            found[name] = value if equals else next(words)
    return found


def split_twistd(argv: list[str]) -> tuple[list[str], str, list[str]]:
    """A twistd command line as (twistd's own options, the plugin, the plugin's options)."""
    assert Path(argv[0]).name == "twistd", argv
    server = ServerOptions()
    takes_value = {name.rstrip("=") for name in server.longOpt if name.endswith("=")}
    flags = {name for name in server.longOpt if not name.endswith("=")}
    own: list[str] = []
    rest = iter(argv[1:])
    for word in rest:
        if word in ROLES:
            return own, word, list(rest)
        if word.startswith("--"):
            name, equals, _ = word[2:].partition("=")
            assert name in takes_value | flags, f"twistd has no option --{name}"
            own.append(word)
            if name in takes_value and not equals:
                own.append(next(rest))
        else:
            assert re.fullmatch(r"-[A-Za-z]", word) and word[1] in server.shortOpt, f"twistd has no option {word}"
            own.append(word)
    raise AssertionError(f"no scheduler or worker plugin in {argv}")


def check_twistd(argv: list[str], role: str) -> dict[str, str | bool]:
    """Asserts *argv* runs ``twistd <role>`` in the foreground without a pid file; returns its options."""
    own, plugin, rest = split_twistd(argv)
    assert plugin == role, argv
    # In the foreground, for docker and systemd alike ...
    assert "-n" in own or "--nodaemon" in own, argv
    # ... and without twistd.pid: a restarted container has the same pid, which a
    # stale pid file would make twistd take for a running copy of itself.
    assert "--pidfile=" in own, argv
    return parse_options(rest, ROLES[role])


def endpoint_port(endpoint: str) -> int:
    kind, port, *_ = re.split(r"(?<!\\):", endpoint)
    assert kind == "tcp", endpoint
    return int(port)


HTTP_PORT = endpoint_port(default(scheduler.tap.Options, "http"))
TCP_PORT = endpoint_port(default(scheduler.tap.Options, "tcp"))
WORKER_PATH = urlsplit(default(worker.tap.Options, "url")).path


def test_defaults_are_the_documented_ones() -> None:
    assert (HTTP_PORT, TCP_PORT, WORKER_PATH) == (3000, 5050, "/ws/worker")


# -- Dockerfile ---------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines = [line for line in (ROOT / "Dockerfile").read_text().splitlines() if not line.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in text.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            out.append((keyword.upper(), " ".join(rest.split())))
    return out


def instructions(name: str) -> list[str]:
    return [rest for keyword, rest in dockerfile() if keyword == name]


def exec_form(text: str) -> list[str]:
    value = json.loads(text)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), text
    return value


def test_dockerfile_installs_the_project_as_make_does() -> None:
    (base,) = instructions("FROM")
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", base)
    # The same install `make install`/`make test` run: pip install of this checkout.
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"pip install\b[^\n]*\s\.$", makefile, re.MULTILINE)
    assert ". /tmp/src" in instructions("COPY")
    # Not editable (-e), and the source tree goes in the same layer.
    installs = [run for run in instructions("RUN") if re.search(r"\bpip install /tmp/src( |$)", run)]
    assert len(installs) == 1
    install = installs[0]
    assert install.rstrip().endswith("rm -rf /tmp/src")
    assert "deploy/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh" in install
    assert install.index("pip install") < install.index("compileall")
    # The plugin cache is built after, as root, from plugin files dated back,
    # so a read-only install loads the plugins without rescanning.
    (cache_step,) = [run for run in instructions("RUN") if "getPlugins(IPlugin)" in run]
    assert instructions("RUN").index(install) < instructions("RUN").index(cache_step)
    assert cache_step.index("touch -d") < cache_step.index("getPlugins(IPlugin)")
    assert "twistd scheduler --help" in cache_step and "twistd worker --help" in cache_step
    # ... and the build fails if the cache is not strictly newer, in whole seconds.
    assert "is not strictly newer than" in cache_step
    assert "int(os.stat(" in cache_step and ">= cache" in cache_step


def test_dockerfile_runs_unprivileged_with_data_in_a_volume() -> None:
    steps = dockerfile()
    users = [rest for keyword, rest in steps if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    # Installing happens before the switch to the unprivileged user.
    last_run = max(i for i, (keyword, _) in enumerate(steps) if keyword == "RUN")
    assert last_run < max(i for i, (keyword, _) in enumerate(steps) if keyword == "USER")
    assert instructions("WORKDIR")[-1] == "/data"
    assert "/data" in exec_form(instructions("VOLUME")[-1])
    assert "chown jobsched:jobsched /data" in instructions("RUN")[-1]
    assert {int(port) for port in " ".join(instructions("EXPOSE")).split()} == {HTTP_PORT, TCP_PORT}
    assert exec_form(instructions("ENTRYPOINT")[-1]) == ["docker-entrypoint.sh"]
    assert exec_form(instructions("CMD")[-1]) == ["scheduler"]


def healthcheck() -> tuple[str, str]:
    """The HEALTHCHECK's python code and the URL it fetches."""
    (text,) = instructions("HEALTHCHECK")
    command = exec_form(text.split(" CMD ", 1)[1])
    assert command[:2] == ["python", "-c"]
    (url,) = re.findall(r"'(http://[^']+)'", command[2])
    return command[2], url


def test_healthcheck_asks_the_unauthenticated_health_route() -> None:
    code, url = healthcheck()
    parts = urlsplit(url)
    assert parts.path == "/api/health" and parts.port == HTTP_PORT
    assert parts.hostname == "127.0.0.1"  # always in the Host allowlist
    assert "curl" not in code and "urllib" in code
    # The route the API serves, and one the guard answers without a token.
    assert parts.path == HEALTH_PATH and is_public(parts.path)
    assert "@app.route(HEALTH_PATH" in (ROOT / "scheduler" / "http_api.py").read_text()


def dockerignore() -> list[str]:
    return [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def ignored(path: str, patterns: list[str]) -> bool:
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        bare = pattern.removeprefix("**/")
        for prefix in prefixes:
            if fnmatch.fnmatch(prefix, pattern) or (bare != pattern and fnmatch.fnmatch(prefix.rsplit("/", 1)[-1], bare)):
                return True
    return False


def test_dockerignore_keeps_the_context_small_and_free_of_secrets() -> None:
    patterns = dockerignore()
    assert not any(p.startswith("!") for p in patterns)
    for path in (".venv/bin/python", ".git/HEAD", "build/lib/x.py", "twisted_job_scheduler.egg-info/PKG-INFO",
                 "bench/.venv-peers/bin/python", "deploy/secrets/api_token", "scheduler/__pycache__/x.pyc",
                 "tasks.db", "jobs.sqlite-wal"):
        assert ignored(path, patterns), path
    # Everything `pip install .` and the image need is still sent.
    for path in ("pyproject.toml", "setup.cfg", "README.md", "scheduler/tap.py", "worker/agent.py",
                 "plugins/jobsched_scheduler_plugin.py", "static/index.html", "deploy/docker-entrypoint.sh"):
        assert (ROOT / path).exists(), path
        assert not ignored(path, patterns), path


# -- the entrypoint -----------------------------------------------------------


def secret_options() -> dict[str, str]:
    """Secret file name -> scheduler option, as the entrypoint maps them."""
    pairs = dict(re.findall(r"\b(\w+):(--[a-z-]+-file)\b", ENTRYPOINT.read_text()))
    assert pairs
    return pairs


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in TOKEN_VARIABLES and k != "SECRETS_DIR"}
    return {**env, **extra}


def write_secrets(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text(TOKENS.get(name, "x" * 32) + "\n")
    return folder


@pytest.fixture
def fake_twistd(tmp_path: Path) -> Path:
    """A twistd that prints its arguments, NUL-separated."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    script = bin_dir / "twistd"
    script.write_text("#!/bin/sh\nprintf '%s\\0' \"$@\"\n")
    script.chmod(0o755)
    return bin_dir


def entrypoint_argv(fake_bin: Path, secrets: Path, *args: str, **env: str) -> list[str]:
    done = subprocess.run(
        ["sh", str(ENTRYPOINT), *args],
        env=clean_env(PATH=f"{fake_bin}{os.pathsep}{os.environ['PATH']}", SECRETS_DIR=str(secrets), **env),
        capture_output=True,
        timeout=10,
        check=True,
    )
    return ["twistd", *done.stdout.decode().split("\0")[:-1]]


def test_entrypoint_is_valid_posix_sh() -> None:
    subprocess.run(["sh", "-n", str(ENTRYPOINT)], check=True, timeout=10)
    if shutil.which("dash"):
        subprocess.run(["dash", "-n", str(ENTRYPOINT)], check=True, timeout=10)
    assert ENTRYPOINT.read_text().startswith("#!/bin/sh\n")
    assert os.access(ENTRYPOINT, os.X_OK)


def test_image_command_with_secret_files(fake_twistd: Path, tmp_path: Path) -> None:
    secrets = write_secrets(tmp_path / "secrets", list(TOKENS))
    argv = entrypoint_argv(fake_twistd, secrets)  # the image's CMD: no arguments
    assert argv == entrypoint_argv(fake_twistd, secrets, "scheduler")
    found = check_twistd(argv, "scheduler")
    # On every interface inside the container, on the default ports.
    assert endpoint_port(str(found["tcp"])) == TCP_PORT and not is_loopback(str(found["tcp"]))
    assert endpoint_port(str(found["http"])) == HTTP_PORT and not is_loopback(str(found["http"]))
    # The names browsers and workers use to reach it.
    assert {"localhost", "scheduler"} <= set(str(found["allowed-hosts"]).split(","))
    # One option per secret file present, pointing at it.
    mapping = secret_options()
    for name in TOKENS:
        assert found[mapping[name].removeprefix("--")] == str(secrets / name)
    assert "--worker-tokens-file" not in argv  # not present, not passed
    # The tokens make the open listeners acceptable to protected mode.
    options = scheduler.tap.Options()
    options.parseOptions(split_twistd(argv)[2])
    settings = Settings.from_options(options, env={})
    assert settings.api_token == TOKENS["api_token"] and settings.tcp_token == TOKENS["tcp_token"]
    assert settings.worker_tokens.shared == TOKENS["worker_token"]


def test_a_db_url_secret_reaches_the_scheduler_in_its_environment_only(tmp_path: Path) -> None:
    """A cluster node's PostgreSQL URL (with its password) from /run/secrets/db_url:
    in SCHEDULER_DB, never on the command line (ps shows that to everyone)."""
    url = "postgresql://scheduler:pw-" + "x" * 20 + "@postgres/scheduler"
    secrets = write_secrets(tmp_path / "secrets", list(TOKENS))
    (secrets / "db_url").write_text(url + "\n")
    bin_dir = tmp_path / "envbin"
    bin_dir.mkdir()
    (bin_dir / "twistd").write_text('#!/bin/sh\nprintf "%s\\0" "$SCHEDULER_DB" "$@"\n')
    (bin_dir / "twistd").chmod(0o755)
    seen, *argv = entrypoint_argv(bin_dir, secrets)[1:]
    assert seen == url
    assert not any("pw-" in arg for arg in argv)
    # A worker never gets it.
    seen, *_ = entrypoint_argv(bin_dir, secrets, "worker")[1:]
    assert seen == ""


def test_image_command_without_files_leaves_tokens_to_the_environment(fake_twistd: Path, tmp_path: Path) -> None:
    argv = entrypoint_argv(fake_twistd, tmp_path / "no-such-folder")
    assert not [arg for arg in argv if arg.endswith("-file")]
    found = check_twistd(argv, "scheduler")
    options = scheduler.tap.Options()
    options.parseOptions(split_twistd(argv)[2])
    env = {"SCHEDULER_API_TOKEN": TOKENS["api_token"], "SCHEDULER_TCP_TOKEN": TOKENS["tcp_token"],
           "SCHEDULER_WORKER_TOKEN": TOKENS["worker_token"]}
    settings = Settings.from_options(options, env=env)
    assert settings.api_token and settings.tcp_token and settings.worker_tokens.shared
    assert not is_loopback(str(found["http"]))


def test_options_after_the_role_override_the_defaults(fake_twistd: Path, tmp_path: Path) -> None:
    secrets = write_secrets(tmp_path / "secrets", ["api_token"])
    argv = entrypoint_argv(fake_twistd, secrets, "scheduler", "--allowed-hosts", "jobs.example.com", "--api-token-file", "/elsewhere")
    found = check_twistd(argv, "scheduler")
    assert found["allowed-hosts"] == "jobs.example.com" and found["api-token-file"] == "/elsewhere"
    # Options alone mean the scheduler.
    argv = entrypoint_argv(fake_twistd, secrets, "--timezone", "UTC")
    assert check_twistd(argv, "scheduler")["timezone"] == "UTC"


def test_worker_role(fake_twistd: Path, tmp_path: Path) -> None:
    secrets = write_secrets(tmp_path / "secrets", list(TOKENS))
    argv = entrypoint_argv(fake_twistd, secrets, "worker", "--name", "w1")
    found = check_twistd(argv, "worker")
    url = urlsplit(str(found["url"]))
    assert (url.scheme, url.hostname, url.port, url.path) == ("ws", "scheduler", HTTP_PORT, WORKER_PATH)
    assert found["token-file"] == str(secrets / "worker_token") and found["name"] == "w1"
    argv = entrypoint_argv(fake_twistd, tmp_path / "none", "worker")
    assert "--token-file" not in argv  # WORKER_TOKEN from the environment then


def test_other_commands_run_as_given(fake_twistd: Path, tmp_path: Path) -> None:
    argv = entrypoint_argv(fake_twistd, tmp_path, "twistd", "--pidfile=", "-n", "worker", "--name", "x y")
    assert argv == ["twistd", "--pidfile=", "-n", "worker", "--name", "x y"]
    done = subprocess.run(["sh", str(ENTRYPOINT), "echo", "a  b"], capture_output=True, timeout=10, check=True)
    assert done.stdout == b"a  b\n"


# -- the image's command, for real --------------------------------------------


def stopped_cleanly(process: subprocess.Popen[bytes], log: Path) -> None:
    # twistd ends a SIGTERM shutdown by re-raising the signal (docker: 143), which
    # systemd and docker count as a clean stop.
    assert stop(process) in (0, -signal.SIGTERM), log.read_text()
    assert "Server Shut Down." in log.read_text()


def get(url: str, *, host: str | None = None, token: str | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url)
    if host is not None:
        request.add_header("Host", host)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def start_image_command(workdir: Path, *args: str, **env: str) -> tuple[subprocess.Popen[bytes], int, int, Path]:
    """The entrypoint's scheduler, run by this venv's twistd, on free ports of every interface."""
    tcp, http = free_port(), free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "scheduler.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            ["sh", str(ENTRYPOINT), *args,
             "--tcp", f"tcp:{tcp}:interface=0.0.0.0", "--http", f"tcp:{http}:interface=0.0.0.0"],
            cwd=workdir,
            env=clean_env(PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", **env),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    return process, tcp, http, log


def test_image_command_starts_and_answers_health(tmp_path: Path) -> None:
    secrets = write_secrets(tmp_path / "secrets", list(TOKENS))
    data = tmp_path / "data"
    process, tcp, http, log = start_image_command(data, SECRETS_DIR=str(secrets))
    worker_process = None
    try:
        wait_for_port(tcp, process, timeout=15.0, log=log)
        wait_for_port(http, process, timeout=15.0, log=log)
        base = f"http://127.0.0.1:{http}"
        # Without a token: just the status, as the healthcheck and load balancers see it.
        assert get(base + "/api/health") == (200, {"status": "ok"})
        # Browsers and other containers come by the compose service name.
        code, body = get(base + "/api/health", host=f"scheduler:{HTTP_PORT}", token=TOKENS["api_token"])
        assert code == 200 and body["status"] == "ok" and "version" in body
        assert get(base + "/api/tasks", host="evil.example")[0] == 403
        assert get(base + "/api/tasks")[0] == 401
        # The Dockerfile's HEALTHCHECK itself, pointed at this port.
        code_text, url = healthcheck()
        probe = code_text.replace(url, url.replace(f":{HTTP_PORT}/", f":{http}/"))
        assert probe != code_text
        subprocess.run([sys.executable, "-c", probe], check=True, timeout=10)
        # The job database lands in the working directory (the image's /data).
        assert (data / "jobs.sqlite").exists()

        # A compose worker's command line, pointed here, gets in with its token file.
        compose = compose_file()
        command = shlex.split(compose["services"]["worker-1"]["command"])
        command = [str(VENV_BIN / "twistd"), *[
            arg.replace(f"scheduler:{HTTP_PORT}", f"127.0.0.1:{http}").replace("/run/secrets", str(secrets))
            for arg in command[1:]
        ]]
        worker_log = tmp_path / "worker.log"
        with open(worker_log, "wb") as output:
            worker_process = subprocess.Popen(command, cwd=data, env=clean_env(), stdout=output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            code, workers = get(base + "/api/workers", token=TOKENS["api_token"])
            if code == 200 and [w["name"] for w in workers] == ["worker-1"]:
                break
            assert time.monotonic() < deadline, worker_log.read_text()
            assert worker_process.poll() is None, worker_log.read_text()
            time.sleep(0.05)
    finally:
        if worker_process is not None:
            stop(worker_process)
        stopped_cleanly(process, log)
    for token in TOKENS.values():
        assert token not in log.read_text()


def test_image_command_with_tokens_from_the_environment(tmp_path: Path) -> None:
    env = {"SCHEDULER_API_TOKEN": TOKENS["api_token"], "SCHEDULER_TCP_TOKEN": TOKENS["tcp_token"],
           "SCHEDULER_WORKER_TOKEN": TOKENS["worker_token"], "SECRETS_DIR": str(tmp_path / "none")}
    process, _, http, log = start_image_command(tmp_path / "data", **env)
    try:
        wait_for_port(http, process, timeout=15.0, log=log)
        code, body = get(f"http://127.0.0.1:{http}/api/health", token=TOKENS["api_token"])
        assert code == 200 and body["status"] == "ok" and "version" in body
    finally:
        stopped_cleanly(process, log)


def test_image_command_without_tokens_refuses_to_start(tmp_path: Path) -> None:
    process, _, _, log = start_image_command(tmp_path / "data", SECRETS_DIR=str(tmp_path / "none"))
    assert process.wait(timeout=15) != 0
    text = log.read_text()
    assert "refusing to accept commands from the network without tokens" in text
    assert "Traceback" not in text


# -- docker-compose.yml -------------------------------------------------------


def _scalar(text: str) -> Any:
    if text[:1] in "\"'":
        assert len(text) >= 2 and text[-1] == text[0], text
        return text[1:-1]
    assert text[:1] not in "&*!|>{[%@`", f"keep docker-compose.yml simple: {text!r}"
    return {"true": True, "false": False}.get(text, text)


def parse_simple_yaml(text: str) -> Any:
    """The YAML docker-compose.yml is kept to: block mappings, block lists, plain or quoted scalars."""
    lines: list[tuple[int, str]] = []
    for raw in text.splitlines():
        assert "\t" not in raw, "tabs in docker-compose.yml"
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        assert " #" not in stripped, f"keep comments on lines of their own: {raw!r}"
        lines.append((len(raw) - len(raw.lstrip(" ")), stripped))
    position = 0

    def block(indent: int) -> Any:
        nonlocal position
        result: Any = None
        while position < len(lines):
            level, content = lines[position]
            if level < indent:
                break
            assert level == indent, f"unexpected indentation: {content!r}"
            if content.startswith("- "):
                assert result is None or isinstance(result, list), content
                result = result if result is not None else []
                result.append(_scalar(content[2:].strip()))
                position += 1
                continue
            key, colon, value = content.partition(":")
            assert colon and key and " " not in key.strip('"'), f"not a 'key: value' line: {content!r}"
            assert result is None or isinstance(result, dict), content
            result = result if result is not None else {}
            assert key not in result, f"duplicate key {key}"
            position += 1
            if value.strip():
                result[key] = _scalar(value.strip())
            elif position < len(lines) and lines[position][0] > indent:
                result[key] = block(lines[position][0])
            else:
                result[key] = None
        return result

    parsed = block(0)
    assert position == len(lines)
    return parsed


def compose_file() -> dict[str, Any]:
    parsed = parse_simple_yaml((ROOT / "docker-compose.yml").read_text())
    assert isinstance(parsed, dict)
    return parsed


def test_simple_yaml_parser() -> None:
    assert parse_simple_yaml("a:\n  b: 'x: y'\n  c:\n    - \"1\"\n    - two\nd:\n") == {
        "a": {"b": "x: y", "c": ["1", "two"]},
        "d": None,
    }
    for bad in ("a: &x 1\n", "a: [1, 2]\n", "a: 1 # no\n", "a:\n\tb: 1\n"):
        with pytest.raises(AssertionError):
            parse_simple_yaml(bad)


def test_compose_scheduler() -> None:
    compose = compose_file()
    services = compose["services"]
    sched = services["scheduler"]
    # The image's default command: the one tested above.
    assert "command" not in sched and "entrypoint" not in sched
    # Dashboard published; the command port on the host's loopback only.
    assert sorted(sched["ports"]) == sorted([f"{HTTP_PORT}:{HTTP_PORT}", f"127.0.0.1:{TCP_PORT}:{TCP_PORT}"])
    # The secrets protected mode needs for listeners on every interface.
    mapping = secret_options()
    assert set(sched["secrets"]) == {"api_token", "tcp_token", "worker_token"}
    assert all(name in mapping for name in sched["secrets"])
    # Every worker-facing name is one the scheduler answers to.
    allowed = re.search(r"--allowed-hosts (\S+)", ENTRYPOINT.read_text())
    assert allowed and "scheduler" in allowed.group(1).split(",")
    # Data in a named volume at the image's /data.
    (volume,) = sched["volumes"]
    name, path = volume.split(":")
    assert path == instructions("WORKDIR")[-1] == "/data" and name in compose["volumes"]
    # The read-only root works because the plugin cache is built into the image.
    assert sched["read_only"] is True and sched["tmpfs"] == ["/tmp"]


def test_compose_workers() -> None:
    compose = compose_file()
    services = compose["services"]
    # The default set: every service outside a profile.
    workers = {name: s for name, s in services.items() if name != "scheduler" and "profiles" not in s}
    assert len(workers) >= 2
    names = set()
    for service in services.values():
        if service.get("build") == ".":
            assert service["image"] == services["scheduler"]["image"]
    for key, service in workers.items():
        found = check_twistd(shlex.split(service["command"]), "worker")
        url = urlsplit(str(found["url"]))
        assert (url.scheme, url.hostname, url.port, url.path) == ("ws", "scheduler", HTTP_PORT, WORKER_PATH)
        # The same secret the scheduler checks workers against.
        assert found["token-file"] == "/run/secrets/worker_token"
        assert service["secrets"] == ["worker_token"]
        assert found["name"] == key
        names.add(found["name"])
        assert service["depends_on"] == ["scheduler"]
        assert service["healthcheck"] == {"disable": True}  # no HTTP port on a worker
        assert service["init"] is True  # reaps the jobs' orphans
        (volume,) = service["volumes"]
        assert volume.split(":")[0] in compose["volumes"]
    assert len(names) == len(workers)


def test_compose_cluster_profile() -> None:
    """PostgreSQL and two scheduler nodes sharing it, and a worker that knows both."""
    services = compose_file()["services"]
    cluster = {name: s for name, s in services.items() if "profiles" in s}
    assert all(service["profiles"] == ["cluster"] for service in cluster.values())
    postgres = cluster["postgres"]
    assert postgres["build"] == "deploy/postgres" and postgres["secrets"] == ["db_password"]
    assert (DEPLOY / "postgres" / "Dockerfile").exists()
    nodes = {name: s for name, s in cluster.items() if s.get("command", "").startswith("scheduler ")}
    assert len(nodes) == 2
    node_names = set()
    for node in nodes.values():
        assert node["build"] == "." and node["image"] == services["scheduler"]["image"]
        # The tokens as in the default set, and the database's URL (as SCHEDULER_DB).
        assert set(node["secrets"]) == {"api_token", "tcp_token", "worker_token", "db_url"}
        assert "db_url" in ENTRYPOINT.read_text()
        options = scheduler.tap.Options()
        options.parseOptions(shlex.split(node["command"])[1:])
        node_names.add(options["node-name"])
        assert node["depends_on"] == ["postgres"] and node["read_only"] is True
    assert node_names == set(nodes)
    (worker,) = (s for name, s in cluster.items() if name not in nodes and name != "postgres")
    found = check_twistd(shlex.split(worker["command"]), "worker")
    urls = [urlsplit(url) for url in str(found["url"]).split(",")]
    assert sorted(url.hostname or "" for url in urls) == sorted(nodes)
    assert all((url.scheme, url.port, url.path) == ("ws", HTTP_PORT, WORKER_PATH) for url in urls)
    assert sorted(worker["depends_on"]) == sorted(nodes)


def test_compose_secrets_come_from_ignored_files() -> None:
    compose = compose_file()
    used = {name for service in compose["services"].values() for name in service.get("secrets", [])}
    assert set(compose["secrets"]) == used
    for name, spec in compose["secrets"].items():
        assert spec == {"file": f"deploy/secrets/{name}"}
    ignore = (DEPLOY / "secrets" / ".gitignore").read_text().split()
    assert "*" in ignore and "!README.md" in ignore
    readme = (DEPLOY / "secrets" / "README.md").read_text()
    assert "openssl rand -hex 32" in readme
    for name in used:
        assert f"`{name}`" in readme


# -- systemd ------------------------------------------------------------------


def unit(name: str) -> dict[str, dict[str, list[str]]]:
    text = re.sub(r"\\\n", " ", (UNITS / name).read_text())
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(" ".join(value.split()))
    return sections


def exec_start(service: dict[str, list[str]]) -> tuple[list[str], dict[str, str]]:
    """ExecStart as argv (specifiers filled in, $EXTRA_ARGS dropped), and the credentials it may use."""
    (line,) = service["ExecStart"]
    credentials = dict(entry.split(":", 1) for entry in service.get("LoadCredential", []))
    argv = [word.replace("%d", "/run/credentials/x").replace("%H", "host") for word in shlex.split(line)]
    assert argv[-1] == "$EXTRA_ARGS"
    return argv[:-1], credentials


@pytest.mark.parametrize("name, role", [("job-scheduler.service", "scheduler"), ("job-scheduler-worker.service", "worker")])
def test_systemd_units(name: str, role: str) -> None:
    sections = unit(name)
    service = sections["Service"]
    assert service["Restart"] == ["on-failure"]
    assert service["User"][0] not in ("root", "0") and service["Type"] == ["simple"]
    assert sections["Install"]["WantedBy"] == ["multi-user.target"]
    assert service["NoNewPrivileges"] == ["yes"]
    argv, credentials = exec_start(service)
    assert argv[0].startswith("/") and Path(argv[0]).name == "twistd"
    found = check_twistd(argv, role)
    token_files = {k: str(v) for k, v in found.items() if k.endswith("token-file")}
    assert token_files
    for option, path in token_files.items():
        # Each token from a credential the unit loads from a root-only file.
        assert path.startswith("/run/credentials/x/"), option
        credential = path.rsplit("/", 1)[1]
        assert credentials[credential].startswith("/etc/job-scheduler/secrets/")
    assert not [e for e in service.get("Environment", []) if "TOKEN" in e]
    workdir = service["WorkingDirectory"][0]
    assert workdir == "/var/lib/" + service["StateDirectory"][0]
    assert workdir in service["ReadWritePaths"][0].split()
    if role == "scheduler":
        assert workdir == "/var/lib/job-scheduler"
        assert service["ProtectSystem"] == ["strict"]
        assert is_loopback(str(found["tcp"])) and endpoint_port(str(found["tcp"])) == TCP_PORT
        # HTTP is open to the network, so both of its tokens are set.
        assert not is_loopback(str(found["http"])) and endpoint_port(str(found["http"])) == HTTP_PORT
        assert {"api-token-file", "worker-token-file"} <= set(token_files)
    else:
        assert found["workdir"] == workdir
        assert urlsplit(str(found["url"])).path == WORKER_PATH
        text = (UNITS / name).read_text()
        assert "arbitrary shell commands" in text  # why the sandbox is modest
        assert service["KillMode"] == ["mixed"]  # the worker stops its own jobs first


@pytest.mark.parametrize("name, role", [("scheduler.env.example", "scheduler"), ("worker.env.example", "worker")])
def test_systemd_env_examples(name: str, role: str) -> None:
    settings = dict(
        line.split("=", 1) for line in (UNITS / name).read_text().splitlines() if line and not line.startswith("#")
    )
    assert set(settings) == {"EXTRA_ARGS"}
    parse_options(settings["EXTRA_ARGS"].split(), ROLES[role])


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    names = sorted(path.name for path in UNITS.glob("*.service"))
    assert names == ["job-scheduler-worker.service", "job-scheduler.service"]
    for name in names:
        # verify insists the program exists: point it at this venv's twistd.
        text = (UNITS / name).read_text().replace("/opt/job-scheduler/bin/twistd", str(VENV_BIN / "twistd"))
        (tmp_path / name).write_text(text)
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *names], cwd=tmp_path, capture_output=True, text=True, timeout=15
    )
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if any(n in line for n in names)]
    assert done.returncode == 0 and not complaints, done.stdout + done.stderr


# -- names shared with the code -----------------------------------------------


def variables_read_by_the_code() -> set[str]:
    names = set()
    for path in [*(ROOT / "scheduler").glob("*.py"), *(ROOT / "worker").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(r"[A-Z][A-Z0-9_]*TOKEN", node.value):
                names.add(node.value)
    return names


def deployment_files() -> list[Path]:
    """Every file this deployment consists of (token files created locally excluded)."""
    secrets = DEPLOY / "secrets"
    files = [p for p in DEPLOY.rglob("*") if p.is_file() and (p.parent != secrets or p.name in ("README.md", ".gitignore"))]
    return [ROOT / "Dockerfile", ROOT / ".dockerignore", ROOT / "docker-compose.yml", *sorted(files)]


def test_token_variables_are_the_ones_the_code_reads() -> None:
    read = variables_read_by_the_code()
    assert read >= TOKEN_VARIABLES
    for path in deployment_files():
        for name in re.findall(r"\b[A-Z][A-Z0-9_]*TOKEN\b", path.read_text()):
            assert name in read, f"{path.relative_to(ROOT)} names {name}, which the code does not read"
    entrypoint = ENTRYPOINT.read_text()
    assert all(name in entrypoint for name in TOKEN_VARIABLES)


def test_no_token_is_committed() -> None:
    for path in deployment_files():
        for word in re.findall(r"\b[0-9a-f]{32,}\b", path.read_text()):
            pytest.fail(f"{path.relative_to(ROOT)} holds what looks like a token: {word[:8]}...")
    # Token files may exist locally; git ignores all but these two.
    rules = [line for line in (DEPLOY / "secrets" / ".gitignore").read_text().splitlines() if line and line[0] != "#"]
    assert rules == ["*", "!.gitignore", "!README.md"]


# -- ARCHITECTURE.md ----------------------------------------------------------

# Named in ARCHITECTURE.md but defined by the libraries, not by this project.
LIBRARY_NAMES = {
    "MultiService", "Service", "ClientService", "StreamServerEndpointService", "TimerService",
    "LoopingCall", "Site", "Resource", "Klein", "WebSocketResource", "WebSocketServerFactory",
    "WebSocketClientFactory", "ThreadPool", "Deferred", "ServiceMaker", "Options", "ProcessProtocol",
    "HostnameEndpoint", "Agent",
}


def test_architecture_names_exist() -> None:
    text = (ROOT / "ARCHITECTURE.md").read_text()
    assert "```mermaid" in text and "sequenceDiagram" in text
    source = "\n".join(p.read_text() for p in [*(ROOT / "scheduler").rglob("*.py"), *(ROOT / "worker").rglob("*.py")])
    defined = (
        set(re.findall(r"^class (\w+)", source, re.MULTILINE))
        | set(re.findall(r"^def (\w+)", source, re.MULTILINE))
        # type aliases: AlertEvent = Literal[...]
        | set(re.findall(r"^([A-Z][a-z]\w*)(?:: TypeAlias)? = ", source, re.MULTILINE))
    )
    for name in set(re.findall(r"`([A-Z][a-z][A-Za-z]*)`", text)) - LIBRARY_NAMES:
        assert name in defined, f"ARCHITECTURE.md names `{name}`, which is not defined in scheduler/ or worker/"
    for path in set(re.findall(r"`((?:scheduler|worker|plugins|static|tests|docs|deploy)/[\w./-]*)`", text)):
        assert (ROOT / path).exists(), f"ARCHITECTURE.md names `{path}`, which does not exist"
    scheduler_params, scheduler_flags = declared(scheduler.tap.Options)
    worker_params, worker_flags = declared(worker.tap.Options)
    known = scheduler_params | scheduler_flags | worker_params | worker_flags
    for option in set(re.findall(r"`--([a-z-]+)", text)):
        assert option in known, f"ARCHITECTURE.md names --{option}, which neither twistd plugin has"
