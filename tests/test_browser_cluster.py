"""The dashboard's Cluster panel in real Chromium: two real ``twistd scheduler --db``
nodes on one PostgreSQL; either node's dashboard lists both, says who leads in
which epoch, and follows a takeover. A single node shows no panel (the
embedded dashboards of tests/test_browser.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect, sync_playwright

from tests.e2e import (
    get_json,
    http_json,
    leader_and_follower,
    start_worker,
    stop,
    wait_until,
)
from tests.postgres_support import pg_url, postgres_server  # noqa: F401
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, WAIT, shot

ROOT = Path(__file__).resolve().parent.parent
ENV = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium (make test installs it)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def test_either_node_shows_the_cluster_and_follows_a_takeover(browser: Browser, tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    env = {**ENV, "SCHEDULER_DB": pg_url}
    with leader_and_follower(tmp_path, env, names=("node-a", "node-b")) as (a, b):
        wait_until(lambda: get_json(b.url + "/api/health"), 20, "node-b to answer")
        for width, height, name in ((1280, 800, "cluster-desktop"), (390, 844, "cluster-phone")):
            context = browser.new_context(viewport={"width": width, "height": height})
            page = context.new_page()
            try:
                page.goto(b.url + "/")
                card = page.locator("#cluster-card")
                expect(card).to_be_visible(timeout=WAIT)
                expect(page.locator("#cluster-state")).to_contain_text("node-a leads, epoch 1, since ")
                expect(card.locator("li.node")).to_have_count(2)
                leader = card.locator('li.node[data-leader="true"]')
                expect(leader).to_have_count(1)
                expect(leader).to_contain_text("node-a")
                expect(leader.locator(".badge-leader")).to_have_text("leader")
                expect(card.locator("li.node").first).to_contain_text("node-b (this page)")
                card.scroll_into_view_if_needed()
                assert page.evaluate("document.documentElement.scrollWidth") <= width
                shot(page, tmp_path, name)
                if name == "cluster-phone":
                    # The leader dies: the panel, read again every few seconds, follows.
                    a.process.kill()
                    a.process.wait()
                    expect(page.locator("#cluster-state")).to_contain_text("node-b leads, epoch 2, since ", timeout=WAIT)
                    expect(card.locator('li.node[data-leader="true"]')).to_contain_text("node-b")
            finally:
                context.close()


def test_a_jobs_page_on_the_node_that_does_not_manage_it_shows_its_output_live_once(
    browser: Browser,
    tmp_path: Path,
    pg_url: str,  # noqa: F811
) -> None:
    """A job started through node-a runs on node-b's worker (node-a has none):
    its page on node-a follows its status and its output as it is printed,
    each line once (the stored log, then the relayed chunks after it)."""
    env = {**ENV, "SCHEDULER_DB": pg_url}
    worker = None
    with leader_and_follower(tmp_path, env, names=("node-a", "node-b")) as (a, b):
        try:
            worker = start_worker(b.http, "w1", workdir=tmp_path / "b", env=ENV)
            wait_until(lambda: (body := http_json("GET", b.url + "/api/workers")[1]) and body, 20, "the worker on node-b")
            code, created = http_json("POST", a.url + "/api/jobs", {"command": "echo first-line; sleep 3; echo later-line"})
            assert code == 202, created
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            page = context.new_page()
            try:
                page.goto(f"{a.url}/#/jobs/{created['id']}")  # type: ignore[index]
                output = page.locator("#output")
                expect(output).to_contain_text("first-line", timeout=WAIT)
                expect(page.locator("#job-status")).to_have_text("running", timeout=WAIT)
                expect(page.locator("#job-details")).to_contain_text("w1")
                expect(output).to_contain_text("later-line", timeout=WAIT)
                expect(page.locator("#job-status")).to_have_text("succeeded", timeout=WAIT)
                assert output.evaluate("el => el.textContent") == "first-line\nlater-line\n"
                shot(page, tmp_path, "cluster-job-page")
            finally:
                context.close()
        finally:
            if worker is not None:
                stop(worker)
