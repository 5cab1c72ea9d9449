"""The OpenAPI document's lists are the code's: statuses, task options, bounds."""

from __future__ import annotations

from typing import Any

import pytest

from scheduler.jobs import JobStatus
from scheduler.openapi import OPENAPI
from scheduler.tasks import MISSED_POLICIES, OVERLAP_POLICIES, TaskError, TaskOptions

SCHEMAS = OPENAPI["components"]["schemas"]


def test_job_status_enum_is_jobstatus() -> None:
    assert SCHEMAS["Job"]["properties"]["status"]["enum"] == [status.value for status in JobStatus]


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
