"""The OpenAPI document follows the code: every route, the Guard's answers,
and its lists (statuses, task options, bounds) read from the code."""

from __future__ import annotations

import re
from typing import Any

import pytest

from scheduler.http_api import SchedulerHTTP
from scheduler.http_guard import is_public
from scheduler.http_openapi import OPENAPI
from scheduler.jobs import JobStatus
from scheduler.tasks import MISSED_POLICIES, OVERLAP_POLICIES, TaskError, TaskOptions

SCHEMAS = OPENAPI["components"]["schemas"]


def test_job_status_enum_is_jobstatus() -> None:
    statuses = [status.value for status in JobStatus]
    assert SCHEMAS["Job"]["properties"]["status"]["enum"] == statuses
    (status_filter,) = [p for p in OPENAPI["paths"]["/api/jobs"]["get"]["parameters"] if p["name"] == "status"]
    assert status_filter["schema"]["enum"] == statuses


def test_task_options_are_every_option_with_its_default() -> None:
    defaults = TaskOptions().as_dict()
    for schema in ("Task", "NewTask"):
        properties = SCHEMAS[schema]["properties"]
        assert set(defaults) <= set(properties), schema
        for name, default in defaults.items():
            assert properties[name].get("default") == default, name
    assert SCHEMAS["NewTask"]["properties"]["overlap"]["enum"] == list(OVERLAP_POLICIES)
    assert SCHEMAS["NewTask"]["properties"]["missed"]["enum"] == list(MISSED_POLICIES)


def accepted(name: str, value: Any) -> bool:
    try:
        TaskOptions.from_mapping({name: value})
    except TaskError:
        return False
    return True


@pytest.mark.parametrize("name", ["timeout", "retries", "retryDelay", "missedCap"])
def test_documented_bounds_are_the_ones_validation_applies(name: str) -> None:
    schema = SCHEMAS["NewTask"]["properties"][name]
    step = 1 if schema["type"] == "integer" else 0.001
    high = schema["maximum"]
    assert accepted(name, high) and not accepted(name, high + step)
    if "exclusiveMinimum" in schema:
        low = schema["exclusiveMinimum"]
        assert not accepted(name, low) and accepted(name, low + step)
    else:
        low = schema["minimum"]
        assert accepted(name, low) and not accepted(name, low - step)


def _klein_routes() -> set[tuple[str, str]]:
    routes = set()
    for rule in SchedulerHTTP.app.url_map.iter_rules():
        path = rule.rule.replace("<task_id>", "{id}").replace("<job_id>", "{id}")
        path = re.sub(r"<([a-z_]+)>", r"{\1}", path)
        if rule.rule.startswith("/static/"):
            path = "/static/v-{version}/{path}" if rule.rule.startswith("/static/v-") else "/static/{path}"
        for method in rule.methods or ():
            if method not in ("HEAD", "OPTIONS"):
                routes.add((path, method.lower()))
    return routes


def test_openapi_lists_every_route() -> None:
    documented = {
        (path, method) for path, item in OPENAPI["paths"].items() for method in item if method != "parameters"
    }
    missing = _klein_routes() - documented
    assert not missing, f"routes missing from http_openapi.py: {sorted(missing)}"
    assert not documented - _klein_routes(), "http_openapi.py documents routes that do not exist"


def test_openapi_lists_the_guards_answers() -> None:
    for path, item in OPENAPI["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            codes = set(operation["responses"])
            assert {"400", "403", "408"} <= codes, (path, method)
            if not is_public(path.replace("{path}", "file")):
                assert "401" in codes, (path, method)
    health = OPENAPI["paths"]["/api/health"]["get"]["responses"]["200"]
    assert "version" in health["content"]["application/json"]["schema"]["properties"]
