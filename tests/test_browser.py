"""The dashboard in a real browser: Chromium driven by Playwright against the
real ``twistd scheduler`` (and a real ``twistd worker``) on free loopback ports.

The processes run this checkout's code (PYTHONPATH), so the dashboard under
test is ``static/`` here, not a copy installed earlier by pip.  Screenshots go
to each test's tmp_path and to /tmp/dashboard-shots/ for a person to look at.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from scheduler.jobs import JobStatus
from tests.e2e import TWISTD, Scheduler, start_scheduler, stop, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SHOTS = Path("/tmp/dashboard-shots")
WAIT = 15_000  # ms, for expect(): a job runs, an event arrives
XSS = "<img src=x onerror=alert(1)>"
CSP_REFUSAL = "Content Security Policy"  # in Chromium's console message for each refusal

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason="needs Debian's chromium (make test installs it)"
)


def source_env() -> dict[str, str]:
    """Run the processes from this checkout rather than an installed copy."""
    paths = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {"PYTHONPATH": os.pathsep.join(paths)}


def api(scheduler: Scheduler, path: str) -> Any:
    with urllib.request.urlopen(scheduler.url + path, timeout=10) as response:
        return json.load(response)


def send(scheduler: Scheduler, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(
        scheduler.url + path,
        data=json.dumps(body or {}).encode(),
        headers={"Content-Type": "application/json"},
        method=method,
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def restart(scheduler: Scheduler) -> Scheduler:
    """Start the scheduler again in the same directory on the same ports."""
    log = open(scheduler.workdir / "scheduler.log", "ab")  # closed when the process exits
    process = subprocess.Popen(
        [
            *TWISTD,
            "--pidfile=",
            "-n",
            "scheduler",
            "--tcp",
            f"tcp:{scheduler.tcp}:interface=127.0.0.1",
            "--http",
            f"tcp:{scheduler.http}:interface=127.0.0.1",
        ],
        cwd=scheduler.workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **source_env()},
    )
    wait_for_port(scheduler.tcp, process)
    wait_for_port(scheduler.http, process)
    return Scheduler(scheduler.workdir, process, scheduler.tcp, scheduler.http)


def shot(page: Page, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    SHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SHOTS / path.name)


# -- fixtures -------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scheduler]:
    running = start_scheduler(tmp_path_factory.mktemp("dashboard"), env=source_env())
    yield running
    stop(running.process)


@pytest.fixture(scope="module")
def worker(server: Scheduler) -> Iterator[str]:
    """A real worker "w1" with 2 slots, connected to *server*."""
    log_path = server.workdir / "worker.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [
                *TWISTD,
                "--pidfile=",
                "-n",
                "worker",
                "--url",
                f"ws://127.0.0.1:{server.http}/ws/worker",
                "--name",
                "w1",
                "--slots",
                "2",
                "--labels",
                "browser-test",
            ],
            cwd=server.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **source_env()},
        )
    try:
        deadline = time.monotonic() + 20
        while not any(w["name"] == "w1" for w in api(server, "/api/workers")):
            try:
                # Waiting on the process doubles as the pause between checks.
                process.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline:
                    pytest.fail("the worker never showed up in /api/workers")
                continue
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:]
            pytest.skip(f"the worker agent cannot start yet (exit {process.returncode}): {' '.join(tail)}")
        yield "w1"
    finally:
        stop(process)


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    # The scheduler's Content-Security-Policy must not block anything the
    # dashboard does: Chromium reports each refusal on the console.
    refused: list[str] = []
    opened.on(
        "console", lambda message: refused.append(message.text) if CSP_REFUSAL in message.text else None
    )
    yield opened
    context.close()
    assert errors == [], f"uncaught errors in the page: {errors}"
    assert refused == [], f"the Content-Security-Policy refused: {refused}"


def dismiss_toasts(page: Page) -> None:
    """Close the notices, which cover the buttons in the bottom right corner."""
    toasts = page.locator(".toast-close")
    while toasts.count():
        toasts.first.click()


def open_dashboard(page: Page, scheduler: Scheduler) -> None:
    response = page.goto(scheduler.url + "/")
    assert response is not None and response.ok, f"GET / answered {response and response.status}"
    expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT)
    expect(page.locator("#tasks-count")).not_to_be_empty()


def task_row(page: Page, name: str) -> Locator:
    """The Tasks table's row of task *name*, found with the table's filter
    (the table shows its first rows only, unless filtered)."""
    page.locator("#tasks-filter").fill(name)
    expect(page.locator("#tasks-shown")).to_contain_text("tasks match")  # the filter has applied
    return page.locator("#tasks-body tr.task", has_text=name)


def open_task_form(page: Page) -> Locator:
    page.locator("#task-add").click()
    form = page.locator("#task-form")
    expect(form).to_be_visible()
    return form


# -- scenarios ------------------------------------------------------------------------


def test_run_now_shows_live_output(page: Page, server: Scheduler, worker: str, tmp_path: Path) -> None:
    open_dashboard(page, server)
    expect(page.locator("#workers-list")).to_contain_text(worker)
    expect(page.locator("#workers-list")).to_contain_text("0/2 slots in use")

    form = page.locator("#run-form")
    form.get_by_label("Command").fill("echo hello-from-browser")
    form.get_by_label("Target").select_option(f"worker:{worker}")
    form.get_by_role("button", name="Run").click()

    expect(page).to_have_url(re.compile(r"#/jobs/\d+$"))
    output = page.locator("#output")
    expect(output).to_contain_text("hello-from-browser", timeout=WAIT)
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=WAIT)
    expect(page.locator("#job-details")).to_contain_text(worker)
    # The page's fetches say they are the dashboard's.
    expect(page.locator("#job-details")).to_contain_text("Triggered bydashboard")
    shot(page, tmp_path, "job-page")

    # Output that comes after the page has loaded arrives over the feed, once.
    page.get_by_role("link", name="← Dashboard").click()
    form.get_by_label("Command").fill("echo first-line; sleep 1.5; echo later-line")
    form.get_by_role("button", name="Run").click()
    expect(output).to_contain_text("first-line", timeout=WAIT)
    expect(page.locator("#job-status")).to_have_text("running")
    expect(output).to_contain_text("later-line", timeout=WAIT)
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=WAIT)
    assert output.evaluate("el => el.textContent") == "first-line\nlater-line\n"

    # The Jobs panel has both, colour-coded, with their worker.
    page.get_by_role("link", name="← Dashboard").click()
    rows = page.locator("#jobs-body tr")
    expect(rows.filter(has_text="hello-from-browser")).to_have_count(1)
    expect(rows.first.locator('.badge[data-status="succeeded"]')).to_be_visible()
    expect(rows.first).to_contain_text(worker)


def test_job_statuses_read_and_look_as_their_names_say(page: Page, server: Scheduler) -> None:
    """Labels, colours and the Jobs filter come from the status names the API
    publishes, so a status added to JobStatus shows without a dashboard edit."""
    open_dashboard(page, server)
    statuses = [status.value for status in JobStatus]
    expect(page.locator("#jobs-filter option")).to_have_text(
        ["All", *(status.replace("_", " ").capitalize() for status in statuses)]
    )
    looks = page.evaluate(
        """async (statuses) => {
            // The page's own module, whatever path the server gives its files.
            const src = document.querySelector('script[type=module]').src;
            const {statusBadge} = await import(new URL('./job_status.js', src).href);
            const looks = {};
            for (const status of statuses) {
                const badge = document.body.appendChild(statusBadge(status));
                looks[status] = [badge.textContent, getComputedStyle(badge).backgroundColor];
                badge.remove();
            }
            return looks;
        }""",
        [*statuses, "some_new_status"],
    )
    assert looks["timed_out"][0] == "timed out" and looks["some_new_status"][0] == "some new status"
    colours = {status: look[1] for status, look in looks.items()}
    assert len({colours[status] for status in statuses}) == len(statuses)
    assert colours["some_new_status"] == colours["queued"]  # neutral until it gets a colour


def test_add_check_and_delete_a_task(page: Page, server: Scheduler, tmp_path: Path) -> None:
    open_dashboard(page, server)
    posts: list[str] = []
    page.on("request", lambda request: posts.append(request.url) if request.method == "POST" else None)
    form = open_task_form(page)
    expect(form.get_by_label("Schedule")).to_be_focused()
    schedule = form.get_by_label("Schedule")
    hint = page.locator("#schedule-hint")

    # The schedule is checked while typing, before anything is submitted.
    schedule.press_sequentially("61 * * * *")
    expect(hint).to_contain_text("minute must be 0-59")
    expect(schedule).to_have_attribute("aria-invalid", "true")
    assert posts == []

    # Submitting anyway shows the server's {"error": ...}.
    form.get_by_label("Command").fill("echo scheduled")
    form.get_by_role("button", name="Add task").click()
    expect(page.locator("#task-error")).to_contain_text("minute must be 0-59")

    schedule.fill("*/5 * * * *")
    expect(hint).to_contain_text("every 5 minutes")
    expect(hint.locator("time")).to_have_count(3)
    expect(schedule).to_have_attribute("aria-invalid", "false")
    form.get_by_label("Job name").fill("every-five")
    form.get_by_role("button", name="Add task").click()
    expect(form).to_be_hidden()

    row = task_row(page, "every-five")
    expect(row).to_contain_text("*/5 * * * *")
    expect(row).to_contain_text("every 5 minutes, every day")
    expect(row).to_contain_text("echo scheduled")
    next_run = row.locator(".next-run time")
    expect(next_run).not_to_be_empty()
    (task,) = [t for t in api(server, "/api/tasks") if t["jobName"] == "every-five"]
    expect(next_run).to_have_attribute("datetime", task["nextRun"])
    assert int(task["nextRun"][14:16]) % 5 == 0
    expect(schedule).to_have_value("")
    shot(page, tmp_path, "dashboard-desktop")

    # Delete is on the task's page, and asks first.
    row.get_by_role("link", name="every-five").click()
    expect(page).to_have_url(re.compile(rf"#/tasks/{task['id']}$"))
    actions = page.locator("#task-actions")
    actions.get_by_role("button", name="Delete every-five").click()
    expect(actions).to_contain_text("Delete every-five?")
    actions.get_by_role("button", name="Cancel").click()
    actions.get_by_role("button", name="Delete every-five").click()
    actions.get_by_role("button", name="Delete", exact=True).click()
    expect(page).to_have_url(re.compile(r"#/$"))
    expect(page.locator("#tasks-body tr.task", has_text="every-five")).to_have_count(0)
    assert not any(t["jobName"] == "every-five" for t in api(server, "/api/tasks"))


def test_user_strings_render_as_text(page: Page, server: Scheduler, tmp_path: Path) -> None:
    dialogs: list[str] = []

    def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    open_dashboard(page, server)

    # As a task (jobName and command) ...
    form = open_task_form(page)
    form.get_by_label("Schedule").fill("@daily")
    form.get_by_label("Command").fill(XSS)
    form.get_by_label("Job name").fill("<svg/onload=alert(2)>")
    form.get_by_role("button", name="Add task").click()
    row = task_row(page, "<svg/onload=alert(2)>")
    expect(row.locator(".task-command")).to_have_text(XSS)

    # ... and as a command run now: the job page and the Jobs panel.
    run = page.locator("#run-form")
    run.get_by_label("Command").fill(XSS)
    run.get_by_role("button", name="Run").click()
    expect(page.locator("#job-command")).to_have_text(XSS)
    page.get_by_role("link", name="← Dashboard").click()
    expect(page.locator("#jobs-body tr").first.locator("td.cmd")).to_have_text(XSS)

    assert page.locator("img, svg").count() == 0
    assert page.evaluate("document.body.innerHTML.includes('<img')") is False
    assert dialogs == []


def test_asks_once_for_an_api_token(page: Page, server: Scheduler) -> None:
    """With a token required (simulated here: the API answers 401 without
    it), the dashboard asks once and then sends it on every call and the feed."""
    token = "s3cret-token"
    refused: list[str] = []

    def guard(route: Any) -> None:
        if route.request.headers.get("authorization") == f"Bearer {token}":
            route.continue_()
        else:
            refused.append(route.request.url)
            route.fulfill(
                status=401, content_type="application/json", body='{"error": "wrong or missing API token"}'
            )

    page.route("**/api/**", guard)
    page.goto(server.url + "/")
    dialog = page.get_by_role("dialog", name="API token needed")
    expect(dialog).to_be_visible()
    dialog.get_by_label("API token").fill(token)
    dialog.get_by_role("button", name="Use token").click()
    expect(dialog).to_be_hidden()
    expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT)
    expect(page.locator("#tasks-count")).not_to_be_empty()
    assert page.evaluate("sessionStorage.getItem('scheduler.apiToken')") == token
    refused_before = len(refused)

    run = page.locator("#run-form")
    run.get_by_label("Command").fill("echo with-token")
    run.get_by_role("button", name="Run").click()
    expect(page.locator("#job-command")).to_have_text("echo with-token")
    expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT)
    assert len(refused) == refused_before


def test_phone_layout(browser: Browser, server: Scheduler, tmp_path: Path) -> None:
    context = browser.new_context(viewport={"width": 375, "height": 740}, device_scale_factor=2)
    page = context.new_page()
    try:
        # A long command must not widen the page.
        open_dashboard(page, server)
        long_command = "echo " + "x" * 300
        run = page.locator("#run-form")
        run.get_by_label("Command").fill(long_command)
        run.get_by_role("button", name="Run").click()
        expect(page.locator("#job-command")).to_have_text(long_command)
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        shot(page, tmp_path, "phone-job")

        page.get_by_role("link", name="← Dashboard").click()
        expect(page.locator("#jobs-body")).to_contain_text("echo xxx")
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        shot(page, tmp_path, "phone-dashboard")
    finally:
        context.close()


def test_connection_lost_banner(page: Page, tmp_path: Path) -> None:
    scheduler = start_scheduler(tmp_path, env=source_env())
    try:
        open_dashboard(page, scheduler)
        banner = page.locator("#banner")
        expect(banner).to_be_hidden()

        stop(scheduler.process)
        expect(banner).to_be_visible(timeout=WAIT)
        expect(banner).to_contain_text("Connection lost — reconnecting")
        expect(page.locator("#conn")).to_have_attribute("data-state", "down")
        shot(page, tmp_path, "connection-lost")

        scheduler = restart(scheduler)
        expect(banner).to_be_hidden(timeout=20_000)
        expect(page.locator("#conn")).to_have_attribute("data-state", "live")
        # Live again: a task added on the command port shows up by itself.
        assert scheduler.command("ADD @hourly echo after-restart\n")[0].startswith("OK id=")
        expect(page.locator("#tasks-body")).to_contain_text("echo after-restart", timeout=WAIT)
    finally:
        stop(scheduler.process)


def test_the_dashboard_runs_under_its_csp_and_cannot_be_framed(browser: Browser, server: Scheduler) -> None:
    context = browser.new_context()
    page = context.new_page()
    refused: list[str] = []
    page.on("console", lambda message: refused.append(message.text) if CSP_REFUSAL in message.text else None)
    try:
        response = page.goto(server.url + "/")
        assert response is not None
        policy = response.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy and "unsafe-inline" not in policy
        assert response.headers["x-frame-options"] == "DENY"
        expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT)
        assert refused == []

        # Another page framing it (for a click in "Run now") gets nothing.
        with page.expect_console_message(lambda message: "frame-ancestors" in message.text):
            page.set_content(f'<iframe id="framed" src="{server.url}/"></iframe>')
        assert page.frame_locator("#framed").locator("#run-form").count() == 0
    finally:
        context.close()


def test_control_and_bidi_characters_show_as_escapes(page: Page, server: Scheduler) -> None:
    # U+202E (right-to-left override) would show "echo gpj.exe" as "echo exe.jpg".
    command = "echo \u202egpj.exe \x1b[2J"
    request = urllib.request.Request(
        server.url + "/api/tasks",
        data=json.dumps({"schedule": "@daily", "command": command, "jobName": "bidi\u2066name"}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201
    open_dashboard(page, server)
    row = task_row(page, "bidi\\u2066name")
    expect(row.locator(".task-command")).to_have_text("echo \\u202egpj.exe \\x1b[2J")
    assert "\u202e" not in row.inner_text() and "\u2066" not in row.inner_text()


def test_pause_edit_in_place_history_and_maintenance(page: Page, server: Scheduler, tmp_path: Path) -> None:
    task = send(
        server,
        "POST",
        "/api/tasks",
        {"schedule": "@daily", "command": "echo pausable", "jobName": "pausable"},
    )
    path = f"/api/tasks/{task['id']}"
    open_dashboard(page, server)
    task_row(page, "pausable").get_by_role("link", name="pausable").click()
    row = page.locator("#task-view")
    badges = page.locator("#task-badges")

    # Pause, with a reason, on the task's page; it says so; Resume undoes it.
    row.get_by_role("button", name="Pause… pausable").click()
    row.get_by_label("Reason").fill("disk swap")
    row.get_by_role("button", name="Pause", exact=True).click()
    expect(badges.locator(".badge-paused")).to_have_text("Paused")
    expect(row.locator("#task-next")).to_contain_text("paused until resumed")
    expect(row.locator("#task-options")).to_contain_text("disk swap")
    paused = api(server, path)
    assert paused["paused"] is True and paused["pauseReason"] == "disk swap"
    row.get_by_role("button", name="Resume pausable").click()
    expect(badges.locator(".badge-paused")).to_have_count(0)
    assert api(server, path)["paused"] is False

    # Edit in place (the form opens on the task's page): a change made
    # elsewhere after the form was opened wins (412 on the stale ETag), and
    # the form says to reload.
    row.get_by_role("button", name="Edit pausable").click()
    form = page.locator("#task-form")
    expect(form.get_by_label("Command")).to_have_value("echo pausable")
    send(server, "PATCH", path, {"command": "echo changed-elsewhere"})
    form.get_by_label("Command").fill("echo mine")
    form.get_by_role("button", name="Save changes").click()
    expect(page.locator("#task-error")).to_contain_text("changed elsewhere")
    assert api(server, path)["command"] == "echo changed-elsewhere"
    page.locator("#task-error").get_by_role("button", name="Reload").click()
    expect(form.get_by_label("Command")).to_have_value("echo changed-elsewhere")
    form.get_by_label("Schedule").fill("@hourly")
    form.get_by_role("button", name="Save changes").click()
    expect(row.locator("#task-options")).to_contain_text("@hourly")
    expect(form).to_be_hidden()
    edited = api(server, path)
    assert (edited["id"], edited["schedule"], edited["command"]) == (
        task["id"],
        "@hourly",
        "echo changed-elsewhere",
    )

    # History: each change, newest first, by whom, with what changed; restore the first.
    row.get_by_role("link", name="History of pausable").click()
    revisions = page.locator(".revision")
    expect(revisions).to_have_count(5)  # add, pause, resume, edit (API), edit (dashboard)
    expect(revisions.first).to_contain_text("by dashboard")
    expect(revisions.first.locator(".diff")).to_contain_text("@daily→@hourly")
    expect(revisions.nth(3)).to_contain_text("disk swap")
    shot(page, tmp_path, "task-history")
    dismiss_toasts(page)
    revisions.last.get_by_role("button", name="Restore this version").click()
    expect(revisions).to_have_count(6)
    restored = api(server, path)
    assert (restored["schedule"], restored["command"]) == ("@daily", "echo pausable")

    # Maintenance: the switch, then a banner on every page until it is off.
    page.get_by_role("link", name="← Task").click()
    page.get_by_role("link", name="← Dashboard").click()
    banner = page.locator("#maintenance-banner")
    expect(banner).to_be_hidden()
    try:
        page.get_by_role("button", name="Start maintenance").click()
        expect(banner).to_contain_text("Maintenance: no new runs start")
        expect(banner).to_contain_text("by dashboard")
        assert api(server, "/api/maintenance")["on"] is True
        page.reload()
        expect(banner).to_be_visible(timeout=WAIT)
        expect(page.get_by_role("button", name="End maintenance")).to_have_attribute("aria-pressed", "true")
        shot(page, tmp_path, "maintenance")
        banner.get_by_role("button", name="Turn maintenance off").click()
        expect(banner).to_be_hidden()
        assert api(server, "/api/maintenance")["on"] is False
    finally:
        send(server, "POST", "/api/maintenance", {"on": False})


def test_the_status_line_notes_the_last_clock_step(page: Page, server: Scheduler) -> None:
    """Hidden with no step since the start; after one (the health answer is
    replaced here: the real clock does not step), a muted note by the status."""
    open_dashboard(page, server)
    expect(page.locator("#clock-step")).to_be_hidden()

    def stepped(route: Any) -> None:
        body = {"status": "ok", "tasks": 0, "workers": 0, "queued": 0,
                "lastClockStep": {"direction": "forward", "seconds": 20.4, "at": "2024-03-05T11:05:02.000+00:00"}}
        route.fulfill(status=200, content_type="application/json", body=json.dumps(body))

    page.route("**/api/health", stepped)
    page.reload()  # a (re)connect reads it again
    expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT)
    note = page.locator("#clock-step")
    expect(note).to_be_visible()
    expect(note).to_have_text(re.compile(r"^clock stepped forward 20 s at \S"))
