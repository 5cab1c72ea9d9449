from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, timezone
from pathlib import Path
from typing import Any

import pytest

# The twistd processes the end-to-end tests start run this checkout's code,
# not whichever copy `pip install .` put in the venv last (the plugins found
# there import `scheduler` and `worker` through this path first).
_CHECKOUT = str(Path(__file__).resolve().parent.parent)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [_CHECKOUT, os.environ.get("PYTHONPATH")]))


@pytest.fixture
def reactor() -> Any:
    # pytest-twisted installs the reactor; it has no fixture of its own.
    from twisted.internet import reactor as installed

    return installed


@pytest.fixture
def utc() -> timezone:
    return UTC


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """The umask most systems run with (022), whatever this process's is: for tests of file modes."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


# The throwaway PostgreSQL server of the --db tests, and a schema per test.
from tests.postgres_support import pg_url, postgres_server  # noqa: E402, F401
