"""The dashboard's files: every module it imports is in static/, shipped by
``pip install .`` (setup.cfg's package data) and fit for its CSP."""

from __future__ import annotations

import configparser
import fnmatch
import re
from pathlib import Path

from scheduler.http_api import static_root

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
