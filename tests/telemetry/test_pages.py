"""The telemetry pages under /telemetry/, with real data made by running requests through the engine.

Every page is checked for access (anonymous -> login, signed-in non-staff -> 403)
and renders what the runs produced. Model and tool output is untrusted: the pages
must escape it, and the markdown answer must come out sanitized.
"""

from __future__ import annotations

import json
import re
import uuid

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from mash_runtime.models import Interaction, MemoryTurn, Request, RuntimeEvent, Session
from tests.runtime.conftest import engine  # noqa: F401  (the in-process engine fixture)

EVIL = '<script>alert("x")</script>'


def tool(name, **arguments):
    return {"name": name, "arguments": arguments}


@pytest.fixture
def users(transactional_db):
    staff = User.objects.create_user("staff", password="pw", is_staff=True)
    outsider = User.objects.create_user("outsider", password="pw")
    operator = User.objects.create_superuser("operator", password="pw")
    return {"staff": staff, "outsider": outsider, "operator": operator}


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def staff_client(users):
    return client_for(users["staff"])


@pytest.fixture
def operator_client(users):
    return client_for(users["operator"])


@pytest.fixture
def runs(engine, tmp_path):  # noqa: F811
    """A small history: tools, a subagent that asked a question, a failure, structured output,
    a request parked on an approval, untrusted text in messages, tool output and answers."""
    long_line = "a long line " * 60
    child_plan = {"script": [{"text": "Asking.", "tool_calls": [tool("AskUser", question="Which file?")]},
                             "helper done"]}
    main = engine.submit({"script": [
        {"text": f"Writing it down {EVIL}", "tool_calls": [tool("append_line", path=str(tmp_path / "out"),
                                                                   line=long_line)]},
        {"tool_calls": [tool("InvokeSubagent", agent_id="helper", prompt=json.dumps(child_plan))]},
        f"All **done** {EVIL} [click](javascript:alert(1))",
    ]}, session_id="main")
    engine.drain()
    asked = Interaction.objects.get(status="pending")
    from mash_runtime.services import answer_interaction

    answer_interaction(main, asked.interaction_id, "README.md")
    engine.drain()
    plain = engine.submit({"script": ["plain answer"]}, session_id="other")
    structured = engine.submit({"script": ["five"], "structured": {"n": 5}},
                               structured_output={"type": "object", "properties": {"n": {"type": "integer"}},
                                                  "required": ["n"]}, session_id="other")
    failed = engine.submit({"llm_error": {"marker": str(tmp_path / "m"), "times": 9, "transient": False},
                            "script": ["x"]}, session_id="bad")
    engine.drain()
    parked = engine.submit({"script": [{"tool_calls": [tool("write_file", path=str(tmp_path / "f"), text="x")]},
                                       "written"]}, session_id="approve")
    engine.drain()
    ids = {"main": main, "plain": plain, "structured": structured, "failed": failed, "parked": parked}
    statuses = {k: Request.objects.get(pk=v).status for k, v in ids.items()}
    assert statuses == {"main": "completed", "plain": "completed", "structured": "completed", "failed": "failed",
                        "parked": "awaiting_input"}, statuses
    return ids


def page_urls(runs) -> list[str]:
    session = Session.objects.get(session_id="main")
    return [
        "/telemetry/", "/telemetry/requests/", f"/telemetry/requests/{runs['main']}/", "/telemetry/sessions/",
        f"/telemetry/sessions/{session.pk}/", "/telemetry/live/", "/telemetry/memory/?q=plain",
        "/telemetry/api-log/",
    ]


def html(response) -> str:
    assert response.status_code == 200, response.content[:2000]
    return response.content.decode()


# -- access ---------------------------------------------------------------------------------


def test_it_sends_anonymous_visitors_to_the_login_page(runs):
    client = Client()
    for url in page_urls(runs):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/telemetry/login/?next="), url


def test_it_refuses_signed_in_users_without_staff_status(runs, users):
    client = client_for(users["outsider"])
    for url in page_urls(runs):
        response = client.get(url)
        assert response.status_code == 403, url
        assert "staff" in response.content.decode()
    response = client.post(f"/telemetry/requests/{runs['parked']}/cancel/")
    assert response.status_code == 403
    assert Request.objects.get(pk=runs["parked"]).status == "awaiting_input"


def test_it_logs_staff_in_and_sends_them_where_they_were_going(runs, users):
    client = Client()
    login = client.get("/telemetry/login/?next=/telemetry/requests/")
    assert login.status_code == 200 and 'name="password"' in login.content.decode()
    response = client.post("/telemetry/login/", {"username": "staff", "password": "pw",
                                                 "next": "/telemetry/requests/"})
    assert response.status_code == 302 and response["Location"] == "/telemetry/requests/"
    assert client.get("/telemetry/requests/").status_code == 200
    assert client.post("/telemetry/logout/").status_code == 302
    assert client.get("/telemetry/").status_code == 302


def test_every_page_renders_for_staff(runs, staff_client):
    for url in page_urls(runs):
        page = html(staff_client.get(url))
        assert "Mash telemetry" in page, url


# -- overview -----------------------------------------------------------------------------


def test_the_overview_shows_health_agents_charts_and_errors(runs, staff_client):
    page = html(staff_client.get("/telemetry/"))
    assert 'id="health"' in page and "primary agent <strong>primary</strong>" in page
    assert "awaiting input" in page and "pending interactions" in page
    # Charts are inline SVG made in Python: one bar per status with counts in the tooltips.
    assert page.count("<svg") == 2
    assert re.search(r"<title>\d\d:00 completed: [1-9]\d*</title>", page)
    assert re.search(r"<title>primary output: [1-9]\d*</title>", page)
    assert "helper" in page and "Helper" in page  # the subagent with its display name
    failed = Request.objects.get(pk=runs["failed"])
    assert "LLM_UNAVAILABLE" in page and f"/telemetry/requests/{failed.pk}/" in page


# -- request list -------------------------------------------------------------------------


def test_the_request_list_filters_by_agent_status_session_time_and_text(runs, staff_client):
    def rows(**params):
        page = html(staff_client.get("/telemetry/requests/", params))
        body = page.split('<table id="requests">', 1)[1]
        return set(re.findall(r"/telemetry/requests/([0-9a-f-]{36})/", body))

    everything = rows()
    assert {runs["main"], runs["plain"], runs["failed"], runs["parked"]} <= everything
    helper = Request.objects.get(parent_id=runs["main"])
    assert str(helper.pk) in everything
    assert rows(agent="helper") == {str(helper.pk)}
    assert rows(status="failed") == {runs["failed"]}
    assert rows(session="other") == {runs["plain"], runs["structured"]}
    assert rows(q="plain answer") == {runs["plain"]}
    assert rows(q=runs["parked"]) == {runs["parked"]}
    assert str(helper.pk) not in rows(top="on")
    assert rows(range="1h") == everything
    assert rows(since="2000-01-01T00:00", until="2000-01-02T00:00") == set()
    # A filter that does not parse is ignored, not an error page.
    assert rows(since="yesterday-ish") == everything


def test_the_request_list_is_paginated(runs, staff_client, engine):  # noqa: F811
    for i in range(55):
        engine.submit({"script": [f"n{i}"]}, session_id=f"page{i}")
    first = html(staff_client.get("/telemetry/requests/"))
    assert "page 1 of 2" in first and "?page=2" in first
    second = html(staff_client.get("/telemetry/requests/", {"page": 2}))
    assert "page 2 of 2" in second
    assert html(staff_client.get("/telemetry/requests/", {"page": "zzz"}))  # bad page: first page


# -- trace ---------------------------------------------------------------------------------


def test_the_trace_shows_steps_tools_interactions_subagents_and_the_answer(runs, staff_client):
    req = Request.objects.get(pk=runs["main"])
    page = html(staff_client.get(f"/telemetry/requests/{req.pk}/"))
    assert page.count('class="step') >= 3
    assert "append_line" in page and "a long line a long line" in page
    assert "appended a long line" in page  # the tool's result
    # Long arguments start collapsed; short ones open.
    append = re.search(r'<details class="tool" id="[^"]+-tool\.0\.0"( open)?>', page)
    assert append and append.group(1) is None
    # Per-step tokens and durations from the events.
    think = RuntimeEvent.objects.get(request=req, event_type="llm.request.complete", loop_index=0).payload
    assert f"{think['input_tokens']} in · {think['output_tokens']} out" in page
    assert "step " in page and " ms" in page
    # The subagent's own timeline is nested under the InvokeSubagent call, with its question and answer.
    child = Request.objects.get(parent=req)
    nested = page.split('class="subagent"', 1)[1]
    assert f"/telemetry/requests/{child.pk}/" in nested
    assert "AskUser" in nested and "Which file?" in nested and "README.md" in nested
    assert "answered" in nested
    # Final answer rendered from markdown, sanitized.
    final = page.split('id="final-answer"', 1)[1]
    assert "<strong>done</strong>" in final
    assert "unused_tools" in final  # signals
    assert req.trace_id.hex[:8] in page.replace("-", "")


def test_the_trace_escapes_untrusted_text(runs, staff_client):
    page = html(staff_client.get(f"/telemetry/requests/{runs['main']}/"))
    assert EVIL not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "javascript:" not in page.split('id="final-answer"', 1)[1].split("</section>")[0].replace(
        "[click](javascript:alert(1))", "")
    assert 'href="javascript' not in page


def test_the_trace_shows_structured_output_and_errors(runs, staff_client):
    page = html(staff_client.get(f"/telemetry/requests/{runs['structured']}/"))
    assert "Structured output" in page and "&quot;n&quot;: 5" in page
    page = html(staff_client.get(f"/telemetry/requests/{runs['failed']}/"))
    assert "LLM_UNAVAILABLE" in page and "scripted failure" in page


def test_a_live_trace_follows_its_websocket_and_serves_a_fragment(runs, staff_client):
    req = Request.objects.get(pk=runs["parked"])
    page = html(staff_client.get(f"/telemetry/requests/{req.pk}/"))
    assert 'data-live="1"' in page and f'data-after="{req.last_seq}"' in page
    assert "/telemetry/assets/trace.js" in page
    assert "Waiting for an answer" in page and "approve" in page
    fragment = html(staff_client.get(f"/telemetry/requests/{req.pk}/", {"fragment": 1}))
    assert "<html" not in fragment and "write_file" in fragment
    done = html(staff_client.get(f"/telemetry/requests/{runs['plain']}/"))
    assert 'data-live="0"' in done and "trace.js" not in done


def test_a_trace_id_leads_to_its_request(runs, staff_client):
    req = Request.objects.get(pk=runs["plain"])
    response = staff_client.get(f"/telemetry/traces/{req.trace_id}/")
    assert response.status_code == 302 and response["Location"] == f"/telemetry/requests/{req.pk}/"
    assert staff_client.get(f"/telemetry/traces/{uuid.uuid4()}/").status_code == 404
    assert staff_client.get(f"/telemetry/requests/{uuid.uuid4()}/").status_code == 404


def test_operators_answer_cancel_and_resume_from_the_trace(runs, staff_client, operator_client, engine):  # noqa: F811
    parked = Request.objects.get(pk=runs["parked"])
    itr = Interaction.objects.get(request=parked, status="pending")
    url = f"/telemetry/requests/{parked.pk}/interactions/{itr.pk}/answer/"
    # Staff without the change permission may look but not act.
    assert staff_client.post(url, {f"{itr.pk}-response": "approve"}).status_code == 403
    page = html(staff_client.get(f"/telemetry/requests/{parked.pk}/"))
    assert "Cancel request" not in page and f'action="{url}"' not in page
    # A bad answer is refused with a message, a good one lets the request finish.
    response = operator_client.post(url, {f"{itr.pk}-response": "maybe"}, follow=True)
    assert "maybe" in response.content.decode() and Interaction.objects.get(pk=itr.pk).status == "pending"
    response = operator_client.post(url, {f"{itr.pk}-response": "approve"})
    assert response.status_code == 302
    assert Interaction.objects.get(pk=itr.pk).response == "approve"
    engine.drain()
    assert Request.objects.get(pk=parked.pk).status == "completed"
    # Resume a failed request; cancel a queued one.
    failed = runs["failed"]
    operator_client.post(f"/telemetry/requests/{failed}/resume/")
    assert Request.objects.get(pk=failed).status == "accepted"
    response = operator_client.post(f"/telemetry/requests/{failed}/cancel/", follow=True)
    assert Request.objects.get(pk=failed).status == "cancelled"
    assert "request is now cancelled" in response.content.decode()
    engine.queue.clear()
    assert operator_client.post(f"/telemetry/requests/{failed}/explode/").status_code == 404
    assert operator_client.get(f"/telemetry/requests/{failed}/cancel/").status_code == 405


def test_a_staff_user_with_the_permissions_may_operate(runs, users, engine):  # noqa: F811
    staff = users["staff"]
    staff.user_permissions.add(Permission.objects.get(codename="change_request"))
    client = client_for(User.objects.get(pk=staff.pk))
    page = html(client.get(f"/telemetry/requests/{runs['parked']}/"))
    assert "Cancel request" in page
    client.post(f"/telemetry/requests/{runs['parked']}/cancel/")
    assert Request.objects.get(pk=runs["parked"]).status == "cancelled"


# -- sessions -------------------------------------------------------------------------------


def test_the_session_page_shows_turns_tokens_signals_and_traces(runs, staff_client):
    session = Session.objects.get(session_id="other")
    page = html(staff_client.get(f"/telemetry/sessions/{session.pk}/"))
    turns = list(MemoryTurn.objects.filter(session=session))
    assert len(turns) == 2
    for turn in turns:
        assert f"/telemetry/requests/{turn.request_id}/" in page
    assert "plain answer" in page and "unused_tools" in page
    assert f"{session.session_total_tokens:,}" in page and session.session_total_tokens > 0
    listing = html(staff_client.get("/telemetry/sessions/", {"agent": "primary"}))
    assert f"/telemetry/sessions/{session.pk}/" in listing and "subagent:helper:" not in listing
    assert staff_client.get("/telemetry/sessions/999999/").status_code == 404


# -- live tail, memory, API log -----------------------------------------------------------------


def test_the_live_tail_page_lists_recent_events_and_opens_the_socket(runs, staff_client):
    page = html(staff_client.get("/telemetry/live/"))
    newest = RuntimeEvent.objects.order_by("-id").first()
    assert newest.event_type in page and f"#{newest.seq}" in page
    assert "/telemetry/assets/live.js" in page
    page = html(staff_client.get("/telemetry/live/", {"agent": "helper"}))
    assert 'data-agent="helper"' in page
    body = page.split('id="tail-body"', 1)[1]
    assert "request.accepted" in body and ">primary<" not in body
    # An unknown agent falls back to the whole host rather than echoing the value.
    page = html(staff_client.get("/telemetry/live/", {"agent": EVIL}))
    assert 'data-agent=""' in page


def test_memory_search_finds_turn_text_and_links_sessions_and_traces(runs, staff_client):
    page = html(staff_client.get("/telemetry/memory/", {"q": "plain answer", "who": "agent"}))
    turn = MemoryTurn.objects.get(agent_response="plain answer")
    assert f"/telemetry/sessions/{turn.session_id}/" in page
    assert f"/telemetry/requests/{turn.request_id}/" in page
    page = html(staff_client.get("/telemetry/memory/", {"q": "no such words", "who": "user"}))
    assert "Nothing in memory matches" in page
    page = html(staff_client.get("/telemetry/memory/"))
    assert 'name="q"' in page and "Nothing found." not in page


def test_the_api_log_lists_filters_pages_and_shows_entries(runs, staff_client, operator_client):
    for _ in range(3):
        operator_client.get("/api/v1/agent")
    operator_client.get("/api/v1/agent/nobody")
    from mash_telemetry.models import ApiRequestLog

    assert ApiRequestLog.objects.count() >= 4
    page = html(staff_client.get("/telemetry/api-log/"))
    assert "/api/v1/agent/nobody" in page and ">404<" in page
    page = html(staff_client.get("/telemetry/api-log/", {"status": "4xx"}))
    table = page.split('id="api-log"', 1)[1]
    assert "/api/v1/agent/nobody" in table and ">200<" not in table
    page = html(staff_client.get("/telemetry/api-log/", {"status": "200", "method": "GET", "path": "agent"}))
    assert "/api/v1/agent/nobody" not in page.split('id="api-log"', 1)[1]
    for i in range(60):
        ApiRequestLog.objects.create(method="POST", path=f"/api/v1/x{i}", status_code=202, duration_ms=1.0,
                                     request_headers={"Authorization": "[redacted]"})
    first = html(staff_client.get("/telemetry/api-log/"))
    older = re.search(r'href="\?before=(\d+)"', first)
    assert older
    second = html(staff_client.get("/telemetry/api-log/", {"before": older.group(1)}))
    assert "/api/v1/x59" in first and "/api/v1/x59" not in second and "/api/v1/agent/nobody" in second
    row = ApiRequestLog.objects.filter(path="/api/v1/x0").get()
    entry = html(staff_client.get(f"/telemetry/api-log/{row.pk}/"))
    assert "[redacted]" in entry and "/api/v1/x0" in entry


def test_the_pages_serve_their_own_assets(runs, client):
    css = client.get("/telemetry/assets/telemetry.css")
    assert css.status_code == 200 and css["Content-Type"].startswith("text/css")
    assert client.get("/telemetry/assets/trace.js").status_code == 200
    assert client.get("/telemetry/assets/..%2Fviews.py").status_code == 404
    assert client.get("/telemetry/assets/nothing.css").status_code == 404


def test_the_overview_says_when_no_worker_runs_and_shows_live_ones(runs, staff_client):
    from datetime import timedelta

    from django.utils import timezone

    from mash_runtime.models import Worker

    Worker.objects.all().delete()
    page = html(staff_client.get("/telemetry/"))
    assert "needs attention" in page and "no worker has been seen yet" in page
    now = timezone.now()
    Worker.objects.create(name="h1:11:aa", hostname="h1", pid=11, slots=100, in_use=7, started_at=now,
                          last_seen_at=now - timedelta(seconds=1))
    page = html(staff_client.get("/telemetry/"))
    assert "no worker has been seen" not in page
    assert "7/100 slots in use" in page
