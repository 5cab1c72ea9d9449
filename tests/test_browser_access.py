"""The dashboard with named tokens, in Chromium: it hides what the token cannot do, and shows the audit log."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from scheduler.access_tokens import token_hash
from tests.e2e import http_json, start_scheduler, stop
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, WAIT, source_env

VIEWER = "viewer-token-0123456789abcdef"
OPS = "ops-token-0123456789abcdef"

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium")


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def page_with(browser: Browser, token: str) -> Page:
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.add_init_script(f"sessionStorage.setItem('scheduler.apiToken', {token!r})")
    return page


def test_a_read_token_sees_no_buttons_it_cannot_use_and_the_audit_log(browser: Browser, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"viewer read {token_hash(VIEWER)}\nops admin {token_hash(OPS)}\n")
    scheduler = start_scheduler(tmp_path, "--tokens-file", str(tokens), env=source_env())
    try:
        code, _ = http_json("POST", scheduler.url + "/api/tasks", {"schedule": "@daily", "command": "echo hi"}, token=OPS)
        assert code == 201

        viewer = page_with(browser, VIEWER)
        viewer.goto(scheduler.url + "/")
        expect(viewer.locator("body")).to_have_attribute("data-can", "read", timeout=WAIT)
        task = viewer.locator("#tasks-list li").first
        expect(task).to_contain_text("echo hi", timeout=WAIT)
        expect(task.get_by_role("link", name="History of task_1")).to_be_visible()
        for hidden in (task.get_by_role("button", name="Run task_1 now"), task.get_by_role("button", name="Edit task_1"),
                       viewer.locator("#run-card"), viewer.locator("#task-form"), viewer.locator("#maintenance-toggle")):
            expect(hidden).to_be_hidden()
        expect(viewer.locator("#who")).to_have_text("viewer · read")

        viewer.get_by_role("link", name="Audit log").click()
        expect(viewer.locator("#audit-body")).to_contain_text("task.add", timeout=WAIT)
        expect(viewer.locator("#audit-body")).to_contain_text("ops")

        ops = page_with(browser, OPS)
        ops.goto(scheduler.url + "/")
        expect(ops.locator("body")).to_have_attribute("data-can", "read run write admin", timeout=WAIT)
        expect(ops.locator("#tasks-list li").first.get_by_role("button", name="Run task_1 now")).to_be_visible(timeout=WAIT)
        expect(ops.locator("#run-card")).to_be_visible()
    finally:
        stop(scheduler.process)
