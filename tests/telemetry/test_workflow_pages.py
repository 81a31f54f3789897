"""The workflow pages: the runs list (by workflow, status and time) and a run's page (its tasks on
a server-rendered SVG timeline, each linked to its request's trace, states, output, events); a
task's trace links back to its run; the admin pages of runs and task runs read as text and links.
"""

from __future__ import annotations

import re

import pytest
from django.contrib.admin.utils import quote
from django.test import Client

from mash_runtime.host import get_host, set_host
from mash_runtime.host_sync import sync_host
from mash_runtime.models import Request, WorkflowRun, WorkflowRunEvent, WorkflowTaskRun, WorkflowTaskState
from mash_runtime.workflows.engine import start_run
from tests.runtime.conftest import engine  # noqa: F401  (the in-process engine fixture)
from tests.telemetry.test_pages import client_for, html, users  # noqa: F401  (fixtures)

EVIL = '<script>alert("x")</script>'


@pytest.fixture
def wf(engine, settings):  # noqa: F811
    settings.MASH_HOST_APP = "tests.apps.workflow_host:build_host"
    set_host(None)
    sync_host(get_host())
    return engine


@pytest.fixture
def runs(wf, tmp_path):
    """A completed two-task run, a failed run (bad structured output), a run parked on an approval."""
    done = start_run("count-and-report", input={"step": 2, "note": EVIL})["run_id"]
    wf.drain()
    failed = start_run("broken")["run_id"]
    wf.drain()
    gated = start_run("gated", input={"path": str(tmp_path / "g")})["run_id"]
    wf.drain()
    statuses = {k: WorkflowRun.objects.get(pk=v).status for k, v in
                {"done": done, "failed": failed, "gated": gated}.items()}
    assert statuses == {"done": "completed", "failed": "failed", "gated": "running"}, statuses
    return {"done": done, "failed": failed, "gated": gated}


@pytest.fixture
def staff(users):  # noqa: F811
    return client_for(users["staff"])


@pytest.fixture
def operator(users):  # noqa: F811
    return client_for(users["operator"])


def run_url(run_id) -> str:
    return f"/telemetry/workflows/runs/{run_id}/"


def listed_runs(page: str) -> set[str]:
    body = page.split('<table id="runs">', 1)[1]
    return set(re.findall(r'data-run="([^"]+)"', body))


def test_the_workflow_pages_are_for_staff_only(runs, users):  # noqa: F811
    for url in ("/telemetry/workflows/", run_url(runs["done"])):
        assert Client().get(url)["Location"].startswith("/telemetry/login/"), url
        assert client_for(users["outsider"]).get(url).status_code == 403, url


def test_the_runs_list_filters_by_workflow_status_and_time(runs, staff):
    page = html(staff.get("/telemetry/workflows/"))
    assert listed_runs(page) == set(runs.values())
    assert 'id="workflow-defs"' in page and "count → report" in page
    assert listed_runs(html(staff.get("/telemetry/workflows/", {"workflow": "count-and-report"}))) == {runs["done"]}
    assert listed_runs(html(staff.get("/telemetry/workflows/", {"status": "failed"}))) == {runs["failed"]}
    assert listed_runs(html(staff.get("/telemetry/workflows/", {"status": "running"}))) == {runs["gated"]}
    assert listed_runs(html(staff.get("/telemetry/workflows/", {"range": "1h"}))) == set(runs.values())
    assert listed_runs(html(staff.get("/telemetry/workflows/", {"since": "2000-01-01T00:00",
                                                                "until": "2000-01-02T00:00"}))) == set()
    assert listed_runs(html(staff.get("/telemetry/workflows/", {"q": runs["done"]}))) == {runs["done"]}
    # Rows show progress and tokens of the task requests.
    done = WorkflowRun.objects.get(pk=runs["done"])
    tokens = sum(r.total_tokens for r in Request.objects.filter(workflow_run=done))
    row = page.split(f'data-run="{runs["done"]}"', 1)[1].split("</tr>", 1)[0]
    assert "2 / 2" in row and f"{tokens:,}" in row and tokens > 0


def test_a_run_page_shows_its_tasks_on_a_timeline_linked_to_their_traces(runs, staff):
    run = WorkflowRun.objects.get(pk=runs["done"])
    tasks = list(WorkflowTaskRun.objects.filter(run=run).order_by("index"))
    page = html(staff.get(run_url(run.pk)))
    timeline = page.split('id="run-timeline"', 1)[1].split("</section>", 1)[0]
    assert timeline.count("<svg") == 1 and timeline.count('class="bar"') == 2
    for task in tasks:
        trace = f"/telemetry/requests/{task.request_id}/"
        assert f'<a class="task-link" href="{trace}">' in timeline  # the bar is the link
        assert f'class="task-trace mono" href="{trace}"' in page  # and the task row's
        assert f"<title>{task.task_id} ({task.agent_id}): completed" in timeline
    # States, output (readable JSON, escaped), input and the workflow's own events.
    assert "&quot;count&quot;: 2" in page and "&quot;report&quot;: &quot;count is 2&quot;" in page
    assert EVIL not in page and "&lt;script&gt;" in page
    events = page.split('id="run-events"', 1)[1]
    assert "workflow.task.started" in events and "workflow.completed" in events
    assert "request.completed" not in events  # task request frames only with ?events=all
    everything = html(staff.get(run_url(run.pk), {"events": "all"})).split('id="run-events"', 1)[1]
    assert "request.completed" in everything
    assert WorkflowRunEvent.objects.filter(run=run).count() == everything.count('<td class="num mono">')


def test_a_failed_run_shows_the_error_and_a_parked_run_its_running_task(runs, staff):
    page = html(staff.get(run_url(runs["failed"])))
    assert "status-failed" in page and WorkflowRun.objects.get(pk=runs["failed"]).error in page.replace("&#x27;", "'")
    page = html(staff.get(run_url(runs["gated"])))
    assert "status-running" in page and "request awaiting input" in page
    assert "Not finished yet." in page


def test_a_task_trace_links_back_to_its_run(runs, staff):
    task = WorkflowTaskRun.objects.filter(run_id=runs["done"], index=1).get()
    page = html(staff.get(f"/telemetry/requests/{task.request_id}/"))
    link = page.split('id="workflow-run"', 1)[1].split("</dd>", 1)[0]
    assert f'href="{run_url(runs["done"])}#task-1"' in link
    assert "task <strong>report</strong> (2 of 2) of workflow count-and-report" in link
    assert 'id="task-1"' in html(staff.get(run_url(runs["done"])))
    # An ordinary request has no such line.
    plain = Request.objects.filter(workflow_run__isnull=True).first()
    if plain is not None:
        assert 'id="workflow-run"' not in html(staff.get(f"/telemetry/requests/{plain.pk}/"))


def test_an_unknown_run_is_the_telemetry_404(runs, staff):
    response = staff.get(run_url("no-such-run"))
    assert response.status_code == 404
    page = response.content.decode()
    assert 'id="not-found"' in page and "Workflows</a>" in page and "no-such-run" in page


def test_the_admin_shows_runs_and_task_runs_as_text_and_links(runs, operator):
    run = WorkflowRun.objects.get(pk=runs["done"])
    task = WorkflowTaskRun.objects.filter(run=run).order_by("index").first()
    assert str(task) == f"{run.pk} · task 1 count (completed)"
    state = WorkflowTaskState.objects.get(task_id="count", workflow=run.workflow)
    assert str(state) == "count-and-report/count state"
    event = WorkflowRunEvent.objects.filter(run=run).first()
    assert str(event) == f"{run.pk}#{event.seq} {event.event_type}"

    page = html(operator.get(f"/admin/mash_runtime/workflowrun/{quote(run.pk)}/change/"))
    assert "WorkflowTaskRun object" not in page
    for t in WorkflowTaskRun.objects.filter(run=run):
        assert f"/admin/mash_runtime/request/{t.request_id}/change/" in page
        assert f"/telemetry/requests/{t.request_id}/" in page
    assert run_url(run.pk) in page
    assert "task requests:" in page  # the output's request ids as links, not a JSON blob
    page = html(operator.get(f"/admin/mash_runtime/workflowtaskrun/{task.pk}/change/"))
    assert f"/telemetry/requests/{task.request_id}/" in page and run_url(run.pk) in page
    assert "&quot;count&quot;: 2" in page
    listing = html(operator.get("/admin/mash_runtime/workflowtaskrun/"))
    assert "WorkflowTaskRun object" not in listing
    assert f'<span title="{run.pk} · task 2 report (completed)">2. report</span>' in listing
