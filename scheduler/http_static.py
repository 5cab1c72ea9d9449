"""The dashboard's files (static/), read once at start-up and served from memory.

Each file is kept as it is and, where that is smaller, gzipped (once, at
start-up).  The version is a short hash of every file's name and content:
``/`` serves index.html with each ``/static/NAME`` it names rewritten to
``/static/v-<version>/NAME``, which may be cached for a year, since a
change to any file changes the version and so every name.  The modules
import each other by relative paths, so they stay inside the versioned
folder.  ``/`` and plain ``/static/NAME`` (what a page loaded before an
upgrade asks for) are ``no-cache``: the browser asks again each time, and
gets 304 while the ETag still matches.  A versioned name with another
version is 404: the file it named is gone, and today's file under
yesterday's name would be cached for a year.

Answers are bytes already in memory (static/ is small), so serving one
never blocks the reactor.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from twisted.web.http import datetimeToString
from twisted.web.iweb import IRequest

INDEX = "index.html"
VERSIONED_PREFIX = "v-"
IMMUTABLE = b"public, max-age=31536000, immutable"
REVALIDATE = b"no-cache"

# By suffix; anything else is application/octet-stream.  JavaScript
# modules must have a JavaScript type, or the browser refuses them.
CONTENT_TYPES = {
    "html": "text/html; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "json": "application/json",
    "svg": "image/svg+xml",
    "txt": "text/plain; charset=utf-8",
    "png": "image/png",
    "ico": "image/x-icon",
}
OTHER_TYPE = "application/octet-stream"
# Already compressed: gzip would only cost time.
_INCOMPRESSIBLE = {"png", "ico"}

# A reference to a file in static/ inside index.html: src="/static/app.js".
_REFERENCE = re.compile(r"""(?<=["'])/static/(?=[\w.-]+["'])""")


def content_type(name: str) -> str:
    return CONTENT_TYPES.get(name.rpartition(".")[2].lower(), OTHER_TYPE)


@dataclass(frozen=True)
class StaticFile:
    """One file's bytes as served, its gzipped bytes (None if not smaller), and its validators."""

    body: bytes
    gzipped: bytes | None
    content_type: bytes
    etag: str
    last_modified: bytes

    @classmethod
    def of(cls, name: str, body: bytes, modified: float) -> StaticFile:
        gzipped = None
        if name.rpartition(".")[2].lower() not in _INCOMPRESSIBLE:
            # mtime=0: the same bytes at every start, so the ETag holds.
            packed = gzip.compress(body, compresslevel=9, mtime=0)
            gzipped = packed if len(packed) < len(body) else None
        return cls(
            body=body,
            gzipped=gzipped,
            content_type=content_type(name).encode("ascii"),
            etag=hashlib.sha256(body).hexdigest()[:20],
            last_modified=datetimeToString(int(modified)),
        )


def version_of(files: dict[str, bytes]) -> str:
    """A short hash of every file's name and content."""
    digest = hashlib.sha256()
    for name in sorted(files):
        body = files[name]
        digest.update(b"%d:%s\0%d:" % (len(name), name.encode("utf-8"), len(body)))
        digest.update(body)
    return digest.hexdigest()[:12]


def accepts_gzip(header: bytes | None) -> bool:
    """Does an Accept-Encoding header allow gzip (by name, or by ``*``), with a q above 0?"""
    if not header:
        return False
    named: dict[str, float] = {}
    for item in header.decode("latin-1").split(","):
        coding, _, parameters = item.partition(";")
        quality = 1.0
        for parameter in parameters.split(";"):
            key, _, value = parameter.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value.strip())
                except ValueError:
                    quality = 0.0
        named[coding.strip().lower()] = quality
    for coding in ("gzip", "x-gzip"):
        if coding in named:
            return named[coding] > 0
    return named.get("*", 0.0) > 0


class StaticFiles:
    """The files of one folder (not its subfolders), as the routes serve them."""

    def __init__(self, root: Path) -> None:
        read: dict[str, bytes] = {}
        modified: dict[str, float] = {}
        for path in sorted(root.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                read[path.name] = path.read_bytes()
                modified[path.name] = path.stat().st_mtime
        self.version = version_of(read)
        self.files = {name: StaticFile.of(name, body, modified[name]) for name, body in read.items()}
        index = read.get(INDEX)
        self.index = None
        if index is not None:
            rewritten = _REFERENCE.sub(f"/static/{VERSIONED_PREFIX}{self.version}/", index.decode("utf-8"))
            # It names every file's version: it changed when any of them did.
            self.index = StaticFile.of(INDEX, rewritten.encode("utf-8"), max(modified.values()))

    def find(self, name: str) -> StaticFile | None:
        return self.files.get(name)

    def serve(self, request: IRequest, found: StaticFile, cache: bytes) -> bytes:
        """Answer *request* with *found*: gzipped if the client takes it, 304 if its copy is current."""
        gzipped = found.gzipped is not None and accepts_gzip(request.getHeader(b"accept-encoding"))
        body = found.gzipped if gzipped and found.gzipped is not None else found.body
        # Each encoding is its own representation, with its own ETag.
        tag = f'"{found.etag}{"-gz" if gzipped else ""}"'.encode("ascii")
        request.setHeader(b"Cache-Control", cache)
        request.setHeader(b"ETag", tag)
        request.setHeader(b"Last-Modified", found.last_modified)
        if found.gzipped is not None:
            request.setHeader(b"Vary", b"Accept-Encoding")
        if _matches(request.getHeader(b"if-none-match"), tag):
            request.setResponseCode(304)
            return b""
        request.setHeader(b"Content-Type", found.content_type)
        if gzipped:
            request.setHeader(b"Content-Encoding", b"gzip")
        request.setHeader(b"Content-Length", b"%d" % len(body))
        return b"" if request.method == b"HEAD" else body


def _matches(header: bytes | None, tag: bytes) -> bool:
    if header is None:
        return False
    tags = {each.strip().removeprefix(b"W/") for each in header.split(b",")}
    return tag in tags or b"*" in tags
