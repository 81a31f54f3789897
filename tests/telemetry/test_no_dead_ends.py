"""Every record is one click from its trace, and no page is a dead end: API-log entries link the
request (or workflow run) they touched, an event count links the events, a missing page keeps
the layout and navigation, memory search explains itself and highlights what matched (after
escaping: the text is untrusted), and the admin offers no button that can only fail."""

from __future__ import annotations

import json
import re
import uuid

import pytest

from mash_runtime.models import Agent, MemoryTurn, Request, RuntimeEvent, Session
from mash_telemetry.models import ApiRequestLog
from tests.runtime.conftest import engine  # noqa: F401  (the in-process engine fixture)
from tests.telemetry.test_pages import client_for, html, runs, users  # noqa: F401  (fixtures)

EVIL = '<script>alert("x")</script>'


@pytest.fixture
def staff(users):  # noqa: F811
    return client_for(users["staff"])


@pytest.fixture
def operator(users):  # noqa: F811
    return client_for(users["operator"])


def test_an_api_submit_in_the_log_links_to_the_request_trace(runs, staff, operator, engine):  # noqa: F811
    response = operator.post("/api/v1/agent/primary/request", data=json.dumps(
        {"message": json.dumps({"script": ["from the api"]}), "session_id": "api-log"}),
        content_type="application/json")
    assert response.status_code == 202, response.content[:500]
    rid = response.json()["data"]["request_id"]
    operator.get(f"/api/v1/agent/primary/request/{rid}/status")
    ApiRequestLog.objects.create(method="GET", path=f"/api/v1/agent/primary/request/{uuid.uuid4()}/status",
                                 status_code=404, duration_ms=1.0)  # a request that never existed
    engine.drain()
    submit = ApiRequestLog.objects.get(method="POST", path="/api/v1/agent/primary/request")
    status = ApiRequestLog.objects.get(path=f"/api/v1/agent/primary/request/{rid}/status")

    listing = html(staff.get("/telemetry/api-log/"))
    links = re.findall(r'<a class="trace-link" href="/telemetry/requests/([0-9a-f-]{36})/">', listing)
    assert links.count(rid) == 2 and len(links) == 2  # the submit and the status call; not the unknown id
    entry = html(staff.get(f"/telemetry/api-log/{submit.pk}/"))
    assert f'id="trace-link" href="/telemetry/requests/{rid}/"' in entry
    entry = html(staff.get(f"/telemetry/api-log/{status.pk}/"))
    assert f'href="/telemetry/requests/{rid}/"' in entry
    admin_page = html(operator.get(f"/admin/mash_telemetry/apirequestlog/{submit.pk}/change/"))
    assert f"/telemetry/requests/{rid}/" in admin_page


def test_a_workflow_run_start_in_the_log_links_to_the_run(engine, users, settings):  # noqa: F811
    from mash_runtime.host import get_host, set_host
    from mash_runtime.host_sync import sync_host

    settings.MASH_HOST_APP = "tests.apps.workflow_host:build_host"
    set_host(None)
    sync_host(get_host())
    operator = client_for(users["operator"])
    response = operator.post("/api/v1/workflow/count-and-report/run", data=json.dumps({"input": {"step": 1}}),
                             content_type="application/json")
    assert response.status_code == 202, response.content[:500]
    run_id = response.json()["data"]["run_id"]
    engine.drain()
    listing = html(client_for(users["staff"]).get("/telemetry/api-log/"))
    assert f'<a class="run-link" href="/telemetry/workflows/runs/{run_id}/">' in listing


def test_the_event_count_links_to_the_events(runs, staff):  # noqa: F811
    req = Request.objects.get(pk=runs["main"])
    trace = html(staff.get(f"/telemetry/requests/{req.pk}/"))
    assert f'<a id="events-link" href="/telemetry/requests/{req.pk}/events/">{req.last_seq} events</a>' in trace
    listing = html(staff.get("/telemetry/requests/"))
    assert f'href="/telemetry/requests/{req.pk}/events/">{req.last_seq}</a>' in listing
    page = html(staff.get(f"/telemetry/requests/{req.pk}/events/"))
    assert page.count('<tr id="event-') == req.last_seq == RuntimeEvent.objects.filter(request=req).count()
    assert f'href="/telemetry/requests/{req.pk}/"' in page  # and back to the trace
    assert EVIL not in page and "&lt;script&gt;" in page  # payloads are escaped


def test_a_missing_page_keeps_the_layout_and_navigation(runs, staff, users):  # noqa: F811
    for url in ("/telemetry/nothing-here/", f"/telemetry/requests/{uuid.uuid4()}/",
                f"/telemetry/requests/{uuid.uuid4()}/events/", "/telemetry/sessions/999999/",
                "/telemetry/requests/not-a-uuid/"):
        response = staff.get(url)
        assert response.status_code == 404, url
        page = response.content.decode()
        assert 'id="not-found"' in page and 'href="/telemetry/requests/"' in page and "<nav>" in page, url
    # A page asked for without its slash is found, as APPEND_SLASH would.
    response = staff.get("/telemetry/requests?status=failed")
    assert response.status_code == 301 and response["Location"] == "/telemetry/requests/?status=failed"
    # Nobody learns anything from a 404, and anonymous visitors get no navigation.
    from django.test import Client

    anonymous = Client().get("/telemetry/nothing-here/")
    assert anonymous.status_code == 404 and "<nav>" not in anonymous.content.decode()


@pytest.fixture
def remembered(db):
    agent = Agent.objects.create(agent_id="primary", role="primary")
    session = Session.objects.create(agent=agent, session_id="mem")
    turns = [
        MemoryTurn.objects.create(agent=agent, session=session, user_message=f"please Deploy it {EVIL} deploy-now",
                                  agent_response="deployed"),
        MemoryTurn.objects.create(agent=agent, session=session, user_message="redeploy later <b>bold</b>",
                                  agent_response="ok"),
    ]
    return turns


def test_memory_search_explains_itself_before_a_search(remembered, staff):
    page = html(staff.get("/telemetry/memory/"))
    assert 'id="memory-empty"' in page and "Search what the agents remember" in page
    page = html(staff.get("/telemetry/memory/", {"q": "zebra"}))
    assert 'id="no-hits"' in page and "<strong>zebra</strong>" in page and "user messages" in page


def test_memory_hits_show_dates_and_highlight_matches_after_escaping(remembered, staff):
    page = html(staff.get("/telemetry/memory/", {"q": "deploy", "who": "user"}))
    table = page.split('id="hits"', 1)[1]
    assert table.count("<mark>") == 2  # "Deploy" and the "deploy" of "deploy-now"; not "redeploy"
    assert "<mark>Deploy</mark>" in table and "<mark>deploy</mark>-now" in table
    assert EVIL not in table and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in table
    assert '<time class="when"' in table
    # A search term that looks like markup is text too.
    page = html(staff.get("/telemetry/memory/", {"q": "<b>bold</b>", "who": "user"}))
    assert "<b>bold</b>" not in page.split('id="hits"', 1)[1]
    # (its words are b, bold, b: each whole word is marked, between escaped brackets)
    assert "&lt;<mark>b</mark>&gt;<mark>bold</mark>&lt;/<mark>b</mark>&gt;" in page


def test_sessions_offer_no_delete_button_that_can_only_fail(runs, operator):  # noqa: F811
    session = Session.objects.get(session_id="main")
    page = html(operator.get(f"/admin/mash_runtime/session/{session.pk}/change/"))
    assert "deletelink" not in page and "/delete/" not in page
    listing = html(operator.get("/admin/mash_runtime/session/"))
    assert "delete_selected" not in listing
    assert operator.get(f"/admin/mash_runtime/session/{session.pk}/delete/").status_code == 403
