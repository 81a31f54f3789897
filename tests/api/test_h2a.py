"""The per-agent binding under /h2a/ (upstream SDK `AgentClient`): bare bodies, bare errors."""

from __future__ import annotations

import uuid

import pytest
from django.test import Client

from mash_runtime import HostBuilder
from mash_runtime.host import set_host
from mash_runtime.models import Interaction, Request
from mash_runtime.workflows import TaskSpec, WorkflowSpec
from tests.api.conftest import assert_h2a_error, parse_sse, post_json, read_stream, script, tool
from tests.apps.engine_host import ScriptedSpec

UNKNOWN_RID = "00000000-0000-4000-8000-000000000000"


def submit(client, body, agent="primary"):
    return post_json(client, f"/h2a/agent/{agent}/request", body)


def accepted(client, body, agent="primary") -> dict:
    response = submit(client, body, agent)
    assert response.status_code == 202, response.content
    return response.json()


def test_it_reports_health(api, engine):
    body = api.get("/h2a/health").json()
    assert body["status"] == "ok" and body["primary_agent_id"] == "primary"
    assert [a["agent_id"] for a in body["agents"]] == ["primary", "helper"]


def test_it_accepts_a_request_with_exactly_202_and_a_bare_body(api, engine):
    response = submit(api, {"message": "  hi  ", "session_id": " s1 "})
    assert response.status_code == 202
    body = response.json()
    assert list(body) == ["request_id", "agent_id", "session_id", "status"]
    assert uuid.UUID(body["request_id"]).version == 4
    assert body == {"request_id": body["request_id"], "agent_id": "primary", "session_id": "s1", "status": "accepted"}
    assert engine.request(body["request_id"]).message == "hi"
    assert accepted(api, {"message": "x"}, agent="helper")["session_id"] == "helper:default"


@pytest.mark.parametrize("body", [{"message": ""}, {"message": "  "}, {}, {"message": 3},
                                  {"message": "x", "session_id": 1}, ["x"], "x"])
def test_it_rejects_invalid_submissions(api, engine, body):
    assert_h2a_error(submit(api, body), 400, "INVALID_REQUEST")
    assert Request.objects.count() == 0


def test_it_rejects_malformed_json(api, engine):
    response = api.post("/h2a/agent/primary/request", data="{nope", content_type="application/json")
    assert_h2a_error(response, 400, "INVALID_JSON")


def test_it_rejects_a_non_object_structured_output(api, engine):
    assert_h2a_error(submit(api, {"message": "x", "structured_output": {"type": "string"}}), 400,
                     "INVALID_STRUCTURED_OUTPUT")


def test_it_answers_route_not_found_for_unknown_or_workflow_only_agents(api, engine):
    class WorkflowOnly(ScriptedSpec):
        agent_id = "wfonly"

    set_host(HostBuilder().primary(ScriptedSpec()).workflow(
        WorkflowSpec("wf", [TaskSpec("t", agent_spec=WorkflowOnly())])).build())
    rid = accepted(api, {"message": "x"})["request_id"]
    for agent in ["ghost", "wfonly"]:
        assert_h2a_error(submit(api, {"message": "x"}, agent=agent), 404, "ROUTE_NOT_FOUND")
        assert_h2a_error(api.get(f"/h2a/agent/{agent}/request/{rid}/status"), 404, "ROUTE_NOT_FOUND")
        assert_h2a_error(api.post(f"/h2a/agent/{agent}/request/{rid}/resume"), 404, "ROUTE_NOT_FOUND")
        assert_h2a_error(post_json(api, f"/h2a/agent/{agent}/request/{rid}/interaction",
                                   {"interaction_id": "itr_000000000000", "response": "x"}), 404, "ROUTE_NOT_FOUND")
        assert_h2a_error(api.get(f"/h2a/agent/{agent}/request/{rid}"), 404, "ROUTE_NOT_FOUND")


def test_it_answers_request_not_found(api, engine):
    rid = accepted(api, {"message": "x"})["request_id"]
    for path in [f"/h2a/agent/primary/request/{UNKNOWN_RID}/status", f"/h2a/agent/helper/request/{rid}/status",
                 "/h2a/agent/primary/request/not-a-uuid/status"]:
        assert_h2a_error(api.get(path), 404, "REQUEST_NOT_FOUND")
    assert_h2a_error(api.post(f"/h2a/agent/primary/request/{UNKNOWN_RID}/resume"), 404, "REQUEST_NOT_FOUND")
    assert_h2a_error(post_json(api, f"/h2a/agent/primary/request/{UNKNOWN_RID}/interaction",
                               {"interaction_id": "itr_000000000000", "response": "x"}), 404, "REQUEST_NOT_FOUND")
    for path in [f"/h2a/agent/primary/request/{UNKNOWN_RID}", f"/h2a/agent/helper/request/{rid}"]:
        response = api.get(path)
        assert not response.streaming
        assert_h2a_error(response, 404, "REQUEST_NOT_FOUND")


def test_it_streams_a_request_without_the_events_suffix(api, engine):
    rid = accepted(api, {"message": script("streamed")})["request_id"]
    engine.drain()
    response = api.get(f"/h2a/agent/primary/request/{rid}")
    assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
    frames = parse_sse(read_stream(response))
    assert frames[0]["event"] == "request.accepted" and frames[-1]["event"] == "request.completed"
    assert frames[-1]["data"]["response"]["text"] == "streamed"
    after = parse_sse(read_stream(api.get(f"/h2a/agent/primary/request/{rid}", HTTP_LAST_EVENT_ID="2")))
    assert [f["id"] for f in after] == [f["id"] for f in frames][2:]


def test_it_reports_status_and_resumes_with_bare_bodies(api, engine, tmp_path):
    rid = accepted(api, {"message": script("ok", llm_error={"marker": str(tmp_path / "m"), "times": 1,
                                                           "transient": False})})["request_id"]
    status = api.get(f"/h2a/agent/primary/request/{rid}/status").json()
    assert status == {"request_id": rid, "workflow_id": rid, "status": "queued", "recovery_attempts": 0}
    engine.drain()
    status = api.get(f"/h2a/agent/primary/request/{rid}/status").json()
    assert status["status"] == "failed" and status["error"] == "scripted failure"
    resumed = api.post(f"/h2a/agent/primary/request/{rid}/resume")
    assert resumed.status_code == 200
    assert resumed.json() == {"request_id": rid, "workflow_id": rid, "status": "resumed", "previous_status": "failed",
                              "message": resumed.json()["message"]}
    engine.drain()
    assert api.get(f"/h2a/agent/primary/request/{rid}/status").json()["status"] == "completed"
    assert api.post(f"/h2a/agent/primary/request/{rid}/resume").json()["status"] == "completed"


def test_it_takes_interaction_answers_with_bare_bodies(api, engine, tmp_path):
    rid = accepted(api, {"message": script({"tool_calls": [tool("write_file", path=str(tmp_path / "f"), text="x")]},
                                           "ok")})["request_id"]
    engine.drain()
    itr = Interaction.objects.get(request_id=rid)
    url = f"/h2a/agent/primary/request/{rid}/interaction"
    assert_h2a_error(post_json(api, url, {"response": "approve"}), 400, "INVALID_REQUEST")
    assert_h2a_error(post_json(api, url, {"interaction_id": itr.interaction_id}), 400, "INVALID_REQUEST")
    assert_h2a_error(api.post(url, data="[", content_type="application/json"), 400, "INVALID_JSON")
    assert_h2a_error(post_json(api, url, {"interaction_id": "itr_000000000000", "response": "approve"}),
                     404, "INTERACTION_NOT_FOUND")
    response = post_json(api, url, {"interaction_id": itr.interaction_id, "response": "approve"})
    assert response.status_code == 200
    assert response.json() == {"ok": True, "interaction_id": itr.interaction_id}
    assert_h2a_error(post_json(api, url, {"interaction_id": itr.interaction_id, "response": "approve"}),
                     409, "INTERACTION_ALREADY_ANSWERED")
    assert engine.drain() == ["completed"]


@pytest.mark.parametrize("method,path", [
    ("post", "/h2a/health"),
    ("get", "/h2a/agent/primary/request"),
    ("post", f"/h2a/agent/primary/request/{UNKNOWN_RID}/status"),
    ("get", f"/h2a/agent/primary/request/{UNKNOWN_RID}/resume"),
    ("get", f"/h2a/agent/primary/request/{UNKNOWN_RID}/interaction"),
    ("post", f"/h2a/agent/primary/request/{UNKNOWN_RID}"),
])
def test_it_answers_wrong_methods_with_a_bare_error(engine, method, path):
    response = getattr(Client(enforce_csrf_checks=True), method)(path)
    assert_h2a_error(response, 405, "METHOD_NOT_ALLOWED")
