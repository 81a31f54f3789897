"""The telemetry pages in a real browser: headless Chromium (Debian's `chromium`, driven by
playwright) against a real daphne process and a django-q2 cluster on the test database.

Nothing is installed from the internet: playwright launches /usr/bin/chromium. The test
skips only when that binary is missing (CI installs it). Screenshots go to
`test-artifacts/browser/` at the repository root.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import REPO, WebServer, wait_for

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = REPO / "test-artifacts" / "browser"
PASSWORD = "browser-test-pw"
# Live updates on SQLite ride on the readers' fallback poll (no cross-process doorbell).
LIVE_TIMEOUT_MS = 30_000

if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium)",
                allow_module_level=True)

from playwright.sync_api import sync_playwright  # noqa: E402  (a dev dependency: missing it is an error, not a skip)


def tool(name, **arguments):
    return {"name": name, "arguments": arguments}


@pytest.fixture
def site(clusters, tmp_path):
    """A qcluster (runs the requests) and a daphne (serves pages, API and WebSockets)."""
    from django.contrib.auth.models import User

    User.objects.create_user("operator", password=PASSWORD, is_staff=True, is_superuser=True)
    clusters.start()
    server = WebServer(clusters.env, tmp_path / "daphne.log").start()
    yield server
    server.terminate()
    clusters.terminate()  # both shut down at once; the clusters' teardown waits for them
    server.stop()


@pytest.fixture
def artifacts():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    return ARTIFACTS


def submit(server, plan, session_id: str) -> str:
    response = httpx.post(f"{server.url}/api/v1/agent/primary/request",
                          json={"message": json.dumps(plan), "session_id": session_id}, timeout=30)
    assert response.status_code == 202, response.text
    return response.json()["data"]["request_id"]


def status(server, rid) -> str:
    response = httpx.get(f"{server.url}/api/v1/agent/primary/request/{rid}/status", timeout=30)
    return response.json()["data"]["status"]


def test_an_operator_reads_traces_and_watches_the_host_live(site, artifacts, tmp_path):
    long_line = "a long line for the tool call " * 30
    done = submit(site, {"script": [
        {"text": "Writing it down.", "tool_calls": [tool("append_line", path=str(tmp_path / "out"), line=long_line)]},
        "Written: **one** line.",
    ]}, "browser")
    wait_for(lambda: status(site, done) == "completed", timeout=60, what="the first request to complete")
    parked = submit(site, {"script": [{"tool_calls": [tool("write_file", path=str(tmp_path / "f"), text="x")]},
                                      "approved and written"]}, "browser-approval")
    wait_for(lambda: status(site, parked) == "waiting_input", timeout=60, what="the approval question")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(LIVE_TIMEOUT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))

            # Sign in: an anonymous visit lands on the login page and returns where it started.
            page.goto(f"{site.url}/telemetry/")
            assert "/telemetry/login/" in page.url
            page.fill("#id_username", "operator")
            page.fill("#id_password", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(f"{site.url}/telemetry/")
            assert page.locator("#health").is_visible()
            assert page.locator("svg.chart").count() == 2
            page.screenshot(path=str(artifacts / "1-overview.png"), full_page=True)

            # A finished trace: the long tool call starts collapsed and opens on a click.
            page.goto(f"{site.url}/telemetry/requests/{done}/")
            call = page.locator("details.tool").first
            result = call.locator("pre.tool-result")
            assert call.get_attribute("open") is None and not result.is_visible()
            page.screenshot(path=str(artifacts / "2-trace-collapsed.png"), full_page=True)
            call.locator("summary").click()
            result.wait_for(state="visible")
            assert "appended a long line for the tool call" in result.inner_text()
            assert "<strong>one</strong>" in page.locator("#final-answer .answer").inner_html()
            page.screenshot(path=str(artifacts / "3-trace-expanded.png"), full_page=True)

            # A live trace updates in place when the request moves on (answered over the API).
            page.goto(f"{site.url}/telemetry/requests/{parked}/")
            page.locator("#live-state.on").wait_for()
            assert "awaiting input" in page.locator("#trace-status").inner_text()
            action = page.locator("#pending form.pending-form").get_attribute("action")
            interaction_id = action.rstrip("/").split("/")[-2]
            assert interaction_id.startswith("itr_")
            answered = httpx.post(f"{site.url}/api/v1/agent/primary/request/{parked}/interaction",
                                  json={"interaction_id": interaction_id, "response": "approve"}, timeout=30)
            assert answered.status_code == 200, answered.text
            page.locator("#trace-status .status-completed").wait_for()
            assert "approved and written" in page.locator("#final-answer").inner_text()
            page.screenshot(path=str(artifacts / "4-trace-live-completed.png"), full_page=True)

            # The live tail shows an event of a request submitted while it is open.
            page.goto(f"{site.url}/telemetry/live/")
            page.locator("#live-state.on").wait_for()
            fresh = submit(site, {"script": ["hello from the live tail test"]}, "browser-tail")
            row = page.locator("#tail-body tr.new", has_text=fresh[:8]).first
            row.wait_for()
            text = row.inner_text()  # once: newer rows land on top between two reads of `.first`
            assert "request." in text or "runtime." in text
            page.locator("#tail-body tr.new", has_text="request.completed").first.wait_for()
            page.screenshot(path=str(artifacts / "5-live-tail.png"), full_page=False)

            for path, name in (("/telemetry/requests/", "6-requests"), ("/telemetry/sessions/", "7-sessions"),
                               ("/telemetry/memory/?q=written&who=agent", "8-memory"),
                               ("/telemetry/api-log/", "9-api-log")):
                page.goto(f"{site.url}{path}")
                page.screenshot(path=str(artifacts / f"{name}.png"), full_page=True)
            assert not errors, errors
        finally:
            browser.close()
    assert status(site, fresh) == "completed"
    assert len(list(artifacts.glob("*.png"))) == 9
