from urllib.parse import quote

import pytest

from mash_runtime.host import get_host, set_host
from mash_runtime.host_sync import sync_host
from tests.api.conftest import assert_error, data, parse_sse, post_json, read_stream


@pytest.fixture
def wf(engine, settings):
    settings.MASH_HOST_APP = "tests.apps.workflow_host:build_host"
    set_host(None)
    sync_host(get_host())
    return engine


def test_it_lists_workflows(wf, api):
    body = data(api.get("/api/v1/workflow"))
    ids = [w["workflow_id"] for w in body["workflows"]]
    assert "count-and-report" in ids
    assert data(api.get("/api/v1/workflows")) == body


def test_it_runs_a_workflow_and_streams_it_to_one_final_event(wf, api):
    started = data(post_json(api, "/api/v1/workflow/count-and-report/run", {"input": {"step": 1}}), 202)
    assert started["workflow_id"] == "count-and-report" and started["status"] == "running"
    wf.drain()
    run_path = f"/api/v1/workflow/count-and-report/runs/{quote(started['run_id'], safe='')}"
    run = data(api.get(run_path))
    assert run["status"] == "completed" and run["output"]["task_states"]["count"] == {"count": 1}
    assert set(run) >= {"run_id", "workflow_id", "dedup_key", "status", "created_at", "started_at", "finished_at",
                        "error", "output", "summary"}
    frames = parse_sse(read_stream(api.get(run_path + "/events")))
    names = [f["event"] for f in frames]
    assert names[0] == "workflow.task.started" and names[-1] == "workflow.completed"
    assert sum(n in ("workflow.completed", "workflow.error") for n in names) == 1
    assert "agent.trace" in names and "request.completed" in names
    trace = next(f for f in frames if f["event"] == "agent.trace")
    assert {"workflow_id", "run_id", "task_id", "task_agent_id", "event_type"} <= set(trace["data"])
    assert [f["id"] for f in frames] == list(range(1, len(frames) + 1))
    later = parse_sse(read_stream(api.get(run_path + "/events", HTTP_LAST_EVENT_ID=str(frames[-3]["id"]))))
    assert [f["id"] for f in later] == [f["id"] for f in frames[-2:]]


def test_it_refuses_duplicates_and_unknowns(wf, api):
    first = data(post_json(api, "/api/v1/workflow/count-and-report/run", {"dedup_key": "k"}), 202)
    error = assert_error(post_json(api, "/api/v1/workflow/count-and-report/run", {"dedup_key": "k"}), 409,
                         "WORKFLOW_DUPLICATE_RUN")
    assert error["details"]["run_id"] == first["run_id"]
    assert_error(post_json(api, "/api/v1/workflow/ghost/run", {}), 404, "WORKFLOW_NOT_FOUND")
    assert_error(api.get("/api/v1/workflow/count-and-report/runs/count-and-report%3Anope"), 404,
                 "WORKFLOW_RUN_NOT_FOUND")
    assert_error(api.get("/api/v1/workflow/count-and-report/runs/nope/events"), 404, "WORKFLOW_RUN_NOT_FOUND")
    assert_error(post_json(api, "/api/v1/workflow/count-and-report/run", {"input": [1]}), 422, "VALIDATION_ERROR")


def test_it_lists_runs_with_filters(wf, api):
    for _ in range(3):
        post_json(api, "/api/v1/workflow/count-and-report/run", {})
    wf.drain()
    body = data(api.get("/api/v1/workflow/count-and-report/runs", {"limit": 2, "status": "completed"}))
    assert body["workflow_id"] == "count-and-report" and len(body["runs"]) == 2
    assert all("output" not in r and r["status"] == "completed" for r in body["runs"])
    assert data(api.get("/api/v1/workflow/count-and-report/runs", {"status": "failed"}))["runs"] == []
    assert_error(api.get("/api/v1/workflow/count-and-report/runs", {"limit": 0}), 422, "VALIDATION_ERROR")
    assert_error(api.get("/api/v1/workflow/count-and-report/runs", {"limit": 500}), 422, "VALIDATION_ERROR")
    assert_error(api.get("/api/v1/workflow/count-and-report/runs", {"offset": -1}), 422, "VALIDATION_ERROR")
    oldest = data(api.get("/api/v1/workflow/count-and-report/runs", {"sort_desc": "false", "limit": 1}))["runs"]
    newest = data(api.get("/api/v1/workflow/count-and-report/runs", {"limit": 1}))["runs"]
    assert oldest != newest
    assert_error(api.get("/api/v1/workflow/count-and-report/runs", {"start_time": "yesterday"}), 422,
                 "VALIDATION_ERROR")


def test_it_cancels_and_resumes_runs(wf, api, tmp_path):
    run_id = data(post_json(api, "/api/v1/workflow/gated/run", {"input": {"path": str(tmp_path / "x")}}), 202)["run_id"]
    wf.drain()
    base = f"/api/v1/workflow/gated/runs/{quote(run_id, safe='')}"
    assert data(api.post(base + "/cancel"))["status"] == "cancelled"
    wf.drain()
    assert data(api.post(base + "/resume"))["status"] == "resumed"


def test_it_publishes_and_removes_skills_and_workflows(wf, api):
    assert_error(post_json(api, "/api/v1/agent/primary/skill", {"type": "inline", "name": "s"}), 400,
                 "INVALID_AGENT_SKILL")
    assert data(post_json(api, "/api/v1/agent/primary/skill", {"type": "inline", "name": "s", "content": "Do it."})) == {
        "agent_id": "primary", "skill_name": "s"}
    assert_error(post_json(api, "/api/v1/agent/ghost/skill", {"name": "s", "content": "x"}), 404, "AGENT_NOT_FOUND")
    body = {"workflow_id": "pub", "tasks": [{"task_id": "count", "agent_id": "counter"}],
            "task_message": {"skill_name": "s"}}
    assert data(post_json(api, "/api/v1/agent/primary/workflow", body)) == {"agent_id": "primary", "workflow_id": "pub"}
    assert_error(post_json(api, "/api/v1/agent/primary/workflow", {"workflow_id": "bad", "tasks": []}), 400,
                 "INVALID_AGENT_WORKFLOW")
    assert "pub" in [w["workflow_id"] for w in data(api.get("/api/v1/workflow"))["workflows"]]
    assert data(api.delete("/api/v1/agent/primary/workflow/pub"))["deleted"] is True
    assert "pub" not in [w["workflow_id"] for w in data(api.get("/api/v1/workflow"))["workflows"]]
    assert data(api.delete("/api/v1/agent/primary/skill/s"))["deleted"] is True
    assert_error(api.delete("/api/v1/agent/primary/skill/s"), 404, "SKILL_NOT_FOUND")


def test_its_422s_name_the_value_at_fault(wf, api):
    bad_input = post_json(api, "/api/v1/workflow/count-and-report/run", {"input": "not an object"})
    assert_error(bad_input, 422, "VALIDATION_ERROR")
    assert bad_input.json()["error"]["details"]["errors"] == [
        {"loc": ["body", "input"], "msg": "must be an object", "type": "dict_type"}]
    bad_status = api.get("/api/v1/workflow/count-and-report/runs", {"status": "completed,bogus"})
    assert_error(bad_status, 422, "VALIDATION_ERROR")
    assert "bogus" in bad_status.json()["error"]["message"]
    assert bad_status.json()["error"]["details"]["errors"][0]["loc"] == ["query", "status"]
