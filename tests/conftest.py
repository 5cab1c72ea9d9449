from __future__ import annotations

from datetime import UTC, timezone
from typing import Any

import pytest


@pytest.fixture
def reactor() -> Any:
    # pytest-twisted installs the reactor; it has no fixture of its own.
    from twisted.internet import reactor as installed

    return installed


@pytest.fixture
def utc() -> timezone:
    return UTC
