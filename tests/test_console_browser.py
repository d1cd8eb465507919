"""The web console in a real browser (Debian's Chromium driven by Playwright), on both stores.

One service per store for the module, with the engine in-process and a fast
simulated agent. Submitting from the console and watching the command end
without a reload; cancelling; an entity page answering "does X have running
tasks" and its link to a task; user text (a template named
<script>alert(1)</script>) shown as text, with no dialog. Screenshots of the
pages go to test-artifacts/screenshots/. Without Chromium at /usr/bin/chromium
the tests are skipped, unless ORCHESTRATOR_REQUIRE_BROWSER=1 (CI), where that
is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.bootstrap import Orchestrator
from tests.conftest import REPO, run_cli, wait_for
from tests.test_api_harness import FAST_ENGINE, Service, module_store, running_service

CHROMIUM = Path("/usr/bin/chromium")
REQUIRE_BROWSER = os.environ.get("ORCHESTRATOR_REQUIRE_BROWSER") == "1"
SHOTS = REPO / "test-artifacts" / "screenshots"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
SCRIPT_NAME = "<script>alert(1)</script>"
WAIT_MS = 30_000


def _no_browser() -> str | None:
    if not CHROMIUM.exists():
        return f"Chromium not found at {CHROMIUM} (apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    problem = _no_browser()
    if problem is not None:
        if REQUIRE_BROWSER:
            pytest.fail(problem + " (ORCHESTRATOR_REQUIRE_BROWSER=1)")
        pytest.skip(problem + "; set ORCHESTRATOR_REQUIRE_BROWSER=1 to fail instead")
    from playwright.sync_api import expect, sync_playwright

    # Every expectation waits as long as an action may: what the pages show follows the engine, which
    # a loaded machine (the whole suite on two workers) slows well past expect's default of 5 s.
    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@dataclass
class Console:
    service: Service
    store_url: str
    agent_state: Path
    backend: str

    def api(self) -> httpx.Client:
        return self.service.client()

    def slow_agent(self, seconds: float) -> None:
        """Tasks created from now on take this much longer (the simulated agent's fault, in its state file)."""
        args = ["--store", self.store_url, "--agent-state", str(self.agent_state), "agent", "faults"]
        proc = run_cli(*args, *(["--clear"] if seconds == 0 else ["--extra-seconds", str(seconds)]))
        assert proc.returncode == 0, proc.stderr

    def submit(self, flow: str, **params: str) -> str:
        with self.api() as api:
            answer = api.post("/api/v1/commands", json={"flow": flow, "params": params})
        assert answer.status_code == 201, answer.text
        ident: str = answer.json()["command_id"]
        return ident

    def wait_running(self, ident: str) -> None:
        def running() -> bool:
            with self.api() as api:
                view = api.get(f"/api/v1/commands/{ident}").json()
            return bool(view["status"] == "running" and all(t["agent_task_id"] for t in view["tasks"]))

        wait_for(running, timeout=30, interval=0.1, what=f"command {ident} to run on the agent")


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def console(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    backend = str(request.param)
    workdir = tmp_path_factory.mktemp(f"console-{backend}")
    with module_store(backend, workdir) as store_url:
        agent_state = workdir / "agent.db"
        with Orchestrator.open(store_url, agent_state=agent_state, create=True) as orch:
            orch.seed(vms=6, disks=2)
        with running_service(workdir, store_url, agent_state, "--engine", env=FAST_ENGINE) as service:
            yield Console(service, store_url, agent_state, backend)


@pytest.fixture
def page(browser: Any, console: Console) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=console.service.url)
    context.set_default_timeout(WAIT_MS)
    tab = context.new_page()
    tab.dialogs = []
    tab.on("dialog", lambda dialog: (tab.dialogs.append(dialog.message), dialog.dismiss()))
    yield tab
    context.close()


def screenshot(page: Any, console: Console, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{console.backend}-{name}.png"), full_page=True)


def test_submit_from_the_console_and_watch_it_end_without_a_reload(page: Any, console: Console) -> None:
    from playwright.sync_api import expect

    console.slow_agent(2)  # long enough to see it in flight first
    try:
        page.goto("/submit")
        page.select_option("#flow-select", "HibernateVm")
        page.locator('fieldset[data-flow="HibernateVm"] input[name="vm_id"]').fill("vm-0001")
        screenshot(page, console, "submit")
        page.get_by_role("button", name="Submit").click()
        link = page.get_by_test_id("submitted-link")
        expect(link).to_be_visible()
        ident = link.inner_text()
        page.goto("/")
        expect(page.locator("#live")).to_be_visible()
        expect(page.locator("#live-status")).to_have_text("live")
        page.evaluate("window.__sameDocument = true")
        row = page.locator(f'tr[data-command-row="{ident}"]')
        expect(row.first).to_be_visible()
        screenshot(page, console, "overview-in-flight")
        expect(row.locator(".status")).to_have_text("succeeded")
        assert page.evaluate("window.__sameDocument === true"), "the page was reloaded"
        screenshot(page, console, "overview")
        page.locator(f'tr[data-command-row="{ident}"] a').first.click()
        expect(page.get_by_test_id("command-status")).to_contain_text("succeeded")
        screenshot(page, console, "command")
    finally:
        console.slow_agent(0)


def test_cancel_a_command_from_its_page(page: Any, console: Console) -> None:
    from playwright.sync_api import expect

    console.slow_agent(60)
    try:
        ident = console.submit("RemoveVm", vm_id="vm-0002")
        console.wait_running(ident)
        page.goto(f"/commands/{ident}")
        expect(page.get_by_test_id("command-status")).to_contain_text("running")
        page.evaluate("window.__sameDocument = true")
        page.locator('form.cancel input[name="reason"]').fill("changed my mind")
        page.get_by_role("button", name="Cancel command").click()
        expect(page.get_by_test_id("command-status")).to_contain_text("failed")
        expect(page.get_by_test_id("command-reason")).to_contain_text("changed my mind")
        assert page.evaluate("window.__sameDocument === true")
        screenshot(page, console, "command-cancelled")
    finally:
        console.slow_agent(0)


def test_an_entity_page_answers_and_links_to_a_task(page: Any, console: Console) -> None:
    from playwright.sync_api import expect

    console.slow_agent(60)
    try:
        ident = console.submit("CreateSnapshot", vm_id="vm-0003", description="<b>nightly</b>")
        console.wait_running(ident)
        page.goto("/entities/vm/vm-0003")
        expect(page.get_by_test_id("running-answer")).to_have_text(re.compile(r"vm vm-0003 has \d+ running task"))
        screenshot(page, console, "entity")
        first = page.get_by_test_id("task-link").first
        task_id = first.get_attribute("title")
        first.click()
        expect(page.locator("h1")).to_contain_text(str(task_id))
        expect(page.get_by_test_id("task-status")).to_contain_text("running")
        screenshot(page, console, "task")
        page.get_by_role("link", name="storage_domain:sd-1").first.click()
        expect(page.get_by_test_id("running-answer")).to_have_text(re.compile(r"storage_domain sd-1 has \d+ running"))
        page.goto("/locks")
        expect(page.locator("#live")).to_contain_text("vm:vm-0003")
        screenshot(page, console, "locks")
        with console.api() as api:
            assert api.post(f"/api/v1/commands/{ident}/cancel", json={}).status_code == 200
        page.goto("/entities/vm/vm-0003")
        expect(page.get_by_test_id("running-answer")).to_have_text("vm vm-0003 has no running tasks.")
    finally:
        console.slow_agent(0)


def test_user_text_is_shown_as_text_and_runs_nothing(page: Any, console: Console) -> None:
    from playwright.sync_api import expect

    page.goto("/submit")
    page.select_option("#flow-select", "CreateTemplate")
    form = page.locator('fieldset[data-flow="CreateTemplate"]')
    form.locator('input[name="vm_id"]').fill("vm-0004")
    form.locator('input[name="name"]').fill(SCRIPT_NAME)
    page.get_by_role("button", name="Submit").click()
    link = page.get_by_test_id("submitted-link")
    expect(page.locator("#submit-result")).to_contain_text(SCRIPT_NAME)
    ident = link.inner_text()
    for path in (f"/commands/{ident}", "/", "/commands", "/entities/vm/vm-0004"):
        page.goto(path)
        expect(page.locator("main")).to_contain_text(SCRIPT_NAME)
    page.goto(f"/commands/{ident}")
    expect(page.get_by_test_id("command-status")).to_contain_text("succeeded")
    expect(page.locator("main")).to_contain_text(f"name = {SCRIPT_NAME}")
    screenshot(page, console, "escaped")
    page.goto("/commands")
    screenshot(page, console, "commands")
    assert page.dialogs == [], f"a dialog fired: {page.dialogs}"
    assert page.evaluate("document.querySelectorAll('main script').length") == 0


def test_screenshots_are_kept_out_of_git() -> None:
    ignored = (REPO / ".gitignore").read_text().splitlines()
    assert "test-artifacts/" in ignored
    if shutil.which("git"):
        assert SHOTS.relative_to(REPO).parts[0] == "test-artifacts"
