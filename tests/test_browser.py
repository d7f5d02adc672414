"""The web console in a real headless Chromium, against ``firecron dev`` (console + API +
workers + dispatcher, as a user runs it).

Each test drives the pages as a person would (clicks, forms) and waits for what they
would see, with Playwright's own bounded waits (``expect``), never a sleep. "Without a
reload" is checked with a marker set on ``window`` before the action: a reload or a
navigation would drop it.

Needs the ``playwright`` package and a Chromium (``/usr/bin/chromium`` from Debian's
``chromium`` package, or ``FIRECRON_CHROMIUM``); no browser download. Without them the
tests are skipped, except under ``CI=true``, where they fail: CI must run them.

``FIRECRON_SCREENSHOTS=docs/img`` saves a screenshot of each page there (the README's).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _devstack import DevProcess, dev_stack

CHROMIUM = os.environ.get("FIRECRON_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
_CI = os.environ.get("CI", "").lower() == "true"

try:
    from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    if _CI:
        raise
    missing = "playwright is not installed (pip install -e '.[dev]')"
    pytest.skip(reason=missing, allow_module_level=True)

if not Path(CHROMIUM).exists():  # pragma: no cover - depends on the machine
    message = f"no Chromium at {CHROMIUM}: apt-get install -y chromium, or set FIRECRON_CHROMIUM"
    if _CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(reason=message, allow_module_level=True)

SCHEDULES = """
pipelines:
  - id: duo
    description: Two hellos, one after the other
    tasks:
      - id: first
        target: {function: hello}
      - id: second
        target: {function: hello}
        after: [first]
schedules:
  # On demand: no run until the browser triggers one.
  - id: greet
    description: Greets whoever the params name
    target: {function: hello}
  - id: nap
    target: {function: sleep}
    params: {seconds: 600}
    # A short lease: its worker checks in (and sees a cancel) every 3 s, not every minute.
    heartbeat_timeout: 15s
  - id: pausable
    every: 1h
    target: {function: hello}
  - id: duo-now
    target: {pipeline: duo}
  - id: berlin
    description: Greets Berlin at 09:30 on weekdays
    cron: "30 9 * * 1-5"
    timezone: Europe/Berlin
    target: {function: hello}
"""

HEADERS = {"X-Requested-By": "firecron", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevProcess]:
    """One ``firecron dev`` for the module's tests (each uses its own schedules)."""
    cwd = tmp_path_factory.mktemp("browser")
    (cwd / "schedules.yaml").write_text(SCHEDULES)
    with dev_stack(cwd, "--schedules", "schedules.yaml") as stack:
        yield stack


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        # --no-sandbox: Chromium refuses to sandbox as root (containers, CI runners).
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


class Console:
    """A page of the browser on the dev stack, recording every console error."""

    def __init__(self, page: Page, base: str) -> None:
        self.page = page
        self.base = base
        self.errors: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"{message.text} ({message.location.get('url', '')})")

    def open(self, path: str) -> Page:
        response = self.page.goto(self.base + path)
        assert response is not None
        assert response.status == 200, (path, response.status)
        return self.page

    def mark(self) -> None:
        """Set a marker that a reload or a navigation would drop."""
        self.page.evaluate("window.__firecronMark = 'still here'")

    def assert_not_reloaded(self) -> None:
        assert self.page.evaluate("window.__firecronMark") == "still here"

    def wait_for_refresh(self) -> None:
        """Wait until htmx has swapped in the next refresh of the live part (settled)."""
        self.page.evaluate(
            """() => new Promise(done => document.body.addEventListener(
                "htmx:afterSettle", () => done(true), {once: true}))"""
        )

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Call the admin API as the console does (same origin, the required header)."""
        response = self.page.request.fetch(
            f"{self.base}/api/v1{path}",
            method=method,
            headers=HEADERS,
            data=json.dumps(body or {}),
        )
        assert response.ok, (path, response.status, response.text())
        return response.json()


@pytest.fixture
def console(browser: Browser, dev: DevProcess) -> Iterator[Console]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    # Generous: the dispatcher ticks every second, and CI machines are slow.
    page.set_default_timeout(60_000)
    expect.set_options(timeout=60_000)
    opened = Console(page, dev.url)
    yield opened
    context.close()
    assert not opened.errors, opened.errors


def screenshot(page: Page, name: str) -> None:
    """Save ``name``.png in FIRECRON_SCREENSHOTS, when it is set."""
    folder = os.environ.get("FIRECRON_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def test_every_page_opens_without_console_errors(console: Console) -> None:
    page = console.open("/")
    expect(page.locator("tr[data-schedule='berlin']")).to_contain_text(
        "At 09:30, Monday through Friday"
    )
    expect(page.locator("tr[data-schedule='berlin']")).to_contain_text("Europe/Berlin")
    for path in ["/timeline", "/timeline?window=7d", "/pipelines", "/state"]:
        console.open(path)
        expect(page.locator("h1")).to_be_visible()
    expect(console.open("/pipelines").locator("g.task[data-task='second']")).to_be_visible()
    # The live refresh runs (htmx polls every 2 s) without errors: wait for one.
    console.open("/")
    console.wait_for_refresh()
    assert not console.errors


def test_trigger_a_schedule_and_watch_its_run_succeed(console: Console) -> None:
    page = console.open("/")
    row = page.locator("tr[data-schedule='greet']")
    expect(row).to_contain_text("no runs")
    console.mark()
    row.locator("summary", has_text="Trigger").click()
    row.locator("textarea[name=params]").fill('{"name": "browser"}')
    # The table refreshes every 2 s: the open form, and what was typed, survive it.
    console.wait_for_refresh()
    expect(row.locator("textarea[name=params]")).to_have_value('{"name": "browser"}')
    row.get_by_role("button", name="Trigger now").click()
    expect(page.locator("#flash")).to_contain_text("triggered: run greet@")
    # The run appears in the row and reaches succeeded, by the 2 s refresh alone.
    expect(row.locator("a.cell[data-state='succeeded']")).to_have_count(1)
    console.assert_not_reloaded()
    screenshot(page, "console-schedules")

    page.locator("#flash a").click()
    expect(page.locator("#run-state")).to_have_attribute("data-state", "succeeded")
    expect(page.locator("#params")).to_contain_text('"name": "browser"')
    expect(page.locator("#output")).to_contain_text("browser")
    first = page.url

    # Re-run: a new run of the same params, which the answer links to.
    page.get_by_role("button", name="Re-run").click()
    expect(page.locator("#flash")).to_contain_text("re-run started: run greet@")
    page.locator("#flash a").click()
    expect(page.locator("#run-state")).to_have_attribute("data-state", "succeeded")
    assert page.url != first
    expect(page.locator("#params")).to_contain_text('"name": "browser"')


def test_a_bad_params_text_is_refused_in_the_page(console: Console) -> None:
    page = console.open("/")
    row = page.locator("tr[data-schedule='greet']")
    row.locator("summary", has_text="Trigger").click()
    row.locator("textarea[name=params]").fill("[1, 2]")
    row.get_by_role("button", name="Trigger now").click()
    expect(page.locator("#flash")).to_contain_text("params must be a JSON object")


def test_cancel_a_running_sleep(console: Console) -> None:
    page = console.open("/")
    run = console.api("POST", "/schedules/nap:trigger")
    page = console.open(f"/runs/{run['id']}")
    state = page.locator("#run-state")
    expect(state).to_have_attribute("data-state", "running")
    console.mark()
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#flash")).to_contain_text("cancel requested")
    # The worker sees the request at its next check-in and stops: cancelled.
    expect(state).to_have_attribute("data-state", "cancelled")
    console.assert_not_reloaded()
    # Ended: no Cancel button any more.
    expect(page.get_by_role("button", name="Cancel")).to_have_count(0)


def test_pause_and_resume(console: Console) -> None:
    page = console.open("/")
    switch = page.locator("tr[data-schedule='pausable'] [role=switch]")
    expect(switch).to_have_attribute("aria-checked", "true")
    console.mark()
    switch.click()
    expect(switch).to_have_attribute("aria-checked", "false")
    expect(switch).to_have_text("paused")
    # Paused: no next fire times.
    expect(page.locator("tr[data-schedule='pausable'] td").nth(2)).to_have_text("—")
    switch.click()
    expect(switch).to_have_attribute("aria-checked", "true")
    expect(switch).to_have_text("active")
    console.assert_not_reloaded()


def test_a_pipeline_runs_dag(console: Console) -> None:
    page = console.open("/")
    run = console.api("POST", "/schedules/duo-now:trigger")
    page = console.open(f"/runs/{run['id']}")
    dag = page.locator("#dag svg")
    expect(dag).to_be_visible()
    # The boxes fill in as the tasks end, the page refreshing itself.
    expect(dag.locator("g.task[data-task='first']")).to_have_attribute("data-state", "succeeded")
    expect(dag.locator("g.task[data-task='second']")).to_have_attribute("data-state", "succeeded")
    expect(page.locator("#run-state")).to_have_attribute("data-state", "succeeded")
    screenshot(page, "console-pipeline-run")
    # A task box opens the task's run.
    dag.locator("a:has(g.task[data-task='second'])").click()
    expect(page.locator("h1")).to_contain_text(f"{run['id']}.second")
    screenshot(console.open("/timeline"), "console-timeline")
    screenshot(console.open("/pipelines"), "console-pipelines")
