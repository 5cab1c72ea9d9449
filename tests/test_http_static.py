"""The dashboard's files: every module it imports is in static/, shipped by
``pip install .`` (setup.cfg's package data) and fit for its CSP."""

from __future__ import annotations

import configparser
import fnmatch
import gzip
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from scheduler.http_api import static_root
from scheduler.http_guard import SECURITY_HEADERS
from scheduler.http_static import StaticFiles, accepts_gzip, content_type
from tests.test_http_api import Api, close_api, make_api

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "static"


def shipped_patterns() -> list[str]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return [pattern.strip() for pattern in config["options.package_data"]["scheduler.static"].split(",")]


def test_the_source_tree_serves_static() -> None:
    assert (static_root() / "index.html").is_file()


def test_every_imported_module_is_there() -> None:
    for script in STATIC.glob("*.js"):
        for name in re.findall(r"""from\s+'\./([\w.-]+)'""", script.read_text()):
            assert (STATIC / name).is_file(), f"{script.name} imports a missing {name}"
    html = (STATIC / "index.html").read_text()
    for name in re.findall(r'(?:src|href)="/static/([\w.-]+)"', html):
        assert (STATIC / name).is_file(), name


def test_every_file_is_shipped_by_pip_install() -> None:
    patterns = shipped_patterns()
    for path in STATIC.iterdir():
        assert any(fnmatch.fnmatch(path.name, pattern) for pattern in patterns), f"setup.cfg does not ship {path.name}"


def test_no_inline_script_or_style_for_the_csp_to_refuse() -> None:
    html = (STATIC / "index.html").read_text()
    assert all("src=" in tag for tag in re.findall(r"<script\b[^>]*>", html))
    assert "<style" not in html
    assert not re.search(r"""\s(style|on[a-z]+)=""", html)


# -- serving: versioned names, gzip, caching (scheduler/http_static.py) ---------

STATIC_REFERENCE = re.compile(r'(?:src|href)="(/static/[^"]+)"')


def test_the_version_follows_every_files_content(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text('<link href="/static/a.css"><script src="/static/b.js"></script>')
    (tmp_path / "a.css").write_text("body { color: red }\n" * 50)
    (tmp_path / "b.js").write_text("import {x} from './c.js';\n")
    first = StaticFiles(tmp_path)
    assert re.fullmatch(r"[0-9a-f]{12}", first.version)
    assert StaticFiles(tmp_path).version == first.version
    assert first.index is not None
    assert first.index.body.decode() == (
        f'<link href="/static/v-{first.version}/a.css"><script src="/static/v-{first.version}/b.js"></script>'
    )
    (tmp_path / "b.js").write_text("import {y} from './c.js';\n")
    assert StaticFiles(tmp_path).version != first.version
    # Compressed once, where that is smaller; what is kept decompresses to the file.
    css = first.files["a.css"]
    assert css.gzipped is not None and len(css.gzipped) < len(css.body) // 10
    assert gzip.decompress(css.gzipped) == css.body
    assert first.files["b.js"].gzipped is None  # too small to gain


@pytest.mark.parametrize(
    ("header", "gzipped"),
    [
        (None, False),
        (b"", False),
        (b"gzip", True),
        (b"gzip, deflate, br", True),
        (b"br;q=1.0, gzip;q=0.5", True),
        (b"gzip;q=0", False),
        (b"GZIP", True),
        (b"deflate", False),
        (b"*", True),
        (b"*;q=0", False),
        (b"*, gzip;q=0", False),
        (b"identity", False),
        (b"x-gzip", True),
    ],
)
def test_gzip_is_sent_when_accept_encoding_allows_it(header: bytes | None, gzipped: bool) -> None:
    assert accepts_gzip(header) is gzipped


@pytest_twisted.async_yield_fixture
async def api(tmp_path: Path, reactor: Any) -> AsyncIterator[Api]:
    made = await make_api(tmp_path, reactor)
    yield made
    await close_api(made)


def header(response: Any, name: str) -> str | None:
    values = response.headers.getRawHeaders(name.encode())
    return None if values is None else values[-1].decode()


def secured(response: Any) -> bool:
    return all(header(response, name.decode()) == value.decode() for name, value in SECURITY_HEADERS.items())


@pytest_twisted.ensureDeferred
async def test_the_page_names_its_files_under_the_version_and_they_are_cached_for_a_year(api: Api) -> None:
    response, page = await api.raw("GET", "/")
    assert response.code == 200 and secured(response)
    assert header(response, "content-type") == "text/html; charset=utf-8"
    assert header(response, "cache-control") == "no-cache"
    version = api.service.http._static.version
    named = STATIC_REFERENCE.findall(page.decode())
    assert named and all(path.startswith(f"/static/v-{version}/") for path in named)
    # Each file it names, and each module those import by a relative path.
    wanted = {path.rpartition("/")[2] for path in named}
    for script in STATIC.glob("*.js"):
        wanted |= set(re.findall(r"""from\s+'\./([\w.-]+)'""", script.read_text()))
    for name in sorted(wanted):
        response, body = await api.raw("GET", f"/static/v-{version}/{name}")
        assert response.code == 200 and body == (STATIC / name).read_bytes(), name
        assert header(response, "cache-control") == "public, max-age=31536000, immutable"
        assert header(response, "content-type") == content_type(name) and secured(response)
        assert header(response, "etag") and header(response, "last-modified")
    assert content_type("app.js") == "text/javascript; charset=utf-8"


@pytest_twisted.ensureDeferred
async def test_files_are_gzipped_for_clients_that_take_it(api: Api) -> None:
    version = api.service.http._static.version
    path = f"/static/v-{version}/app.js"
    plain, body = await api.raw("GET", path)
    packed, gzipped = await api.raw("GET", path, headers={b"Accept-Encoding": [b"gzip, deflate"]})
    assert header(plain, "content-encoding") is None and body == (STATIC / "app.js").read_bytes()
    assert header(packed, "content-encoding") == "gzip" and gzip.decompress(gzipped) == body
    assert len(gzipped) < len(body) and packed.length == len(gzipped)  # the client takes Content-Length
    for response in (plain, packed):
        assert header(response, "vary") == "Accept-Encoding"
        assert header(response, "content-type") == "text/javascript; charset=utf-8" and secured(response)
    # Two representations, two ETags.
    assert header(plain, "etag") != header(packed, "etag")
    refused, body = await api.raw("GET", path, headers={b"Accept-Encoding": [b"gzip;q=0"]})
    assert header(refused, "content-encoding") is None and body == (STATIC / "app.js").read_bytes()
    page, html = await api.raw("GET", "/", headers={b"Accept-Encoding": [b"gzip"]})
    assert header(page, "content-encoding") == "gzip" and b"/static/v-" in gzip.decompress(html)


@pytest_twisted.ensureDeferred
async def test_head_has_the_headers_of_get_and_no_body(api: Api) -> None:
    version = api.service.http._static.version
    for path in ("/", "/static/style.css", f"/static/v-{version}/style.css"):
        for encoding in (b"identity", b"gzip"):
            headers = {b"Accept-Encoding": [encoding]}
            got, body = await api.raw("GET", path, headers=headers)
            head, nothing = await api.raw("HEAD", path, headers=headers)
            assert head.code == got.code == 200 and nothing == b"", path
            for name in ("content-type", "content-encoding", "cache-control", "etag", "vary"):
                assert header(head, name) == header(got, name), (path, name)
            assert header(head, "content-length") == str(len(body)) and secured(head)


@pytest_twisted.ensureDeferred
async def test_a_current_copy_gets_304(api: Api) -> None:
    version = api.service.http._static.version
    for path in ("/", "/static/app.js", f"/static/v-{version}/app.js"):
        for encoding in (b"identity", b"gzip"):
            first, _body = await api.raw("GET", path, headers={b"Accept-Encoding": [encoding]})
            tag = header(first, "etag")
            assert tag is not None
            again, body = await api.raw(
                "GET", path, headers={b"Accept-Encoding": [encoding], b"If-None-Match": [tag.encode()]}
            )
            assert again.code == 304 and body == b"" and header(again, "etag") == tag, path
            assert header(again, "cache-control") == header(first, "cache-control") and secured(again)
            changed, _body = await api.raw("GET", path, headers={b"If-None-Match": [b'"other"']})
            assert changed.code == 200


@pytest_twisted.ensureDeferred
async def test_plain_names_still_work_and_wrong_ones_are_404(api: Api) -> None:
    plain, body = await api.raw("GET", "/static/app.js")
    assert plain.code == 200 and body == (STATIC / "app.js").read_bytes()
    assert header(plain, "cache-control") == "no-cache" and secured(plain)
    for path in ("/static/v-0123456789ab/app.js", "/static/nosuch.js", "/static/v-x/nosuch.js", "/static/a/b.js"):
        response, body = await api.raw("GET", path)
        assert response.code == 404 and "error" in json.loads(body), path
        assert header(response, "cache-control") == "no-store" and secured(response)
    response, body = await api.raw("GET", "/static/v-0123456789ab/app.js")
    assert "reload the page" in json.loads(body)["error"]
