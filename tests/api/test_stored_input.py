"""Stored input never breaks a later read: what no column can store is refused on every
write path (API, h2a, admin, code), with a 4xx naming the value, and rows already stored
badly are still read."""

from __future__ import annotations

import json

import pytest
from django.db import connection

from mash_runtime.host import get_host, set_host
from mash_runtime.host_sync import sync_host
from mash_runtime.models import PublishedSkill, Request, RuntimeEvent, WorkflowDefinition
from mash_runtime.storable import StorableJSONField, UnstorableValue, check_storable, repaired
from tests.api.conftest import assert_error, data, post_json, script

SURROGATE = "\ud800"


@pytest.fixture
def wf(engine, settings):
    settings.MASH_HOST_APP = "tests.apps.workflow_host:build_host"
    set_host(None)
    sync_host(get_host())
    return engine


def raw_post(api, path, text: str):
    # json.dumps escapes a lone surrogate as "\ud800": the wire form an attacker sends.
    return api.post(path, data=text.encode(), content_type="application/json")


def workflow_body(**overrides):
    return {"workflow_id": "pub", "tasks": [{"task_id": "count", "agent_id": "counter"}], **overrides}


@pytest.mark.parametrize("body", [
    workflow_body(metadata={"note": SURROGATE}),
    workflow_body(tasks=[{"task_id": "c" + SURROGATE, "agent_id": "counter"}]),
    workflow_body(task_message={"skill_name": SURROGATE}),
    workflow_body(metadata={"x": "a\x00b"}),
])
def test_unstorable_strings_in_a_published_workflow_are_refused_and_reads_still_work(wf, api, body):
    assert_error(raw_post(api, "/api/v1/agent/primary/workflow", json.dumps(body)), 400, "INVALID_AGENT_WORKFLOW")
    assert not WorkflowDefinition.objects.filter(workflow_id="pub").exists()
    assert data(api.get("/api/v1/workflow"))["workflows"]


def test_a_non_finite_number_in_workflow_metadata_is_refused_not_an_integrity_error(wf, api):
    text = '{"workflow_id": "pub", "tasks": [{"task_id": "count", "agent_id": "counter"}], "metadata": {"n": 1e400}}'
    error = assert_error(raw_post(api, "/api/v1/agent/primary/workflow", text), 400, "INVALID_AGENT_WORKFLOW")
    assert "finite" in error["message"]
    assert not WorkflowDefinition.objects.filter(workflow_id="pub").exists()


def test_bounded_sizes_for_workflows_runs_and_metadata(wf, api):
    many = [{"task_id": f"t{i}", "agent_id": "counter"} for i in range(101)]
    assert_error(post_json(api, "/api/v1/agent/primary/workflow", workflow_body(tasks=many)), 400,
                 "INVALID_AGENT_WORKFLOW")
    big = {"blob": "x" * (65 * 1024)}
    assert_error(post_json(api, "/api/v1/agent/primary/workflow", workflow_body(metadata=big)), 400,
                 "INVALID_AGENT_WORKFLOW")
    assert_error(post_json(api, "/api/v1/workflow/count-and-report/run", {"dedup_key": "k" * 201}), 400,
                 "INVALID_REQUEST")
    assert_error(post_json(api, "/api/v1/agent/primary/request", {"message": "hi", "metadata": big}), 422,
                 "VALIDATION_ERROR")
    assert not Request.objects.exists()


def test_a_lone_surrogate_in_a_skills_fields_is_refused(wf, api):
    for field in ("name", "description", "content"):
        body = {"name": "s", "content": "Do it.", "description": "d", field: "s" + SURROGATE}
        assert_error(raw_post(api, "/api/v1/agent/primary/skill", json.dumps(body)), 400, "INVALID_AGENT_SKILL")
    assert not PublishedSkill.objects.exists()


def test_submits_with_unstorable_metadata_are_refused_on_both_bindings(wf, api):
    for path in ("/api/v1/agent/primary/request", "/h2a/agent/primary/request"):
        response = raw_post(api, path, json.dumps({"message": "hi", "metadata": {"k": SURROGATE}}))
        assert response.status_code in (400, 422), response.content
    assert not Request.objects.exists()


def test_the_admin_form_refuses_a_task_list_the_publish_api_would_refuse(wf, admin_client):
    url = "/admin/mash_runtime/workflowdefinition/add/"
    for tasks in ('[{"task_id": "x"}]', '"not a list"', json.dumps([{"task_id": "y", "agent_id": "counter",
                                                                       "note": SURROGATE}])):
        response = admin_client.post(url, {"workflow_id": "from-admin", "source": "published", "tasks": tasks,
                                           "metadata": "null", "task_message": "null", "active": "on"})
        assert response.status_code == 200, response.status_code  # the form again, with its error
        assert response.context["adminform"].form.errors, tasks
    assert not WorkflowDefinition.objects.filter(workflow_id="from-admin").exists()


def test_rows_stored_before_these_checks_still_read(wf, api):
    data(post_json(api, "/api/v1/agent/primary/workflow", workflow_body()))
    # A task list the admin saved before it was checked: the list answers, without the bad task.
    WorkflowDefinition.objects.filter(workflow_id="pub").update(tasks=[{"task_id": "x"}, "junk"])
    listed = {w["workflow_id"]: w for w in data(api.get("/api/v1/workflow"))["workflows"]}
    assert listed["pub"]["tasks"] == [{"task_id": "x", "agent_id": None}]
    if connection.vendor == "sqlite":
        # SQLite keeps an escaped lone surrogate that PostgreSQL would have refused.
        with connection.cursor() as cursor:
            cursor.execute(f"UPDATE {WorkflowDefinition._meta.db_table} SET metadata = %s WHERE workflow_id = %s",
                           ['{"note": "\\ud800"}', "pub"])
        listed = {w["workflow_id"]: w for w in data(api.get("/api/v1/workflow"))["workflows"]}
        assert listed["pub"]["metadata"] == {"note": "\ufffd"}


def test_what_a_model_or_tool_produced_is_repaired_not_refused(wf, api):
    rid = data(post_json(api, "/api/v1/agent/primary/request", {"message": script("ok")}), 202)["request_id"]
    wf.drain()
    req = Request.objects.get(pk=rid)
    event = RuntimeEvent.objects.filter(request=req).first()
    event.payload = {"output": "binary\x00junk" + SURROGATE, "n": float("nan")}
    event.save(update_fields=["payload"])
    event.refresh_from_db()
    assert event.payload == {"output": "binary\ufffdjunk\ufffd", "n": None}
    # A column holding client or code input refuses instead, naming the field.
    req.metadata = {"k": "\x00"}
    with pytest.raises(UnstorableValue, match="metadata"):
        req.save(update_fields=["metadata"])


def test_the_check_names_the_bad_value():
    with pytest.raises(UnstorableValue, match=r"body\.a\[1\]\.b: must not contain NUL"):
        check_storable({"a": [1, {"b": "x\x00"}]}, "body")
    deep: list = []
    for _ in range(70):
        deep = [deep]
    with pytest.raises(UnstorableValue, match="nested deeper"):
        check_storable(deep)
    assert repaired({"k\x00": [float("inf")]}) == {"k\ufffd": [None]}
    # Stored exactly as a plain JSONField: no migration.
    assert StorableJSONField(untrusted=True).deconstruct()[1] == "django.db.models.JSONField"


def test_deep_json_and_huge_bodies_get_envelopes_not_500s(wf, api, settings):
    deep = "[" * 100_000 + "]" * 100_000
    for path, code in (("/api/v1/agent/primary/request", "INVALID_JSON"), ("/h2a/agent/primary/request", "INVALID_JSON")):
        response = raw_post(api, path, deep)
        assert response.status_code == 400 and response.json()["error"]["code"] == code, response.content[:300]
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    body = json.dumps({"message": "x" * 2000})
    for path in ("/api/v1/agent/primary/request", "/h2a/agent/primary/request"):
        response = raw_post(api, path, body)
        assert response.status_code == 413, (path, response.status_code, response.content[:300])
        assert response.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert not Request.objects.exists()
