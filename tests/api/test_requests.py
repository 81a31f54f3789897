"""Submitting requests, their status, resume, cancel and interactions over /api/v1."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from mash_runtime.models import Interaction, Request
from tests.api.conftest import assert_error, data, post_json, script, tool

UNKNOWN_RID = "00000000-0000-4000-8000-000000000000"


def submit(api, body, agent="primary", prefix="/api/v1/agent", word="request"):
    return post_json(api, f"{prefix}/{agent}/{word}", body)


def accepted(api, body, **kwargs) -> dict:
    return data(submit(api, body, **kwargs), 202)


def pending(rid) -> Interaction:
    return Interaction.objects.get(request_id=rid, status="pending")


def approval_request(api, engine, tmp_path) -> str:
    """A request parked on an approval (write_file needs one)."""
    rid = accepted(api, {"message": script({"tool_calls": [tool("write_file", path=str(tmp_path / "f"), text="x")]},
                                           "written")})["request_id"]
    assert engine.drain() == ["parked:input"]
    return rid


def failing_request(api, engine, tmp_path) -> str:
    marker = tmp_path / "marker"
    plan = script("recovered", llm_error={"marker": str(marker), "times": 1, "transient": False})
    rid = accepted(api, {"message": plan})["request_id"]
    engine.drain()
    assert engine.request(rid).status == "failed"
    return rid


# -- submit ---------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix,word", [("/api/v1/agent", "request"), ("/api/v1/agents", "requests"),
                                         ("/api/v1/agents", "request"), ("/api/v1/agent", "requests")])
def test_it_accepts_a_request_with_202(api, engine, prefix, word):
    response = submit(api, {"message": "hello", "session_id": "s1"}, prefix=prefix, word=word)
    body = data(response, 202)
    assert set(body) == {"request_id", "agent_id", "session_id", "status"}
    assert uuid.UUID(body["request_id"]).version == 4
    assert body == {"request_id": body["request_id"], "agent_id": "primary", "session_id": "s1", "status": "accepted"}
    req = engine.request(body["request_id"])
    assert req.message == "hello" and req.status == "accepted"
    assert [name for name, _ in engine.queue] == ["mash_runtime.run.runner.run_request_task"]


def test_it_uses_the_agents_default_session_when_none_is_given(api, engine):
    assert accepted(api, {"message": "hi"})["session_id"] == "primary:default"
    assert accepted(api, {"message": "hi", "session_id": None})["session_id"] == "primary:default"
    assert accepted(api, {"message": "hi", "session_id": "   "})["session_id"] == "primary:default"
    assert accepted(api, {"message": "hi"}, agent="helper")["session_id"] == "helper:default"


def test_it_strips_whitespace_from_message_session_and_path(api, engine):
    response = post_json(api, "/api/v1/agent/%20primary%20/request", {"message": "  hi there \n", "session_id": " s1 "})
    body = data(response, 202)
    assert body["agent_id"] == "primary" and body["session_id"] == "s1"
    req = engine.request(body["request_id"])
    assert req.message == "hi there" and req.session.session_id == "s1"


@pytest.mark.parametrize("body,loc,kind", [
    ({"message": ""}, ["body", "message"], "blank"),
    ({"message": "   \n\t"}, ["body", "message"], "blank"),
    ({}, ["body", "message"], "required"),
    ({"session_id": "s"}, ["body", "message"], "required"),
])
def test_it_rejects_blank_messages_with_400_invalid_request(api, engine, body, loc, kind):
    error = assert_error(submit(api, body), 400, "INVALID_REQUEST")
    assert error["details"]["errors"] == [{"loc": loc, "msg": error["details"]["errors"][0]["msg"], "type": kind}]
    assert Request.objects.count() == 0


@pytest.mark.parametrize("body,loc", [
    ({"message": 5}, ["body", "message"]),
    ({"message": ["a"]}, ["body", "message"]),
    ({"message": None}, ["body", "message"]),
    ({"message": "hi", "session_id": 7}, ["body", "session_id"]),
    ({"message": "hi", "structured_output": [1]}, ["body", "structured_output"]),
    ({"message": "hi", "metadata": "x"}, ["body", "metadata"]),
    (["hi"], ["body"]),
    ("hi", ["body"]),
])
def test_it_rejects_badly_shaped_bodies_with_422_validation_error(api, engine, body, loc):
    error = assert_error(submit(api, body), 422, "VALIDATION_ERROR")
    errors = error["details"]["errors"]
    assert errors and all(set(e) == {"loc", "msg", "type"} for e in errors)
    assert errors[0]["loc"] == loc
    assert Request.objects.count() == 0


@pytest.mark.parametrize("raw", ['{"message": ', "{bad", "\xff"])
def test_it_rejects_malformed_json_with_400_invalid_json(api, engine, raw):
    response = api.post("/api/v1/agent/primary/request", data=raw.encode("latin-1"), content_type="application/json")
    assert_error(response, 400, "INVALID_JSON")


@pytest.mark.parametrize("schema", [{"type": "string"}, {"type": "array", "items": {"type": "string"}}])
def test_it_rejects_non_object_structured_output_schemas(api, engine, schema):
    response = submit(api, {"message": "hi", "structured_output": schema})
    assert_error(response, 400, "INVALID_STRUCTURED_OUTPUT")
    assert Request.objects.count() == 0


def test_it_accepts_an_object_structured_output_schema(api, engine):
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    rid = accepted(api, {"message": script("five", structured={"n": 5}), "structured_output": schema})["request_id"]
    engine.drain()
    assert engine.request(rid).response["structured_output"] == {"n": 5}


def test_it_answers_404_for_a_submit_to_an_unknown_agent(api, engine):
    assert_error(submit(api, {"message": "hi"}, agent="ghost"), 404, "AGENT_NOT_FOUND")
    assert_error(submit(api, {"message": "hi"}, agent="ghost", prefix="/api/v1/agents", word="requests"),
                 404, "AGENT_NOT_FOUND")


def test_it_refuses_a_form_encoded_body(api, engine):
    response = api.post("/api/v1/agent/primary/request", data={"message": "hi"})
    assert_error(response, 415, "UNSUPPORTED_MEDIA_TYPE")


# -- status ---------------------------------------------------------------------------------


def status_of(api, rid, agent="primary", prefix="/api/v1/agent", word="request"):
    return data(api.get(f"{prefix}/{agent}/{word}/{rid}/status"))


def test_it_reports_queued_then_completed(api, engine):
    rid = accepted(api, {"message": script("done")})["request_id"]
    assert status_of(api, rid) == {"request_id": rid, "workflow_id": rid, "status": "queued", "recovery_attempts": 0}
    engine.drain()
    assert status_of(api, rid) == {"request_id": rid, "workflow_id": rid, "status": "completed",
                                   "recovery_attempts": 0}
    assert status_of(api, rid, prefix="/api/v1/agents", word="requests")["status"] == "completed"
    assert status_of(api, f"%20{rid}%20")["status"] == "completed"


def test_it_reports_pending_while_running(api, engine):
    rid = accepted(api, {"message": "x"})["request_id"]
    Request.objects.filter(pk=rid).update(status="running")
    assert status_of(api, rid)["status"] == "pending"


def test_it_reports_waiting_input_on_an_open_interaction(api, engine, tmp_path):
    rid = approval_request(api, engine, tmp_path)
    assert status_of(api, rid)["status"] == "waiting_input"


def test_it_reports_a_failure_with_its_error(api, engine, tmp_path):
    rid = failing_request(api, engine, tmp_path)
    status = status_of(api, rid)
    assert status["status"] == "failed"
    assert status["error"] == "scripted failure" and status["error_code"] == "LLM_UNAVAILABLE"


def test_it_reports_cancelled(api, engine):
    rid = accepted(api, {"message": "x"})["request_id"]
    data(api.post(f"/api/v1/agent/primary/request/{rid}/cancel"))
    assert status_of(api, rid)["status"] == "cancelled"


@pytest.mark.parametrize("suffix,method", [("status", "get"), ("resume", "post"), ("cancel", "post")])
def test_it_answers_404_for_unknown_or_foreign_requests(api, engine, suffix, method):
    rid = accepted(api, {"message": "x"})["request_id"]
    call = getattr(api, method)
    for path in [f"/api/v1/agent/primary/request/{UNKNOWN_RID}/{suffix}",
                 f"/api/v1/agent/primary/request/not-a-uuid/{suffix}",
                 # the request exists, but belongs to another agent
                 f"/api/v1/agent/helper/request/{rid}/{suffix}",
                 f"/api/v1/agents/helper/requests/{rid}/{suffix}"]:
        assert_error(call(path), 404, "REQUEST_NOT_FOUND")
    assert engine.request(rid).status == "accepted"


# -- resume, cancel -------------------------------------------------------------------------


def test_it_resumes_a_failed_request(api, engine, tmp_path):
    rid = failing_request(api, engine, tmp_path)
    resumed = data(api.post(f"/api/v1/agent/primary/request/{rid}/resume"))
    assert resumed == {"request_id": rid, "workflow_id": rid, "status": "resumed", "previous_status": "failed",
                       "message": resumed["message"]}
    assert resumed["message"]
    assert engine.drain() == ["completed"]
    assert status_of(api, rid)["status"] == "completed"


def test_it_leaves_a_completed_request_unchanged_on_resume(api, engine):
    rid = accepted(api, {"message": script("done")})["request_id"]
    engine.drain()
    resumed = data(api.post(f"/api/v1/agents/primary/requests/{rid}/resume"))
    assert resumed["status"] == "completed" and "previous_status" not in resumed
    assert set(resumed) == {"request_id", "workflow_id", "status", "message"}
    assert engine.queue == [] and engine.request(rid).run_attempt == 0


def test_it_resumes_a_cancelled_request(api, engine):
    rid = accepted(api, {"message": script("after all")})["request_id"]
    engine.queue.clear()
    data(api.post(f"/api/v1/agent/primary/request/{rid}/cancel"))
    resumed = data(api.post(f"/api/v1/agent/primary/request/{rid}/resume"))
    assert resumed["status"] == "resumed" and resumed["previous_status"] == "cancelled"
    assert engine.drain() == ["completed"]


def test_it_cancels_a_parked_request(api, engine, tmp_path):
    rid = approval_request(api, engine, tmp_path)
    assert data(api.post(f"/api/v1/agent/primary/request/{rid}/cancel")) == {"request_id": rid, "status": "cancelled"}
    req = engine.request(rid)
    assert req.status == "cancelled" and req.error_code == "cancelled"
    # Cancelling again, or a finished request, changes nothing.
    assert data(api.post(f"/api/v1/agents/primary/requests/{rid}/cancel")) == {"request_id": rid,
                                                                               "status": "cancelled"}
    assert engine.types(rid).count("request.error") == 1


def test_it_reports_a_completed_request_as_completed_on_cancel(api, engine):
    rid = accepted(api, {"message": script("done")})["request_id"]
    engine.drain()
    assert data(api.post(f"/api/v1/agent/primary/request/{rid}/cancel")) == {"request_id": rid, "status": "completed"}


# -- interactions ---------------------------------------------------------------------------


def answer(api, rid, body, agent="primary", prefix="/api/v1/agent", word="request"):
    return post_json(api, f"{prefix}/{agent}/{word}/{rid}/interaction", body)


@pytest.mark.parametrize("prefix,word", [("/api/v1/agent", "request"), ("/api/v1/agents", "requests")])
def test_it_takes_an_approval_answer(api, engine, tmp_path, prefix, word):
    rid = approval_request(api, engine, tmp_path)
    itr = pending(rid)
    assert itr.interaction_id.startswith("itr_") and len(itr.interaction_id) == 16
    body = data(answer(api, rid, {"interaction_id": f" {itr.interaction_id} ", "response": "approve"},
                       prefix=prefix, word=word))
    assert body == {"ok": True, "interaction_id": itr.interaction_id}
    assert engine.drain() == ["completed"]
    assert (tmp_path / "f").read_text() == "x"


def test_it_answers_404_for_an_unknown_request_or_interaction(api, engine, tmp_path):
    rid = approval_request(api, engine, tmp_path)
    itr = pending(rid)
    assert_error(answer(api, UNKNOWN_RID, {"interaction_id": itr.interaction_id, "response": "approve"}),
                 404, "REQUEST_NOT_FOUND")
    assert_error(answer(api, rid, {"interaction_id": itr.interaction_id, "response": "approve"}, agent="helper"),
                 404, "REQUEST_NOT_FOUND")
    assert_error(answer(api, rid, {"interaction_id": "itr_000000000000", "response": "approve"}),
                 404, "INTERACTION_NOT_FOUND")
    # An interaction of another request is not found through this one.
    other = accepted(api, {"message": "x"})["request_id"]
    assert_error(answer(api, other, {"interaction_id": itr.interaction_id, "response": "approve"}),
                 404, "INTERACTION_NOT_FOUND")
    assert pending(rid).status == "pending"


def test_it_answers_409_when_already_answered(api, engine, tmp_path):
    rid = approval_request(api, engine, tmp_path)
    itr = pending(rid)
    data(answer(api, rid, {"interaction_id": itr.interaction_id, "response": "deny"}))
    assert_error(answer(api, rid, {"interaction_id": itr.interaction_id, "response": "approve"}),
                 409, "INTERACTION_ALREADY_ANSWERED")
    engine.drain()
    assert not (tmp_path / "f").exists()


def test_it_answers_410_when_timed_out(api, engine, tmp_path):
    rid = approval_request(api, engine, tmp_path)
    itr = pending(rid)
    Interaction.objects.filter(pk=itr.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert_error(answer(api, rid, {"interaction_id": itr.interaction_id, "response": "approve"}),
                 410, "INTERACTION_TIMED_OUT")
    itr.refresh_from_db()
    assert itr.status == "timed_out" and itr.response == "deny"


def test_it_rejects_an_invalid_approval_answer(api, engine, tmp_path):
    rid = approval_request(api, engine, tmp_path)
    itr = pending(rid)
    for bad in ["maybe", ["approve"], 1]:
        assert_error(answer(api, rid, {"interaction_id": itr.interaction_id, "response": bad}),
                     400, "INVALID_INTERACTION_RESPONSE")
    assert pending(rid).pk == itr.pk


def test_it_validates_the_interaction_body(api, engine, tmp_path):
    rid = approval_request(api, engine, tmp_path)
    error = assert_error(answer(api, rid, {"response": "approve"}), 400, "INVALID_REQUEST")
    assert error["details"]["errors"][0]["loc"] == ["body", "interaction_id"]
    error = assert_error(answer(api, rid, {"interaction_id": pending(rid).interaction_id}), 400, "INVALID_REQUEST")
    assert error["details"]["errors"][0]["loc"] == ["body", "response"]
    assert_error(answer(api, rid, {"interaction_id": 5, "response": "approve"}), 422, "VALIDATION_ERROR")
    assert_error(answer(api, rid, [1]), 422, "VALIDATION_ERROR")
    response = api.post(f"/api/v1/agent/primary/request/{rid}/interaction", data="{", content_type="application/json")
    assert_error(response, 400, "INVALID_JSON")


def test_it_takes_choice_and_info_answers(api, engine):
    rid = accepted(api, {"message": script(
        {"tool_calls": [tool("AskUser", question="Pick", options=["red", "blue"])]},
        {"tool_calls": [tool("AskUser", question="Why?")]},
        "noted",
    )})["request_id"]
    engine.drain()
    choice = pending(rid)
    assert_error(answer(api, rid, {"interaction_id": choice.interaction_id, "response": ["green"]}),
                 400, "INVALID_INTERACTION_RESPONSE")
    data(answer(api, rid, {"interaction_id": choice.interaction_id, "response": ["blue"]}))
    engine.drain()
    info = pending(rid)
    assert_error(answer(api, rid, {"interaction_id": info.interaction_id, "response": ["x"]}),
                 400, "INVALID_INTERACTION_RESPONSE")
    data(answer(api, rid, {"interaction_id": info.interaction_id, "response": "because"}))
    assert engine.drain() == ["completed"]


def test_a_submit_the_database_cannot_take_now_is_a_retryable_503(api, engine, monkeypatch):
    from django.db import OperationalError

    from mash_runtime import services

    def starved(*args, **kwargs):
        raise OperationalError("couldn't get a connection after 10.00 sec")

    monkeypatch.setattr(services, "submit_request", starved)
    response = submit(api, {"message": "hi"})
    assert_error(response, 503, "DATABASE_UNAVAILABLE")
    assert response.json()["error"]["details"] == {"retryable": True}
    assert response["Retry-After"] == "1"
    assert not Request.objects.exists()


def test_a_stream_the_database_cannot_open_now_is_a_retryable_503(api, engine, monkeypatch):
    from django.db import OperationalError

    from mash_api.views import sse

    rid = accepted(api, {"message": "hi"})["request_id"]

    def starved(*args, **kwargs):
        raise OperationalError("couldn't get a connection after 10.00 sec")

    monkeypatch.setattr(sse, "stream_target", starved)
    response = api.get(f"/api/v1/agent/primary/request/{rid}/events")
    assert_error(response, 503, "DATABASE_UNAVAILABLE")
    assert response["Retry-After"] == "1"
