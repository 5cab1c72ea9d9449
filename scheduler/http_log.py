"""Where the HTTP access log goes: one combined-log-format line per request.

Twisted's ``Site`` writes its access log into the main log through the
legacy ``log.logfile`` file object, so each line carried a second timestamp
and the system ``twisted.python.log``.  Here the line is an ordinary event
of the ``scheduler.http`` namespace, or goes to a file of its own (busy API
users may want it apart from the scheduler's own log), or nowhere.

Secrets sent in a URL by mistake (the server never reads a token from a
query string) stay out of it: see ``redact``.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.logger import Logger
from twisted.python.logfile import LogFile
from twisted.web.http import combinedLogFormatter
from twisted.web.server import Site

__all__ = ["MAIN_LOG", "NO_LOG", "LoggingSite", "check_target", "redact"]

MAIN_LOG = "-"
NO_LOG = "none"

# A file of its own rotates at this size, keeping this many old files.
ROTATE_BYTES = 10 * 1024 * 1024
KEEP_FILES = 5

_log = Logger(namespace="scheduler.http")

# Query parameters whose names contain one of these have their value
# replaced in the log: token, access_token, api_key, password, ...
SECRET_NAMES = (b"token", b"auth", b"key", b"secret", b"pass", b"sig", b"session", b"cred")
# A bare value (no name=) this long may be a pasted token: our tokens are
# at least 16 characters.
SHORTEST_TOKEN = 16
REDACTED = b"REDACTED"


def redact(uri: bytes) -> bytes:
    """*uri* with the values of token-like query parameters replaced."""
    path, question, query = uri.partition(b"?")
    if not question:
        return uri
    pairs = []
    for pair in query.split(b"&"):
        name, equals, _value = pair.partition(b"=")
        if equals:
            readable = unquote_to_bytes(name.replace(b"+", b" ")).lower()
            if any(word in readable for word in SECRET_NAMES):
                pair = name + b"=" + REDACTED
        elif len(pair) >= SHORTEST_TOKEN:
            pair = REDACTED
        pairs.append(pair)
    return path + b"?" + b"&".join(pairs)


class _Shown:
    """The request as the access log shows it: secrets in URLs redacted."""

    def __init__(self, request: Any) -> None:
        self._request = request
        self.uri = redact(request.uri)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)

    def getHeader(self, name: bytes) -> bytes | None:
        value: bytes | None = self._request.getHeader(name)
        if value is not None and name.lower() == b"referer":
            return redact(value)
        return value


def redacted_log_formatter(timestamp: str | None, request: Any) -> str:
    """Twisted's combined log format, with ``redact`` applied to the URLs."""
    line: str = combinedLogFormatter(timestamp, _Shown(request))
    return line


def check_target(target: str) -> str:
    """The ``--access-log`` value, or ValueError saying why it cannot be used."""
    if target in (MAIN_LOG, NO_LOG):
        return target
    folder = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(folder):
        raise ValueError(f"--access-log {target}: the folder {folder} does not exist")
    return target


class LoggingSite(Site):  # type: ignore[misc]
    """A ``Site`` whose access log goes where ``--access-log`` says.

    *target* is ``"-"`` for the main log, ``"none"`` for no access log, or
    the path of a file of its own, rotated at 10 MB with 5 old files kept.
    """

    def __init__(self, resource: Any, *, target: str = MAIN_LOG, **kwargs: Any) -> None:
        path = None if target in (MAIN_LOG, NO_LOG) else target
        super().__init__(resource, logPath=path, logFormatter=redacted_log_formatter, **kwargs)
        self._target = target

    def _openLogFile(self, path: str | bytes) -> LogFile:
        # HTTPFactory's hook for this; its default file never rotates.
        name = os.fsdecode(path)
        return LogFile(
            os.path.basename(name), os.path.dirname(name), rotateLength=ROTATE_BYTES, maxRotatedFiles=KEEP_FILES
        )

    def log(self, request: Any) -> None:
        if self._target == NO_LOG:
            return
        if self._target == MAIN_LOG:
            _log.info("{line}", line=redacted_log_formatter(self._logDateTime, request))
            return
        super().log(request)
