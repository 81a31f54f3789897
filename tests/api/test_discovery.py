"""Discovery routes (`/`, health, agents, workflows), the error envelope for unknown
routes, wrong methods and crashes, the OpenAPI schema and the browsable API."""

from __future__ import annotations

import json

import pytest

from mash_runtime import HostBuilder, SubAgentMetadata
from mash_runtime.host import set_host
from mash_runtime.read_services import no_worker_warning as REAL_NO_WORKER_WARNING
from mash_runtime.workflows import TaskSpec, WorkflowSpec
from tests.api.conftest import assert_error, data, post_json
from tests.apps.engine_host import HelperSpec, ScriptedSpec

SESSION_INFO_KEYS = {"app_id", "agent_id", "session_id", "primary_agent_id", "subagent_ids", "model", "max_steps",
                     "session_total_tokens"}
PRIMARY = {"agent_id": "primary", "role": "primary", "metadata": None}
HELPER = {"agent_id": "helper", "role": "subagent", "metadata": {
    "display_name": "Helper", "description": "Runs helper scripts", "capabilities": [], "usage_guidance": ""}}


class WorkflowOnlySpec(ScriptedSpec):
    agent_id = "wfonly"


@pytest.fixture
def workflow_host(engine):
    """The engine host plus a workflow whose first task brings a workflow-only agent."""
    set_host(
        HostBuilder()
        .primary(ScriptedSpec())
        .subagent(HelperSpec(), metadata=SubAgentMetadata(display_name="Helper", description="Runs helper scripts"))
        .workflow(WorkflowSpec("nightly", [TaskSpec("gather", agent_spec=WorkflowOnlySpec()),
                                           TaskSpec("report", agent_id="primary")], metadata={"owner": "ops"}))
        .build()
    )


def test_it_serves_the_root_discovery_document(api):
    response = api.get("/")
    assert response.status_code == 200
    assert response.json() == {"service": "mash-api", "api": {
        "version": "v1", "base": "/api/v1", "openapi": "/api/v1/schema/", "docs": "/api/v1/docs/"}}


def test_it_reports_health_with_deployment_and_primary_session(api):
    health = data(api.get("/api/v1/health"))
    assert set(health) == {"status", "service", "api_version", "deployment", "primary_agent", "observability",
                           "workers"}
    assert (health["status"], health["service"], health["api_version"]) == ("ok", "mash-api", "v1")
    assert health["deployment"] == {"primary_agent_id": "primary", "agents": [PRIMARY, HELPER]}
    assert health["primary_agent"] == {
        "app_id": "primary", "agent_id": "primary", "session_id": "primary:default", "primary_agent_id": "primary",
        "subagent_ids": ["helper"], "model": "scripted", "max_steps": 8, "session_total_tokens": 0}
    assert health["observability"] == {"enabled": True, "memory": {"search_available": True, "default_limit": 10}}
    assert health["workers"]["live"] == 0
    assert health["workers"]["warning"].startswith("no worker has been seen yet: requests stay queued")


def test_health_reports_live_worker_processes_and_their_slots(api):
    from datetime import timedelta

    from django.utils import timezone

    from mash_runtime.models import Worker

    now = timezone.now()
    Worker.objects.create(name="h1:11:aa", hostname="h1", pid=11, slots=100, in_use=7, started_at=now,
                          last_seen_at=now)
    Worker.objects.create(name="h2:22:bb", hostname="h2", pid=22, slots=50, in_use=50, draining=True,
                          started_at=now, last_seen_at=now - timedelta(seconds=2))
    Worker.objects.create(name="h3:33:cc", hostname="h3", pid=33, slots=100, in_use=0, started_at=now,
                          last_seen_at=now - timedelta(seconds=Worker.LIVE_SECONDS + 5))  # gone
    workers = data(api.get("/api/v1/health"))["workers"]
    assert (workers["live"], workers["slots"], workers["in_use"], workers["free"]) == (2, 150, 57, 93)
    assert "warning" not in workers
    assert [(p["hostname"], p["pid"], p["in_use"], p["free"], p["draining"]) for p in workers["processes"]] == [
        ("h1", 11, 7, 93, False), ("h2", 22, 50, 0, True)]


def test_health_warns_when_no_worker_was_seen_lately(api):
    from datetime import timedelta

    from django.utils import timezone

    from mash_runtime.models import Worker

    now = timezone.now()
    Worker.objects.create(name="h1:11:aa", hostname="h1", pid=11, slots=100, started_at=now,
                          last_seen_at=now - timedelta(seconds=95))
    workers = data(api.get("/api/v1/health"))["workers"]
    assert workers["live"] == 0 and workers["processes"] == []
    assert workers["warning"].startswith("no worker has been seen for 95 s")


@pytest.mark.parametrize("path", ["/api/v1/agent", "/api/v1/agents"])
def test_it_lists_agents(api, path):
    assert data(api.get(path)) == {"agents": [PRIMARY, HELPER], "primary_agent_id": "primary"}


@pytest.mark.parametrize("path", ["/api/v1/agent/helper", "/api/v1/agents/helper", "/api/v1/agent/%20helper%20"])
def test_it_describes_one_agent_with_its_default_session(api, path):
    detail = data(api.get(path))
    assert detail["agent"] == HELPER
    assert set(detail["session"]) == SESSION_INFO_KEYS
    assert detail["session"]["session_id"] == "helper:default"
    assert detail["session"]["agent_id"] == detail["session"]["app_id"] == "helper"
    assert detail["session"]["primary_agent_id"] == "primary"


@pytest.mark.parametrize("path", ["/api/v1/agent/ghost", "/api/v1/agents/ghost"])
def test_it_answers_404_agent_not_found_for_an_unknown_agent(api, path):
    error = assert_error(api.get(path), 404, "AGENT_NOT_FOUND")
    assert "ghost" in error["message"]


def test_a_format_no_renderer_serves_is_a_404_envelope_with_a_message(api):
    # DRF raises a bare Http404 for it; schemathesis found the empty message.
    assert_error(api.get("/api/v1/agent", {"format": "-2884"}), 404, "NOT_FOUND")


def test_it_hides_workflow_only_agents(api, workflow_host):
    listed = data(api.get("/api/v1/agent"))
    assert [a["agent_id"] for a in listed["agents"]] == ["primary", "helper"]
    health = data(api.get("/api/v1/health"))
    assert [a["agent_id"] for a in health["deployment"]["agents"]] == ["primary", "helper"]
    assert health["primary_agent"]["subagent_ids"] == ["helper"]
    assert_error(api.get("/api/v1/agent/wfonly"), 404, "AGENT_NOT_FOUND")
    assert_error(api.get("/api/v1/agent/wfonly/sessions"), 404, "AGENT_NOT_FOUND")
    assert_error(post_json(api, "/api/v1/agent/wfonly/request", {"message": "hi"}), 404, "AGENT_NOT_FOUND")


@pytest.mark.parametrize("path", ["/api/v1/workflow", "/api/v1/workflows"])
def test_it_lists_workflows(api, workflow_host, path):
    assert data(api.get(path)) == {"workflows": [{
        "workflow_id": "nightly",
        "tasks": [{"task_id": "gather", "agent_id": "wfonly"}, {"task_id": "report", "agent_id": "primary"}],
        "metadata": {"owner": "ops"},
    }]}


def test_it_lists_no_workflows_for_a_host_without_any(api):
    assert data(api.get("/api/v1/workflow")) == {"workflows": []}


@pytest.mark.parametrize("path", ["/api/v1/nope", "/api/v1/agent/primary/nope", "/api/v1/agent/primary/request/x/y/z",
                                  "/h2a/nope"])
def test_it_answers_unknown_routes_with_route_not_found(api, path):
    error = assert_error(api.get(path), 404, "ROUTE_NOT_FOUND")
    assert path in error["message"]


@pytest.mark.parametrize("method,path", [
    ("delete", "/api/v1/health"),
    ("post", "/api/v1/agent"),
    ("get", "/api/v1/agent/primary/request"),
    ("put", "/api/v1/agents/primary/requests"),
    ("get", "/api/v1/agent/primary/request/00000000-0000-4000-8000-000000000000/cancel"),
    ("post", "/api/v1/agent/primary/sessions"),
    ("post", "/api/v1/telemetry/events"),
    ("post", "/api/v1/agent/primary/request/00000000-0000-4000-8000-000000000000/events"),
    ("post", "/api/v1/telemetry/events/stream"),
])
def test_it_answers_wrong_methods_with_the_envelope(engine, method, path):
    from django.test import Client

    # A real client sends no CSRF token: the answer must still be the 405 envelope, not a CSRF page.
    client = Client(enforce_csrf_checks=True)
    assert_error(getattr(client, method)(path), 405, "METHOD_NOT_ALLOWED")


def test_it_wraps_a_crash_in_the_envelope(api, monkeypatch):
    from mash_runtime import read_services

    def boom():
        raise RuntimeError("secret detail")

    monkeypatch.setattr(read_services, "health", boom)
    error = assert_error(api.get("/api/v1/health"), 500, "INTERNAL_ERROR")
    assert "secret" not in error["message"]


def test_it_serves_an_openapi_3_schema_listing_the_routes_and_aliases(api):
    response = api.get("/api/v1/schema/?format=json")
    assert response.status_code == 200
    schema = json.loads(response.content)
    assert schema["openapi"].startswith("3.")
    assert schema["info"]["title"] == "Mash host API"
    paths = schema["paths"]
    for expected in [
        "/api/v1/health",
        "/api/v1/agent",
        "/api/v1/agent/{agent_id}",
        "/api/v1/agent/{agent_id}/request",
        "/api/v1/agent/{agent_id}/request/{request_id}/status",
        "/api/v1/agent/{agent_id}/request/{request_id}/resume",
        "/api/v1/agent/{agent_id}/request/{request_id}/cancel",
        "/api/v1/agent/{agent_id}/request/{request_id}/interaction",
        "/api/v1/agent/{agent_id}/sessions",
        "/api/v1/agent/{agent_id}/sessions/{session_id}/history",
        "/api/v1/agent/{agent_id}/sessions/{session_id}/signals",
        "/api/v1/agent/{agent_id}/session/{session_id}/trace/{trace_id}/reasoning",
        "/api/v1/workflow",
        "/api/v1/telemetry/events",
        "/api/v1/telemetry/memory/search",
        # the plural REST aliases are documented too
        "/api/v1/agents/{agent_id}/requests",
        "/api/v1/agents/{agent_id}/requests/{request_id}/status",
        "/api/v1/workflows",
    ]:
        assert expected in paths, expected
    assert "post" in paths["/api/v1/agent/{agent_id}/request"]
    assert "get" in paths["/api/v1/agent/{agent_id}/request/{request_id}/status"]


def test_it_serves_the_schema_as_json_on_accept(api):
    response = api.get("/api/v1/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/json")
    assert json.loads(response.content)["openapi"].startswith("3.")


@pytest.mark.parametrize("path,marker", [("/api/v1/docs/", b"swagger"), ("/api/v1/redoc/", b"redoc")])
def test_it_renders_the_api_docs(api, path, marker):
    response = api.get(path)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    assert marker in response.content.lower()
    assert b"/api/v1/schema/" in response.content


def test_it_serves_the_browsable_api_to_a_logged_in_staff_browser(api, keyed, make_user):
    staff = make_user("admin", is_staff=True)
    api.force_login(staff)
    response = api.get("/api/v1/health", HTTP_ACCEPT="text/html")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    assert b"<html" in response.content.lower() and b"mash-api" in response.content
    # The same session asking for JSON gets JSON.
    assert data(api.get("/api/v1/health", HTTP_ACCEPT="application/json"))["service"] == "mash-api"


def test_a_submit_says_when_no_worker_has_been_seen(api, monkeypatch):
    from django.utils import timezone

    from mash_runtime import read_services
    from mash_runtime.models import Worker

    monkeypatch.setattr(read_services, "no_worker_warning", REAL_NO_WORKER_WARNING)  # not the harness's "a worker runs"
    read_services.forget_worker_warning()
    body = data(post_json(api, "/api/v1/agent/primary/request", {"message": "hi"}), 202)
    assert body["warning"].startswith("no worker has been seen yet")
    now = timezone.now()
    Worker.objects.create(name="h1:1:aa", hostname="h1", pid=1, slots=10, in_use=0, started_at=now, last_seen_at=now)
    read_services.forget_worker_warning()
    assert "warning" not in data(post_json(api, "/api/v1/agent/primary/request", {"message": "hi"}), 202)
    read_services.forget_worker_warning()
