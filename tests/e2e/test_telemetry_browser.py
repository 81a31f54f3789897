"""The telemetry pages' second round in a real browser (Debian's chromium through playwright,
never `playwright install`) against a real daphne and django-q2 cluster on the test database:
workflow runs and their task timeline, one clock whatever the browser's time zone, admin
changelists that fit 1400 px, and links from every record to its trace.

The server runs in Asia/Kolkata (MASH_TIME_ZONE), the browser of the clock test in New York:
neither is UTC, so a time shown in the browser's zone or in UTC would be caught. Screenshots
go to `test-artifacts/browser-telemetry/`.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

from tests.e2e.conftest import REPO, WebServer, wait_for

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = REPO / "test-artifacts" / "browser-telemetry"
PASSWORD = "browser-test-pw"
WORKFLOW_HOST = "tests.apps.workflow_host:build_host"
SERVER_ZONE = "Asia/Kolkata"
TIMEOUT_MS = 30_000

if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium)",
                allow_module_level=True)

from playwright.sync_api import sync_playwright  # noqa: E402  (a dev dependency: missing it is an error, not a skip)


@pytest.fixture
def site(clusters, tmp_path, settings):
    """A qcluster and a daphne serving the workflow host, both on the server's zone."""
    from django.contrib.auth.models import User

    from mash_runtime.host import set_host

    settings.MASH_HOST_APP = WORKFLOW_HOST
    set_host(None)
    User.objects.create_user("operator", password=PASSWORD, is_staff=True, is_superuser=True)
    extra = {"MASH_HOST_APP": WORKFLOW_HOST, "MASH_TIME_ZONE": SERVER_ZONE}
    clusters.start(**extra)
    server = WebServer({**clusters.env, **extra}, tmp_path / "daphne.log").start()
    yield server
    server.terminate()
    clusters.terminate()  # both shut down at once; the clusters' teardown waits for them
    server.stop()


@pytest.fixture(scope="module")
def artifacts():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    return ARTIFACTS


@pytest.fixture
def browser():
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def open_page(browser, site, *, width=1280, height=900, timezone_id=None):
    context = browser.new_context(viewport={"width": width, "height": height}, timezone_id=timezone_id)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.errors = []
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    page.goto(f"{site.url}/telemetry/login/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{site.url}/telemetry/")
    return page


def submit(site, plan, session_id: str) -> str:
    response = httpx.post(f"{site.url}/api/v1/agent/primary/request",
                          json={"message": json.dumps(plan), "session_id": session_id}, timeout=30)
    assert response.status_code == 202, response.text
    return response.json()["data"]["request_id"]


def request_status(site, rid) -> str:
    return httpx.get(f"{site.url}/api/v1/agent/primary/request/{rid}/status", timeout=30).json()["data"]["status"]


def start_run(site, workflow_id, **body) -> str:
    response = httpx.post(f"{site.url}/api/v1/workflow/{workflow_id}/run", json=body, timeout=30)
    assert response.status_code == 202, response.text
    return response.json()["data"]["run_id"]


def run_status(site, workflow_id, run_id) -> str:
    response = httpx.get(f"{site.url}/api/v1/workflow/{workflow_id}/runs/{run_id}", timeout=30)
    return response.json()["data"]["status"]


def off_the_loop(fn):
    """Run ORM reads in a thread: playwright's sync API keeps an event loop in this one."""
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connections

    def call():
        try:
            return fn()
        finally:
            connections.close_all()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(call).result()


def server_text(moment: dt.datetime) -> str:
    """What the server's one clock prints for `moment`, computed here independently."""
    from mash_runtime.presentation import clock

    local = moment.astimezone(ZoneInfo(SERVER_ZONE))
    return f"{clock.short(local)} {clock.zone_label(local)}"


def test_an_operator_follows_a_workflow_run_from_the_list_to_each_task_trace_and_back(site, browser, artifacts):
    done = start_run(site, "count-and-report", input={"step": 2})
    broken = start_run(site, "broken")
    wait_for(lambda: run_status(site, "count-and-report", done) == "completed", timeout=90, what="the run")
    wait_for(lambda: run_status(site, "broken", broken) == "failed", timeout=90, what="the broken run")
    page = open_page(browser, site)

    # The runs list, filtered by workflow and by status from the form.
    page.click("header nav >> text=Workflows")
    page.wait_for_url("**/telemetry/workflows/")
    assert page.locator("#runs tbody tr[data-run]").count() == 2
    page.select_option("select[name=status]", "failed")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**status=failed**")
    assert [r.get_attribute("data-run") for r in page.locator("#runs tbody tr[data-run]").all()] == [broken]
    page.goto(f"{site.url}/telemetry/workflows/")
    page.select_option("select[name=workflow]", "count-and-report")
    page.click("form.filters button[type=submit]")
    rows = page.locator("#runs tbody tr[data-run]")
    assert rows.count() == 1 and "2 / 2" in rows.first.inner_text()
    page.screenshot(path=str(artifacts / "1-workflow-runs.png"), full_page=True)

    # The run: a server-rendered timeline of its two tasks, states and output.
    rows.first.locator("a").first.click()
    page.wait_for_url("**/telemetry/workflows/runs/**")
    bars = page.locator("#run-timeline svg a.task-link")
    assert bars.count() == 2
    assert page.locator("#tasks tr.task-row").count() == 2
    assert '"count": 2' in page.locator("pre.task-output").first.inner_text()
    assert "count is 2" in page.locator("#run-output").inner_text()
    assert "workflow.completed" in page.locator("#run-events").inner_text()
    page.screenshot(path=str(artifacts / "2-workflow-run.png"), full_page=True)
    run_page = page.url

    # A bar is its task's trace; the trace links back to the run, at the task.
    bars.nth(1).click()
    page.wait_for_url("**/telemetry/requests/**")
    back = page.locator("#workflow-run a")
    assert "report" in page.locator("#workflow-run").inner_text()
    page.screenshot(path=str(artifacts / "3-task-trace.png"), full_page=True)
    back.click()
    page.wait_for_url("**#task-1")
    assert page.url.split("#")[0] == run_page
    page.locator("#tasks a.task-trace").first.click()
    page.wait_for_url("**/telemetry/requests/**")
    assert "count" in page.locator("#workflow-run").inner_text()
    assert not page.errors, page.errors


def test_a_browser_in_new_york_shows_the_server_clock_everywhere(site, browser, artifacts):
    from mash_runtime.models import Request, RuntimeEvent

    page = open_page(browser, site, timezone_id="America/New_York")
    assert page.evaluate("Intl.DateTimeFormat().resolvedOptions().timeZone") == "America/New_York"
    assert "times in IST" in page.locator("header").inner_text()

    # A new event in the live tail: formatted in the browser, by the server's rule.
    page.goto(f"{site.url}/telemetry/live/")
    page.locator("#live-state.on").wait_for()
    rid = submit(site, {"script": ["what time is it"]}, "clock")
    live_row = page.locator(f'#tail-body tr.new[data-event="{rid}#1"]')
    live_row.wait_for()
    live_text = live_row.locator("time").inner_text()
    live_title = live_row.locator("time").get_attribute("title").split(" · ")[0]
    live_iso = live_row.locator("time").get_attribute("datetime")
    wait_for(lambda: request_status(site, rid) == "completed", timeout=60, what="the request")
    page.screenshot(path=str(artifacts / "4-live-tail-new-york.png"))

    accepted = off_the_loop(lambda: RuntimeEvent.objects.get(request_id=rid, seq=1))
    moment = dt.datetime.fromtimestamp(accepted.created_at, tz=dt.timezone.utc)
    assert live_text == server_text(moment)
    assert live_text.endswith(" IST")

    # The same event rendered by the server (the tail's first rows) reads exactly the same.
    page.reload()
    served = page.locator(f'#tail-body tr[data-event="{rid}#1"] time')
    assert served.inner_text() == live_text
    assert served.get_attribute("title").split(" · ")[0] == live_title
    assert served.get_attribute("datetime") == live_iso

    # The requests list and the trace: the request's creation in the same zone, labelled.
    req = off_the_loop(lambda: Request.objects.get(pk=rid))
    expected = server_text(req.created_at)
    page.goto(f"{site.url}/telemetry/requests/")
    cell = page.locator(f'#requests tr[data-request="{rid}"] time').first
    assert cell.inner_text() == expected
    new_york = req.created_at.astimezone(ZoneInfo("America/New_York")).strftime("%H:%M:%S")
    assert new_york not in page.locator("#requests").inner_text()
    # Hovering shows the full timestamp with milliseconds and the offset.
    cell.hover()
    assert cell.get_attribute("title").startswith(req.created_at.astimezone(ZoneInfo(SERVER_ZONE))
                                                 .strftime("%Y-%m-%d %H:%M:%S."))
    assert "(UTC+05:30)" in cell.get_attribute("title")
    page.screenshot(path=str(artifacts / "5-requests-new-york.png"), full_page=True)
    page.goto(f"{site.url}/telemetry/requests/{rid}/")
    assert expected in page.locator(".summary").inner_text()
    assert not page.errors, page.errors


def test_admin_changelists_show_their_key_columns_at_1400_px(site, browser, artifacts):
    long_text = "Please look into the quarterly figures and explain every variance in plain words " * 6
    rid = submit(site, {"script": [long_text + " — the answer is here: " + long_text]}, "a-session-id-" + "x" * 60)
    run = start_run(site, "count-and-report", input={"step": 1})
    wait_for(lambda: request_status(site, rid) == "completed", timeout=60, what="the request")
    wait_for(lambda: run_status(site, "count-and-report", run) == "completed", timeout=90, what="the run")
    page = open_page(browser, site, width=1400, height=900)

    checks = {
        "request": ("created", "tokens", "short_message"),
        "runtimeevent": ("when", "event_type"),
        "memoryturn": ("created", "tokens", "short_user"),
        "session": ("last_activity", "tokens"),
        "workflowrun": ("created", "duration"),
        "workflowtaskrun": ("started", "request_links"),
    }
    for model, columns in checks.items():
        page.goto(f"{site.url}/admin/mash_runtime/{model}/")
        results = page.locator("#changelist .results")
        results.wait_for()
        page.screenshot(path=str(artifacts / f"6-admin-{model}.png"), full_page=False)
        widths = results.evaluate("el => [el.scrollWidth, el.clientWidth]")
        assert widths[0] <= widths[1] + 1, f"{model}: the table scrolls sideways ({widths})"
        assert page.evaluate("document.documentElement.scrollWidth") <= 1400, model
        for column in columns:
            header = page.locator(f"#result_list th.column-{column}")
            box = header.bounding_box()
            assert box is not None and box["x"] + box["width"] <= 1400, f"{model}.{column} is off screen: {box}"
        first = page.locator("#result_list tbody tr").first
        assert first.is_visible()
        # One line per row: long text is cut (the whole of it on hover), never wrapped into a wall.
        assert first.bounding_box()["height"] < 40, model
        if model in ("request", "memoryturn"):
            clip = first.locator("td.field-short_message span.clip, td.field-short_user span.clip").first
            assert clip.bounding_box()["width"] <= 400
            assert len(clip.get_attribute("title")) >= len(clip.inner_text()) - 1
    # Timestamps show seconds and the zone.
    page.goto(f"{site.url}/admin/mash_runtime/request/")
    stamp = page.locator("#result_list td.field-created time").first.inner_text()
    assert stamp.endswith(" IST") and stamp.count(":") == 2
    # A session offers no Delete button that could only say "Cannot delete".
    page.goto(f"{site.url}/admin/mash_runtime/session/")
    page.locator("#result_list tbody tr th a").first.click()
    page.locator("#content").wait_for()
    assert page.locator("a.deletelink").count() == 0
    assert page.locator("select[name=action] option[value=delete_selected]").count() == 0
    # Run and task run pages: text and links, not "WorkflowTaskRun object (3)".
    page.goto(f"{site.url}/admin/mash_runtime/workflowrun/")
    page.locator("#result_list tbody tr th a").first.click()
    page.locator("#content").wait_for()
    body = page.locator("#content").inner_text()
    assert "WorkflowTaskRun object" not in body and "task 1 count" in body
    page.screenshot(path=str(artifacts / "7-admin-workflowrun.png"), full_page=True)
    page.locator(".field-request_links a", has_text="trace").first.click()
    page.wait_for_url("**/telemetry/requests/**")
    assert not page.errors, page.errors


def test_every_record_is_one_click_from_its_trace(site, browser, artifacts):
    rid = submit(site, {"script": ["You deploy with **make deploy**; <b>not</b> by hand."]}, "links")
    wait_for(lambda: request_status(site, rid) == "completed", timeout=60, what="the request")
    page = open_page(browser, site)

    # The API log entry of the submit leads to the request's trace.
    page.goto(f"{site.url}/telemetry/api-log/?method=POST&path=/request")
    entry = page.locator("#api-log tbody tr", has_text="POST").first
    entry.locator("a.trace-link").click()
    page.wait_for_url(f"**/telemetry/requests/{rid}/")
    # "N events" leads to the events, and they lead back.
    events_link = page.locator("#events-link")
    count = int(events_link.inner_text().split()[0])
    events_link.click()
    page.wait_for_url(f"**/telemetry/requests/{rid}/events/")
    assert page.locator("#events tbody tr").count() == count
    page.screenshot(path=str(artifacts / "8-request-events.png"), full_page=True)
    page.locator(f'a[href="/telemetry/requests/{rid}/"]').first.click()
    page.wait_for_url(f"**/telemetry/requests/{rid}/")
    assert page.locator("#time-split svg").count() == 1

    # A missing page keeps the layout: the navigation gets the operator out.
    response = page.goto(f"{site.url}/telemetry/requests/00000000-0000-0000-0000-000000000001/")
    assert response.status == 404 and page.locator("#not-found").is_visible()
    page.screenshot(path=str(artifacts / "9-not-found.png"))
    page.click("header nav >> text=Requests")
    page.wait_for_url("**/telemetry/requests/")

    # Memory search: an explanation before searching, dates and marked words after.
    page.goto(f"{site.url}/telemetry/memory/")
    assert page.locator("#memory-empty").is_visible()
    page.fill("input[name=q]", "deploy")
    page.select_option("select[name=who]", "agent")
    page.click("form.filters button[type=submit]")
    hit = page.locator("#hits tbody tr").first
    assert hit.locator("mark").count() == 2 and hit.locator("mark").first.inner_text() == "deploy"
    assert hit.locator("b").count() == 0 and "<b>not</b>" in hit.inner_text()  # markup shown as text
    assert hit.locator("time").inner_text().endswith(" IST")
    page.screenshot(path=str(artifacts / "10-memory-hits.png"), full_page=True)
    hit.locator("a", has_text="trace").click()
    page.wait_for_url(f"**/telemetry/requests/{rid}/")
    assert not page.errors, page.errors
