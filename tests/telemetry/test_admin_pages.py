"""The admin on big tables: every changelist and change page opens with 10,000 events in a
bounded number of queries, history is read-only, links connect related records, and the
operator actions (cancel, resume, answer) run the runtime's own services."""

from __future__ import annotations

import json

import pytest
from django.contrib import admin
from django.contrib.admin.utils import quote
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from mash_runtime.models import Interaction, MemoryTurn, Request, RuntimeEvent, Session, StepCheckpoint
from mash_runtime.presentation.paginators import CAP, EstimatedCountPaginator
from mash_telemetry.models import ApiRequestLog
from tests.runtime.conftest import engine  # noqa: F401  (the in-process engine fixture)

EVENTS = 10_000
# Session, user, the page's COUNT and rows, a few filter choices, permission lookups: never per row.
MAX_QUERIES = 12


def tool(name, **arguments):
    return {"name": name, "arguments": arguments}


@pytest.fixture
def history(engine, tmp_path):  # noqa: F811
    """Real runs (tools, a subagent question, a failure, a parked approval), then bulk rows so
    every changelist has more than a page: 10,000 events, 250 requests, 250 log rows."""
    child = {"script": [{"tool_calls": [tool("AskUser", question="Which?")]}, "helper done"]}
    main = engine.submit({"script": [
        {"tool_calls": [tool("append_line", path=str(tmp_path / "o"), line="x")]},
        {"tool_calls": [tool("InvokeSubagent", agent_id="helper", prompt=json.dumps(child))]},
        "done",
    ]}, session_id="main")
    engine.drain()
    asked = Interaction.objects.get(status="pending")
    failed = engine.submit({"llm_error": {"marker": str(tmp_path / "m"), "times": 9, "transient": False},
                            "script": ["x"]}, session_id="bad")
    parked = engine.submit({"script": [{"tool_calls": [tool("write_file", path=str(tmp_path / "f"), text="x")]},
                                       "ok"]}, session_id="approve")
    plain = engine.submit({"script": ["plain"]}, session_id="plain")
    engine.drain()

    base = Request.objects.get(pk=main)
    sessions = [Session.objects.create(agent=base.agent, session_id=f"bulk{i}") for i in range(5)]
    bulk = Request.objects.bulk_create([
        Request(agent=base.agent, session=sessions[i % 5], session_seq=i + 1, message=f"bulk {i}",
                status="completed", input_tokens=i, output_tokens=1)
        for i in range(250)
    ])
    events = []
    for i in range(EVENTS):
        req = bulk[i % len(bulk)]
        events.append(RuntimeEvent(request=req, seq=i // len(bulk) + 1, event_type="runtime.step.completed",
                                   agent_id="primary", session_id=req.session.session_id, trace_id=req.trace_id,
                                   loop_index=0, step_key="step.0", payload={"duration_ms": i}))
    RuntimeEvent.objects.bulk_create(events, batch_size=2000)
    StepCheckpoint.objects.bulk_create([StepCheckpoint(request=r, step_key="plan.0", kind="llm", output={"i": 1})
                                        for r in bulk])
    MemoryTurn.objects.bulk_create([MemoryTurn(agent=r.agent, session=r.session, request=r, user_message=r.message,
                                               agent_response="ok", token_usage={"total_tokens": 2}) for r in bulk])
    ApiRequestLog.objects.bulk_create([ApiRequestLog(method="GET", path=f"/api/v1/p{i}", status_code=200,
                                                     duration_ms=1.0) for i in range(250)])
    assert RuntimeEvent.objects.count() > EVENTS
    return {"main": main, "failed": failed, "parked": parked, "asked": asked.pk, "plain": plain}


@pytest.fixture
def operator(history):
    user = User.objects.create_superuser("operator", password="pw")
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def viewer(history):
    """Staff with view permissions only: may browse, may not act."""
    user = User.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__startswith="view_"))
    client = Client()
    client.force_login(user)
    return client


def our_models():
    """Every model of the project's own apps that has an admin page."""
    return [m for m in admin.site._registry if m._meta.app_config.name.startswith("mash_")]


def changelist(model) -> str:
    return f"/admin/{model._meta.app_label}/{model._meta.model_name}/"


def get_counted(client, url, **params):
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url, params)
    assert response.status_code == 200, (url, response.status_code, response.content[:1000])
    return response, len(queries)


def test_every_changelist_opens_in_a_bounded_number_of_queries(operator, viewer):
    models = our_models()
    names = {m.__name__ for m in models}
    assert {"Agent", "Session", "Request", "RuntimeEvent", "StepCheckpoint", "Interaction", "MemoryTurn",
            "ApiKey", "ApiRequestLog"} <= names
    for client in (operator, viewer):
        for model in models:
            response, count = get_counted(client, changelist(model))
            assert count <= MAX_QUERIES, f"{model.__name__}: {count} queries"
    # The big ones show a full page of rows for those queries (no per-row lookups hiding in there).
    for model, marker in ((RuntimeEvent, "runtime.step.completed"), (Request, ">bulk"), (ApiRequestLog, "/api/v1/p")):
        response, count = get_counted(operator, changelist(model))
        assert response.content.decode().count(marker) >= 50, model.__name__
        assert count <= MAX_QUERIES


def test_filtered_and_searched_changelists_stay_bounded(operator, history):
    checks = [
        (Request, {"status__exact": "failed"}, history["failed"][:8]),
        (Request, {"q": history["main"]}, history["main"][:8]),
        (Request, {"kind": "subagent"}, "↳"),
        (RuntimeEvent, {"q": history["main"]}, "request.accepted"),
        (RuntimeEvent, {"family": "request"}, "request.accepted"),
        (RuntimeEvent, {"event_type": "runtime.tool.call.completed"}, "runtime.tool.call.completed"),
        (RuntimeEvent, {"agent_id": "helper"}, "helper"),
        (RuntimeEvent, {"q": "bulk3"}, "bulk3"),
        (Interaction, {"status__exact": "pending"}, history["asked"]),
        (MemoryTurn, {"q": "bulk 7"}, "bulk 7"),
        (ApiRequestLog, {"status_code": "200"}, "/api/v1/p1"),
        (Session, {"q": "bulk"}, "bulk4"),
    ]
    for model, params, expected in checks:
        response, count = get_counted(operator, changelist(model), **params)
        assert expected in response.content.decode(), (model.__name__, params)
        assert count <= MAX_QUERIES, (model.__name__, params, count)
    # A free-text search on events is not a LIKE over every payload: it matches an exact session id.
    assert get_counted(operator, changelist(RuntimeEvent))[0].context["cl"].result_count > 0
    response, _ = get_counted(operator, changelist(RuntimeEvent), q="no such thing")
    assert response.context["cl"].result_count == 0


def test_every_change_page_opens_in_a_bounded_number_of_queries(operator, history):
    for model in our_models():
        obj = model._default_manager.order_by("pk").first()
        if obj is None:
            continue
        # The admin escapes pks in its URLs: an interaction id like "itr_40..." reads as "itr@..." unescaped.
        response, count = get_counted(operator, f"{changelist(model)}{quote(obj.pk)}/change/")
        assert count <= MAX_QUERIES + 6, f"{model.__name__}: {count} queries"


def test_the_event_table_counts_by_estimate_not_by_scanning(history):
    paginator = EstimatedCountPaginator(RuntimeEvent.objects.all(), 100)
    assert paginator.count >= CAP and paginator.capped
    small = EstimatedCountPaginator(RuntimeEvent.objects.filter(request_id=history["main"]), 100)
    assert small.count == Request.objects.get(pk=history["main"]).last_seq and not small.capped
    for model in (RuntimeEvent, StepCheckpoint, ApiRequestLog, Request):
        model_admin = admin.site._registry[model]
        assert model_admin.paginator is EstimatedCountPaginator
        assert model_admin.show_full_result_count is False


def test_history_is_read_only(operator, history):
    event = RuntimeEvent.objects.filter(request_id=history["main"]).first()
    for model, pk in ((RuntimeEvent, event.pk), (StepCheckpoint, StepCheckpoint.objects.first().pk),
                      (Interaction, history["asked"]), (MemoryTurn, MemoryTurn.objects.first().pk),
                      (Request, history["main"])):
        assert operator.get(f"{changelist(model)}add/").status_code == 403, model.__name__
        page = operator.get(f"{changelist(model)}{quote(pk)}/change/").content.decode()
        assert 'name="_save"' not in page, model.__name__
        assert operator.post(f"{changelist(model)}{pk}/delete/", {"post": "yes"}).status_code == 403
    assert RuntimeEvent.objects.filter(pk=event.pk).exists()
    # Deleting a session or agent is refused while one of its requests is unfinished.
    parked = Request.objects.get(pk=history["parked"])
    assert operator.post(f"{changelist(Session)}{parked.session_id}/delete/", {"post": "yes"}).status_code == 403


def test_records_link_to_each_other_and_to_the_trace(operator, history):
    main = Request.objects.get(pk=history["main"])
    page = operator.get(f"{changelist(Request)}{main.pk}/change/").content.decode()
    assert f"/telemetry/requests/{main.pk}/" in page
    assert f"{changelist(RuntimeEvent)}?request__id__exact={main.pk}" in page
    assert f"{changelist(Interaction)}?request__id__exact={main.pk}" in page
    assert f"{changelist(Request)}?parent__id__exact={main.pk}" in page
    assert f"/admin/mash_runtime/session/{main.session_id}/change/" in page
    plain = Request.objects.get(pk=history["plain"])
    page = operator.get(f"{changelist(Request)}{plain.pk}/change/").content.decode()
    turn = MemoryTurn.objects.get(request=plain)
    assert f"/admin/mash_runtime/memoryturn/{turn.pk}/change/" in page
    listing = operator.get(changelist(RuntimeEvent), {"request__id__exact": str(main.pk)}).content.decode()
    assert f"/admin/mash_runtime/request/{main.pk}/change/" in listing
    assert listing.count("/admin/mash_runtime/request/") >= main.last_seq
    sessions = operator.get(changelist(Session)).content.decode()
    assert f"{changelist(Request)}?session__id__exact={main.session_id}" in sessions


def test_operators_cancel_and_resume_requests(operator, history, engine):  # noqa: F811
    failed, parked = history["failed"], history["parked"]
    response = operator.post(changelist(Request), {"action": "resume_selected", "_selected_action": [failed, parked]},
                             follow=True)
    assert "Resumed 1 request(s); 1 were not failed or cancelled." in response.content.decode()
    assert Request.objects.get(pk=failed).status == "accepted"
    response = operator.post(changelist(Request), {"action": "cancel_selected", "_selected_action": [failed, parked]},
                             follow=True)
    assert Request.objects.get(pk=failed).status == "cancelled"
    assert Request.objects.get(pk=parked).status == "cancelled"
    assert "Cancel: 2 cancelled" in response.content.decode()
    engine.queue.clear()


def test_operators_answer_pending_interactions(operator, history, engine):  # noqa: F811
    asked = Interaction.objects.get(pk=history["asked"])
    listing = operator.get(changelist(Interaction)).content.decode()
    answer_url = f"{changelist(Interaction)}{asked.pk}/answer/"
    assert answer_url in listing
    form = operator.get(answer_url).content.decode()
    assert "Which?" in form and 'name="response"' in form
    response = operator.post(answer_url, {"response": "the blue one"})
    assert response.status_code == 302
    asked.refresh_from_db()
    assert asked.status == "answered" and asked.response == "the blue one"
    # A second answer is refused with the service's message.
    page = operator.get(answer_url).content.decode()
    assert "no longer waiting" in page
    engine.drain()
    assert Request.objects.get(pk=history["main"]).status == "completed"
    # Approvals in bulk.
    approval = Interaction.objects.get(request_id=history["parked"], status="pending")
    response = operator.post(changelist(Interaction), {"action": "approve_selected",
                                                       "_selected_action": [approval.pk]}, follow=True)
    assert "Answered 1 approval(s) with &#x27;approve&#x27;." in response.content.decode()
    engine.drain()
    assert Request.objects.get(pk=history["parked"]).status == "completed"


def test_viewers_cannot_act(viewer, history):
    page = viewer.get(changelist(Request)).content.decode()
    assert "cancel_selected" not in page and "resume_selected" not in page
    page = viewer.get(changelist(Interaction)).content.decode()
    assert "approve_selected" not in page
    assert viewer.get(f"{changelist(Interaction)}{history['asked']}/answer/").status_code == 403
    response = viewer.post(changelist(Request), {"action": "cancel_selected", "_selected_action": [history["parked"]]})
    assert Request.objects.get(pk=history["parked"]).status == "awaiting_input"
    assert response.status_code in (200, 302, 403)
