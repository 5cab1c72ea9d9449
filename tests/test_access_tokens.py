"""The tokens file, callers and their scopes (scheduler/access_tokens.py): no transport."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from scheduler import access_tokens
from scheduler.access import AccessError
from scheduler.access_tokens import Access, TokenBook, parse_networks, parse_tokens, token_hash

CI = "ci-token-0123456789abcdef"
OPS = "ops-token-0123456789abcdef"


def line(name: str, scopes: str, token: str | None, *extra: str) -> str:
    return " ".join([name, scopes, token_hash(token) if token else "-", *extra])


def test_a_file_of_tokens_parses_with_comments_and_limits() -> None:
    text = "\n".join(
        [
            "# who     scopes      hash",
            line("ci", "read,run", CI, "tasks=3,7", "labels=gpu"),
            "",
            line("ops", "admin", OPS) + "   # the operators",
            line("alice", "read,write", None),
        ]
    )
    tokens = parse_tokens(text)
    assert set(tokens) == {"ci", "ops", "alice"}
    assert tokens["ci"].scopes == {"read", "run"}
    assert tokens["ci"].tasks == {3, 7} and tokens["ci"].labels == {"gpu"}
    assert tokens["alice"].digest is None


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("ci read", "expected '<name> <scopes"),
        (f"ci read,fly {token_hash(CI)}", "scopes must be a comma-separated list of read, run, write, admin"),
        ("ci read abc", "SHA-256 in hex"),
        (f"ci read {token_hash(CI)} tasks=x", "tasks= must be a comma-separated list of task ids"),
        (f"ci read {token_hash(CI)} colour=red", "unexpected 'colour=red'"),
        (f"api-token read {token_hash(CI)}", "kept for the token of --api-token-file"),
        (f"ci read {token_hash(CI)}\nci run {token_hash(OPS)}", "already on an earlier line"),
        (f"ci read {token_hash(CI)}\nbot run {token_hash(CI)}", "same token hash"),
    ],
)
def test_a_bad_line_is_named_by_its_number(text: str, said: str) -> None:
    with pytest.raises(AccessError) as raised:
        parse_tokens("# header\n" + text, "tokens.conf")
    assert said in str(raised.value)
    assert "tokens.conf, line 2" in str(raised.value) or "tokens.conf, line 3" in str(raised.value)


def test_a_token_is_found_by_its_hash_and_nothing_else(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(line("ci", "read,run", CI) + "\n" + line("alice", "admin", None) + "\n")
    book = TokenBook(str(path))
    assert book.load()
    found = book.identify(CI)
    assert found is not None and found.name == "ci"
    assert book.identify(OPS) is None
    assert book.identify(token_hash(CI)) is None  # the hash itself is no token
    assert book.identify("-") is None  # a person's line has no token


def test_a_reload_revokes_removed_and_changed_lines_and_keeps_the_old_set_on_a_bad_one(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(line("ci", "read,run", CI) + "\n" + line("ops", "admin", OPS) + "\n")
    book = TokenBook(str(path))
    book.load()
    ci = book.identify(CI)
    assert ci is not None
    assert not book.load()  # unchanged

    path.write_text(line("ci", "read", CI) + "\n")  # ops removed, ci changed
    os.utime(path, ns=(1, 1))
    assert book.load()
    assert book.revoked == {"ci", "ops"}
    assert not book.current(ci)

    path.write_text(line("ci", "read", CI) + "\nbroken line\n")
    with pytest.raises(AccessError, match="line 2"):
        book.load()
    assert set(book.tokens) == {"ci"}  # the old set stays

    path.unlink()
    with pytest.raises(AccessError, match="cannot read the tokens file"):
        book.load()
    assert book.tokens == {}  # gone: fail closed


def test_admin_grants_every_scope_and_run_limits_hold() -> None:
    book = TokenBook()
    book.tokens = parse_tokens(
        "\n".join([line("ci", "run", CI, "tasks=3"), line("gpu", "run,read", OPS, "labels=gpu"), line("boss", "admin", "boss-token-0123456789")])
    )
    access = Access(book)
    ci = access.tcp_caller(CI)
    gpu = access.tcp_caller(OPS)
    boss = access.tcp_caller("boss-token-0123456789")
    assert ci is not None and gpu is not None and boss is not None
    assert boss.granted() == ["read", "run", "write", "admin"]
    assert ci.granted() == ["run"] and not ci.allows("read")
    assert ci.run_refusal(3, "any") is None
    assert "may run only tasks 3, not task 4" in (ci.run_refusal(4, "any") or "")
    assert "not a command that is no task" in (ci.run_refusal(None, "any") or "")
    assert gpu.run_refusal(None, "label:gpu") is None
    assert "only on targets label:gpu, not any" in (gpu.run_refusal(None, "any") or "")
    assert boss.run_refusal(None, "any") is None


def test_the_single_tokens_are_admin_tokens_and_no_tokens_means_anyone() -> None:
    access = Access(api_token=CI, tcp_token=OPS)
    api = access.http_caller(CI, "10.0.0.1", None)
    assert api is not None and api.name == "api-token" and api.granted() == ["read", "run", "write", "admin"]
    assert access.http_caller(OPS, "10.0.0.1", None) is None  # the TCP token is not the API's
    tcp = access.tcp_caller(OPS)
    assert tcp is not None and tcp.name == "tcp-token"
    open_door = Access().http_caller(None, "127.0.0.1", None)
    assert open_door is not None and open_door.name is None and open_door.allows("admin")


def test_the_proxy_header_is_believed_only_from_trusted_addresses() -> None:
    book = TokenBook()
    book.tokens = parse_tokens(line("alice", "read,write", None))
    access = Access(
        book, proxy_header="X-Forwarded-User", trusted_proxies=parse_networks("10.0.0.5,192.168.1.0/24"), proxy_scopes=frozenset({"read"})
    )
    alice = access.http_caller(None, "10.0.0.5", "alice")
    assert alice is not None and alice.person and alice.granted() == ["read", "write"]
    bob = access.http_caller(None, "192.168.1.9", "bob")
    assert bob is not None and bob.name == "bob" and bob.granted() == ["read"]  # --proxy-scopes
    assert access.http_caller(None, "10.0.0.6", "alice") is None  # not a trusted proxy: no one
    with pytest.raises(AccessError, match="not an address or network"):
        parse_networks("proxy.example.com")


def test_the_hash_command_reads_the_token_on_stdin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(CI + "\n"))
    assert access_tokens.main() == 0
    assert capsys.readouterr().out.strip() == token_hash(CI)
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert access_tokens.main() == 2
