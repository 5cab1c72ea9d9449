"""The dashboard with named tokens, in Chromium: it hides what the token cannot do, and shows the audit log."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from scheduler.access_tokens import token_hash
from tests.e2e import http_json, start_scheduler, stop
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, WAIT, shot, source_env

VIEWER = "viewer-token-0123456789abcdef"
OPS = "ops-token-0123456789abcdef"

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium")


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def page_with(browser: Browser, token: str | None, width: int = 1280, height: int = 900) -> Page:
    page = browser.new_context(viewport={"width": width, "height": height}).new_page()
    if token is not None:
        page.add_init_script(f"sessionStorage.setItem('scheduler.apiToken', {token!r})")
    return page


def test_a_read_token_sees_no_buttons_it_cannot_use_and_the_audit_log(browser: Browser, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"viewer read {token_hash(VIEWER)}\nops admin {token_hash(OPS)}\n")
    scheduler = start_scheduler(tmp_path, "--tokens-file", str(tokens), env=source_env())
    try:
        code, task = http_json("POST", scheduler.url + "/api/tasks", {"schedule": "@daily", "command": "echo hi"}, token=OPS)
        assert code == 201
        # No worker: the job stays queued, in Running now with its Cancel.
        code, job = http_json("POST", scheduler.url + "/api/jobs", {"command": "echo queued"}, token=OPS)
        assert code == 202

        # The viewer gives the token at the prompt; the page then asks who it is.
        viewer = page_with(browser, None)
        viewer.goto(scheduler.url + "/")
        dialog = viewer.get_by_role("dialog", name="API token needed")
        dialog.get_by_label("API token").fill(VIEWER)
        dialog.get_by_role("button", name="Use token").click()
        expect(viewer.locator("body")).to_have_attribute("data-can", "read", timeout=WAIT)
        expect(viewer.locator("#who")).to_have_text("Signed in as viewer · read")
        row = viewer.locator("#tasks-body tr.task", has_text="echo hi")
        expect(row).to_be_visible(timeout=WAIT)
        running = viewer.locator("#running-body tr", has_text="echo queued")
        expect(running).to_be_visible(timeout=WAIT)
        for hidden in (
            row.get_by_role("button", name="Run now task_1"),
            row.get_by_role("button", name="Edit task_1"),
            running.get_by_role("button", name=f"Cancel job {job['id']}"),
            viewer.locator("#run-card"),
            viewer.locator("#task-add"),
            viewer.locator("#maintenance-toggle"),
        ):
            expect(hidden).to_be_hidden()
        # The shortcut to add a task does nothing either.
        viewer.keyboard.press("n")
        expect(viewer.locator("#task-form")).to_be_hidden()
        shot(viewer, tmp_path, "access-read-dashboard")

        # The task's page: History and Audit, none of the buttons.
        row.get_by_role("link", name="task_1").click()
        actions = viewer.locator("#task-actions")
        expect(actions.get_by_role("link", name="History of task_1")).to_be_visible(timeout=WAIT)
        expect(actions.locator("button:visible")).to_have_count(0)
        # The job's page: no Cancel, no Run again.
        viewer.goto(f"{scheduler.url}/#/jobs/{job['id']}")
        expect(viewer.locator("#job-status")).to_have_text("queued", timeout=WAIT)
        expect(viewer.locator("#job-actions button:visible")).to_have_count(0)
        # The channels: the list, not the form.
        viewer.goto(f"{scheduler.url}/#/channels")
        expect(viewer.locator("#channels-title")).to_be_visible(timeout=WAIT)
        expect(viewer.locator("#channel-form")).to_be_hidden()

        # The audit log, from the header; its heading takes the focus.
        viewer.get_by_role("link", name="Audit", exact=True).click()
        expect(viewer.locator("#audit-title")).to_be_focused()
        body = viewer.locator("#audit-body")
        expect(body).to_contain_text("task.add", timeout=WAIT)
        expect(body).to_contain_text("job.run")
        expect(body).to_contain_text("ops")
        expect(viewer.locator("#audit-shown")).to_have_text(re.compile(r"^Showing \d+ entries\.$"))
        viewer.get_by_label("Action").select_option("job.run")
        viewer.get_by_role("button", name="Filter").click()
        expect(viewer).to_have_url(re.compile(r"#/audit\?action=job\.run$"))
        expect(body.locator("tr")).to_have_count(1)
        expect(body).to_contain_text(f"#{job['id']}")
        shot(viewer, tmp_path, "access-read-audit")
        # Escape goes back to the dashboard.
        viewer.keyboard.press("Escape")
        expect(viewer.locator("#dashboard-title")).to_be_focused()

        ops = page_with(browser, OPS)
        ops.goto(scheduler.url + "/")
        expect(ops.locator("body")).to_have_attribute("data-can", "read run write admin", timeout=WAIT)
        expect(ops.locator("#who")).to_have_text("Signed in as ops · read, run, write, admin")
        ops_row = ops.locator("#tasks-body tr.task", has_text="echo hi")
        expect(ops_row.get_by_role("button", name="Run now task_1")).to_be_visible(timeout=WAIT)
        expect(ops_row.get_by_role("button", name="Edit task_1")).to_be_visible()
        expect(ops.locator("#running-body tr", has_text="echo queued").get_by_role("button", name=f"Cancel job {job['id']}")).to_be_visible()
        for shown in ("#run-card", "#task-add", "#maintenance-toggle"):
            expect(ops.locator(shown)).to_be_visible()
        ops.goto(f"{scheduler.url}/#/tasks/{task['id']}")
        expect(ops.locator("#task-actions").get_by_role("button", name="Delete task_1")).to_be_visible(timeout=WAIT)
        ops.goto(f"{scheduler.url}/#/audit?task={task['id']}")
        expect(ops.locator("#audit-body tr")).to_have_count(1, timeout=WAIT)
        expect(ops.get_by_label("Task #")).to_have_value(str(task["id"]))
    finally:
        stop(scheduler.process)
