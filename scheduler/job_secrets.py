"""Named secrets, resolved only into the ``run`` message a worker gets.

``--secrets-dir`` holds one file per secret; the file name is the secret's
name (letters, digits, ``_`` and ``-``), its content the value (one
trailing newline dropped).  A task's command or ``env`` values refer to
one as ``${secret:NAME}``; tasks.db, the job store, the API and the live
feed keep and show that reference, never the value.  The dispatcher
resolves it when it sends the job (:meth:`SecretBook.resolve`), and tells
the worker which values to mask in the output (``mask`` in the run
message); the scheduler masks the output again before keeping it.

A sidecar file ``NAME.labels`` (labels, comma- or space-separated) limits
the secret to workers with at least one of those labels: a job placed on
any other worker fails before it is sent, saying why.  So does a job that
names a secret there is none of.

A secret file must belong to the scheduler's user and be readable by no
one else (mode 0600 or 0400): anything else is refused at start with the
file named.  The folder is read again when it changes (the service checks
every few seconds); a bad file then keeps the secrets read before, and the
log says why.  Dot files are ignored.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from scheduler.access import AccessError, file_signature

REFERENCE = re.compile(r"\$\{secret:([^}]*)\}")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,99}$")
LABELS_SUFFIX = ".labels"
# Shorter values would mask ordinary words all over the output.
MIN_LENGTH = 4


class SecretError(Exception):
    """A job cannot get the secrets it names; the message says which and why."""


@dataclass(frozen=True)
class Secret:
    name: str
    value: str = field(default="", repr=False)
    labels: frozenset[str] | None = None  # None: any worker


@dataclass(frozen=True)
class Resolved:
    """A job's command and env with their secrets in, and the values to mask (none of it in its repr)."""

    command: str = field(repr=False)
    env: dict[str, str] = field(repr=False)
    mask: tuple[str, ...] = field(repr=False)


def references(command: str, env: Mapping[str, str]) -> list[str]:
    """The secret names *command* and *env*'s values refer to, in order, each once."""
    names: dict[str, None] = {}
    for text in (command, *env.values()):
        for match in REFERENCE.finditer(text):
            names.setdefault(match.group(1), None)
    return list(names)


class SecretBook:
    """The secrets folder, as last read cleanly."""

    def __init__(self, path: str | None = None, *, uid: int | None = None) -> None:
        self.path = path
        self._uid = os.geteuid() if uid is None else uid
        self.secrets: dict[str, Secret] = {}
        self._signature: tuple[tuple[str, int, int, int], ...] | None = None

    def load(self) -> bool:
        """(Re)read the folder if anything in it changed; True if it did.

        Raises AccessError naming the file at fault and keeps what was read before.
        """
        if self.path is None:
            return False
        folder = Path(self.path)
        try:
            entries = sorted(entry for entry in os.listdir(folder) if not entry.startswith("."))
            signature = tuple((entry, *file_signature(folder / entry)) for entry in entries)
        except OSError as error:
            raise AccessError(f"cannot read the secrets folder {self.path}: {error.strerror or error}") from None
        if signature == self._signature:
            return False
        secrets = self._read(folder, entries)
        self.secrets = secrets
        self._signature = signature
        return True

    def _read(self, folder: Path, entries: list[str]) -> dict[str, Secret]:
        values: dict[str, str] = {}
        labels: dict[str, frozenset[str]] = {}
        for entry in entries:
            path = folder / entry
            if entry.endswith(LABELS_SUFFIX):
                name = entry[: -len(LABELS_SUFFIX)]
                if not _NAME.match(name):
                    raise AccessError(f"{path}: '{name[:40]}' is not a secret name (letters, digits, _ and -)")
                words = frozenset(word for word in re.split(r"[\s,]+", _read_text(path)) if word)
                if not words:
                    raise AccessError(f"{path} names no labels (write them comma-separated, or remove the file)")
                labels[name] = words
                continue
            if not _NAME.match(entry):
                raise AccessError(
                    f"{path}: '{entry[:40]}' is not a secret name (letters, digits, _ and -; "
                    f"NAME{LABELS_SUFFIX} holds a secret's labels)"
                )
            self._check_private(path)
            value = _read_text(path)
            value = value[:-1] if value.endswith("\n") else value
            value = value[:-1] if value.endswith("\r") else value
            if len(value) < MIN_LENGTH:
                raise AccessError(f"{path}: the secret is shorter than {MIN_LENGTH} characters, too short to mask in output")
            values[entry] = value
        orphans = sorted(set(labels) - set(values))
        if orphans:
            raise AccessError(f"{folder / (orphans[0] + LABELS_SUFFIX)} gives labels to a secret there is no file for")
        return {name: Secret(name, value, labels.get(name)) for name, value in values.items()}

    def _check_private(self, path: Path) -> None:
        found = os.stat(path)
        if not stat.S_ISREG(found.st_mode):
            raise AccessError(f"{path} is not a regular file")
        if found.st_mode & 0o077:
            raise AccessError(
                f"{path} can be read by others than the scheduler's user (mode {stat.S_IMODE(found.st_mode):04o}): "
                f"run chmod 600 {path}"
            )
        if found.st_uid != self._uid:
            raise AccessError(f"{path} belongs to another user (uid {found.st_uid}): the scheduler's user must own it")

    def resolve(self, command: str, env: Mapping[str, str], worker: str, labels: frozenset[str]) -> Resolved:
        """*command* and *env* with each ``${secret:NAME}`` replaced, for *worker*; SecretError says why not."""
        names = references(command, env)
        if not names:
            return Resolved(command, dict(env), ())
        chosen: dict[str, Secret] = {}
        for name in names:
            secret = self.secrets.get(name)
            if secret is None:
                raise SecretError(f"no secret named '{name[:100]}' (in --secrets-dir)")
            if secret.labels is not None and not (secret.labels & labels):
                wanted = ", ".join(sorted(secret.labels))
                raise SecretError(
                    f"secret '{name}' is only for workers with label {wanted}; worker {worker} has "
                    f"{', '.join(sorted(labels)) or 'no labels'}"
                )
            chosen[name] = secret

        def fill(text: str) -> str:
            return REFERENCE.sub(lambda match: chosen[match.group(1)].value, text)

        return Resolved(
            fill(command),
            {key: fill(value) for key, value in env.items()},
            tuple(secret.value for secret in chosen.values()),
        )

    def values_for(self, command: str, env: Mapping[str, str]) -> Sequence[str]:
        """The values of the secrets a job refers to that exist now (to mask its output)."""
        return tuple(self.secrets[name].value for name in references(command, env) if name in self.secrets)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise AccessError(f"{path} is not UTF-8 text") from None
    except OSError as error:
        raise AccessError(f"cannot read {path}: {error.strerror or error}") from None
