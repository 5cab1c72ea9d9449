"""Redirects name a path, not a host and port: behind a container's port
mapping or a proxy, the port this process listens on is not the client's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted

from tests.helpers import settled
from tests.test_http_api import close_api, make_api


@pytest_twisted.ensureDeferred
async def test_a_trailing_slash_redirect_is_a_path(tmp_path: Path, reactor: Any) -> None:
    api = await make_api(tmp_path, reactor)
    try:
        # The Host a client behind a port mapping sends: 8080 outside, an
        # ephemeral port inside.
        response = await settled(
            api.treq,
            api.treq.get("http://localhost/static", headers={b"Host": [b"localhost:8080"]}, allow_redirects=False),
        )
        await settled(api.treq, response.content())
        assert response.code == 308
        assert response.headers.getRawHeaders(b"location") == [b"/static/"]
    finally:
        await close_api(api)
