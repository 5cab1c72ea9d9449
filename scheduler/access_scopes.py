"""Which scope each REST route and each command-port verb needs: the one table.

:data:`ROUTE_NEEDS` is keyed by the method and the route's rule as the
Klein app declares it (``/api/tasks/<task_id>``); :data:`VERB_NEEDS` by the
verb's word.  A need is a scope (``access_tokens.SCOPES``), ``any`` (any
valid credential, no particular scope) or ``public`` (no credential at
all; the route's own checks apply, as ``/ws/worker``'s worker token).

The Guard (``http_guard.py``) and the command port (``tcp_auth.py``) ask
:func:`route_need` and :data:`VERB_NEEDS`; SECURITY.md's table of scopes
says the same in words.  ``tests/test_access_scopes.py`` fails for a route
of the app or a verb of ``tcp_commands.VERBS`` that is not here, so a new
one cannot slip in without a decision.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Literal

from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, RequestRedirect

from scheduler.access_tokens import SCOPES, Scope

Need = Scope | Literal["any", "public"]


def scope_of(need: Need) -> Scope | None:
    """The scope a need asks for; None for ``any`` and ``public``."""
    for scope in SCOPES:
        if need == scope:
            return scope
    return None

ROUTE_NEEDS: dict[tuple[str, str], Need] = {
    # Public: the Guard lets these through without a credential.
    ("GET", "/api/health"): "public",
    ("GET", "/ws/worker"): "public",
    ("GET", "/"): "public",
    ("GET", "/static/<name>"): "public",
    ("GET", "/static/v-<version>/<name>"): "public",
    # Ping checks: the uuid in the path is the secret (SECURITY.md).
    ("POST", "/api/ping/<check>"): "public",
    ("POST", "/api/ping/<check>/fail"): "public",
    ("POST", "/api/ping/<check>/start"): "public",
    # Who am I: any credential.
    ("GET", "/api/me"): "any",
    # Reading.
    ("GET", "/metrics"): "read",
    ("GET", "/api/openapi.json"): "read",
    ("GET", "/api/cluster"): "read",
    ("GET", "/api/tasks"): "read",
    ("GET", "/api/tasks/<task_id>"): "read",
    ("GET", "/api/tasks/<task_id>/revisions"): "read",
    ("GET", "/api/tasks/<task_id>/alerts"): "read",
    ("GET", "/api/pools"): "read",
    ("GET", "/api/maintenance"): "read",
    ("GET", "/api/schedules/check"): "read",
    ("GET", "/api/jobs"): "read",
    ("GET", "/api/jobs/<job_id>"): "read",
    ("GET", "/api/jobs/<job_id>/log"): "read",
    ("GET", "/api/jobs/<job_id>/output"): "read",
    ("GET", "/api/channels"): "read",
    ("GET", "/api/alerts"): "read",
    ("GET", "/api/alerts/defaults"): "read",
    ("GET", "/api/workers"): "read",
    ("GET", "/api/events"): "read",
    ("GET", "/api/audit"): "read",
    # Changing tasks.
    ("POST", "/api/tasks"): "write",
    ("PATCH", "/api/tasks/<task_id>"): "write",
    ("DELETE", "/api/tasks/<task_id>"): "write",
    ("POST", "/api/tasks/<task_id>/pause"): "write",
    ("POST", "/api/tasks/<task_id>/resume"): "write",
    ("POST", "/api/tasks/<task_id>/revisions/<revision>/restore"): "write",
    # Running and cancelling (tasks= and labels= narrow these, in the routes).
    ("POST", "/api/tasks/<task_id>/run"): "run",
    ("POST", "/api/jobs"): "run",
    ("POST", "/api/jobs/<job_id>/rerun"): "run",
    ("POST", "/api/jobs/<job_id>/cancel"): "run",
    # The scheduler itself.
    ("POST", "/api/maintenance"): "admin",
    ("POST", "/api/channels"): "admin",
    ("DELETE", "/api/channels/<name>"): "admin",
    ("POST", "/api/channels/<name>/test"): "admin",
    ("PUT", "/api/alerts/defaults"): "admin",
}

VERB_NEEDS: dict[str, Need] = {
    "PING": "public",
    "HELP": "public",
    "AUTH": "public",
    "QUIT": "public",
    "SESSION": "any",
    "LIST": "read",
    "STATUS": "read",
    "ADD": "write",
    "EDIT": "write",
    "PAUSE": "write",
    "RESUME": "write",
    "REMOVE": "write",
    "CLEAR": "write",
    "LOAD": "write",
    "SAVE": "write",
}


def route_need(url_map: Map, method: str, path: str) -> Need:
    """What a request for *path* with *method* needs, decided on the rule the router matches.

    A path no route answers needs ``any`` (it gets its 404 or 405 once the
    caller has shown a credential); a matched rule missing from the table
    needs ``admin``, so a forgotten route fails closed.
    """
    if method == "OPTIONS":
        return "any"  # says what the route allows, does nothing
    adapter = url_map.bind("localhost")
    try:
        rule, _ = adapter.match(path, method="GET" if method == "HEAD" else method, return_rule=True)
    except RequestRedirect:
        return "any"
    except HTTPException:
        return "any"
    return ROUTE_NEEDS.get(("GET" if method == "HEAD" else method, rule.rule), "admin")


def cached_route_need(url_map: Map) -> Callable[[str, str], Need]:
    """route_need on *url_map*, remembered for the most recent short paths.

    The routes and their needs are fixed, so a path's need is matched once
    rather than on every request (Klein matches it again to route it).
    Long paths are matched each time, so the cache stays small.
    """

    @functools.lru_cache(maxsize=1024)
    def cached(method: str, path: str) -> Need:
        return route_need(url_map, method, path)

    def need(method: str, path: str) -> Need:
        return cached(method, path) if len(path) <= 200 else route_need(url_map, method, path)

    return need


def app_routes(url_map: Map) -> set[tuple[str, str]]:
    """Every (method, rule) the app answers, HEAD and OPTIONS aside (they follow GET)."""
    return {
        (method, rule.rule)
        for rule in url_map.iter_rules()
        for method in (rule.methods or ())
        if method not in ("HEAD", "OPTIONS")
    }
