"""No answer redirects: a redirect built by the routing (Werkzeug's, for a
missing trailing slash or a doubled one) would name this process's own
host and port, which behind a container's port mapping or a proxy is not
the one the client used."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted

from tests.helpers import settled
from tests.test_http_api import close_api, make_api


@pytest_twisted.ensureDeferred
async def test_no_path_answers_a_redirect(tmp_path: Path, reactor: Any) -> None:
    from scheduler.http_api import SchedulerHTTP

    # Werkzeug redirects a path missing the trailing slash of a rule that has one.
    assert [rule.rule for rule in SchedulerHTTP.app.url_map.iter_rules() if rule.rule.endswith("/")] == ["/"]
    api = await make_api(tmp_path, reactor)
    try:
        for path in ("/static", "/static/", "/api/tasks/", "/api//tasks", "//", "/api/jobs/1/"):
            response = await settled(
                api.treq,
                api.treq.get(
                    f"http://localhost{path}", headers={b"Host": [b"localhost:8080"]}, allow_redirects=False
                ),
            )
            await settled(api.treq, response.content())
            assert not 300 <= response.code < 400, (path, response.code)
            assert response.headers.getRawHeaders(b"location") is None, path
    finally:
        await close_api(api)
