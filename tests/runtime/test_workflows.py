import pytest
from django.db import IntegrityError
from django.utils import timezone

from mash_runtime.errors import Conflict, NotFound, ServiceError
from mash_runtime.host import get_host, set_host
from mash_runtime.host_sync import sync_host
from mash_runtime.models import Interaction, PublishedSkill, Request, WorkflowDefinition, WorkflowRun, WorkflowRunEvent
from mash_runtime.services import answer_interaction
from mash_runtime.workflows.engine import (
    cancel_run,
    describe_run,
    get_run,
    list_runs,
    list_workflows,
    resume_run,
    start_run,
    task_session_id,
)
from mash_runtime.workflows.publishing import (
    add_published_skills,
    publish_skill,
    publish_workflow,
    remove_skill,
    remove_workflow,
)


@pytest.fixture
def wf(engine, settings):
    settings.MASH_HOST_APP = "tests.apps.workflow_host:build_host"
    set_host(None)
    sync_host(get_host())
    return engine


def run_events(run_id):
    return list(WorkflowRunEvent.objects.filter(run_id=run_id).order_by("seq"))


def workflow_events(run_id):
    return [e.event_type for e in run_events(run_id) if e.event_type.startswith("workflow.")]


def test_it_lists_code_defined_workflows(wf):
    listed = {w["workflow_id"]: w for w in list_workflows()["workflows"]}
    assert listed["count-and-report"] == {
        "workflow_id": "count-and-report",
        "tasks": [{"task_id": "count", "agent_id": "counter"}, {"task_id": "report", "agent_id": "reporter"}],
        "metadata": {"purpose": "tests"},
    }
    # Task agents given as specs are workflow-only: hidden from listings.
    assert {a.agent_id for a in get_host().listed_agents()} == {"primary"}


def test_a_later_task_reads_earlier_state_and_the_next_run_reads_the_last(wf):
    first = start_run("count-and-report", input={"step": 2})
    assert first["status"] == "running" and first["run_id"].startswith("count-and-report:")
    wf.drain()
    run = get_run("count-and-report", first["run_id"])
    assert run.status == "completed"
    assert run.output["task_states"] == {"count": {"count": 2}, "report": {"report": "count is 2"}}
    assert set(run.output["task_requests"]) == {"count", "report"}
    assert run.output["workflow_id"] == "count-and-report" and run.output["run_id"] == run.pk
    task_request = Request.objects.get(pk=run.output["task_requests"]["count"])
    assert task_request.session.session_id == task_session_id("count-and-report", "count", run.pk)
    second = start_run("count-and-report", input={"step": 3})
    wf.drain()
    assert get_run("count-and-report", second["run_id"]).output["task_states"]["count"] == {"count": 5}
    assert workflow_events(run.pk) == [
        "workflow.task.started", "workflow.task.completed", "workflow.task.started", "workflow.task.completed",
        "workflow.completed",
    ]
    events = run_events(run.pk)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    mirrored = [e for e in events if e.event_type == "request.completed"]
    assert len(mirrored) == 2 and all({"workflow_id", "run_id", "task_id", "task_agent_id"} <= set(e.payload)
                                      for e in mirrored)


def test_it_refuses_a_second_active_run_with_the_same_dedup_key(wf):
    first = start_run("count-and-report", dedup_key="nightly")
    with pytest.raises(Conflict) as info:
        start_run("count-and-report", dedup_key="nightly")
    assert info.value.code == "WORKFLOW_DUPLICATE_RUN" and info.value.details == {"run_id": first["run_id"]}
    wf.drain()
    # Once the first run finished, the key is free again.
    assert start_run("count-and-report", dedup_key="nightly")["status"] == "running"


def test_it_reports_unknown_workflows_and_runs(wf):
    with pytest.raises(NotFound) as info:
        start_run("nope")
    assert info.value.code == "WORKFLOW_NOT_FOUND"
    with pytest.raises(NotFound):
        get_run("count-and-report", "count-and-report:missing")
    with pytest.raises(ServiceError):
        start_run("count-and-report", input=["not", "an", "object"])


def test_invalid_task_output_fails_the_run_with_one_final_event(wf):
    run_id = start_run("broken")["run_id"]
    wf.drain()
    run = get_run("broken", run_id)
    assert run.status == "failed" and "INVALID" in run.error.upper() or "structured" in run.error
    assert workflow_events(run_id) == ["workflow.task.started", "workflow.task.error", "workflow.error"]
    final = run_events(run_id)[-1]
    assert final.event_type == "workflow.error" and final.payload["status"] == "failed"


def test_an_approval_inside_a_task_is_answered_through_the_task_agents_request(wf, tmp_path):
    target = tmp_path / "gated.txt"
    run_id = start_run("gated", input={"path": str(target)})["run_id"]
    wf.drain()
    task_request = Request.objects.get(workflow_run_id=run_id)
    assert task_request.agent.agent_id == "gated" and task_request.status == "awaiting_input"
    created = [e for e in run_events(run_id) if e.event_type == "request.interaction.create"]
    assert len(created) == 1 and created[0].payload["task_agent_id"] == "gated"
    itr = Interaction.objects.get(request=task_request)
    answer_interaction(task_request.pk, itr.interaction_id, "approve", agent_id="gated")
    wf.drain()
    assert get_run("gated", run_id).status == "completed" and target.read_text() == "gated"


def test_cancel_mid_run_cancels_the_task_and_ends_the_stream(wf, tmp_path):
    run_id = start_run("gated", input={"path": str(tmp_path / "never")})["run_id"]
    wf.drain()
    assert cancel_run("gated", run_id)["status"] == "cancelled"
    wf.drain()
    assert Request.objects.get(workflow_run_id=run_id).status == "cancelled"
    assert workflow_events(run_id)[-1] == "workflow.error"
    assert workflow_events(run_id).count("workflow.error") == 1
    assert cancel_run("gated", run_id)["status"] == "cancelled"


def test_a_failed_run_resumes_from_its_failed_task(wf, tmp_path):
    run_id = start_run("gated", input={"path": str(tmp_path / "f.txt")})["run_id"]
    wf.drain()
    cancel_run("gated", run_id)
    wf.drain()
    resumed = resume_run("gated", run_id)
    assert resumed["status"] == "resumed" and resumed["previous_status"] == "cancelled"
    wf.drain()
    req = Request.objects.get(workflow_run_id=run_id)
    answer_interaction(req.pk, Interaction.objects.filter(request=req, status="pending").get().interaction_id, "approve")
    wf.drain()
    run = get_run("gated", run_id)
    assert run.status == "completed"
    assert workflow_events(run_id)[-1] == "workflow.completed"


def test_it_lists_runs_of_every_status_with_filters_and_pages(wf, tmp_path):
    done = start_run("count-and-report")["run_id"]
    wf.drain()
    waiting = start_run("gated", input={"path": str(tmp_path / "x")})["run_id"]
    wf.drain()
    assert [r["run_id"] for r in list_runs("count-and-report")["runs"]] == [done]
    runs = list_runs("gated")["runs"]
    assert [r["status"] for r in runs] == ["running"] and "output" not in runs[0]
    for _ in range(3):
        start_run("count-and-report")
    wf.drain()
    page = list_runs("count-and-report", limit=2, offset=1, descending=True)["runs"]
    assert len(page) == 2
    assert list_runs("count-and-report", statuses=["failed"])["runs"] == []
    detail = describe_run(get_run("count-and-report", done))
    assert detail["status"] == "completed" and detail["output"]["task_states"]["count"] == {"count": 1}
    assert waiting


def test_published_skills_and_workflows_are_stored_and_removable(wf):
    with pytest.raises(ServiceError) as info:
        publish_skill("primary", {"type": "inline", "name": "empty"})
    assert info.value.code == "INVALID_AGENT_SKILL"
    assert publish_skill("primary", {"type": "inline", "name": "greet", "description": "Say hi",
                                     "content": "Always greet warmly."}) == {"agent_id": "primary", "skill_name": "greet"}
    publish_skill("primary", {"name": "greet", "content": "Greet twice."})  # idempotent by name
    assert PublishedSkill.objects.count() == 1
    from mash_core.skills import SkillRegistry

    assert add_published_skills("primary", SkillRegistry()).get("greet").content == "Greet twice."
    with pytest.raises(ServiceError) as info:
        publish_workflow("primary", {"workflow_id": "x", "tasks": [{"task_id": "t", "agent_id": "ghost"}]})
    assert info.value.code == "INVALID_AGENT_WORKFLOW"
    with pytest.raises(ServiceError):
        publish_workflow("primary", {"workflow_id": "count-and-report",
                                     "tasks": [{"task_id": "t", "agent_id": "counter"}]})
    published = {"workflow_id": "recount", "tasks": [{"task_id": "count", "agent_id": "counter",
                                                      "structured_output": {"type": "object", "properties": {
                                                          "count": {"type": "integer"}}, "required": ["count"]}}],
                 "task_message": {"skill_name": "greet"}}
    assert publish_workflow("primary", published) == {"agent_id": "primary", "workflow_id": "recount"}
    run_id = start_run("recount", input={"step": 4})["run_id"]
    wf.drain()
    run = get_run("recount", run_id)
    assert run.status == "completed" and run.output["task_states"]["count"] == {"count": 4}
    message = Request.objects.get(workflow_run_id=run_id).message
    assert "Use the skill 'greet'" in message
    # A restart re-syncs code workflows and keeps published ones.
    set_host(None)
    sync_host(get_host())
    assert "recount" in [w["workflow_id"] for w in list_workflows()["workflows"]]
    remove_workflow("primary", "recount")
    assert "recount" not in [w["workflow_id"] for w in list_workflows()["workflows"]]
    assert get_run("recount", run_id) is not None  # history stays
    remove_skill("primary", "greet")
    with pytest.raises(NotFound):
        remove_skill("primary", "greet")
    assert WorkflowDefinition.objects.get(workflow_id="recount").active is False


def test_the_database_keeps_one_active_run_per_dedup_key(wf):
    from mash_runtime.models import WorkflowDefinition

    definition = WorkflowDefinition.objects.get(workflow_id="broken")
    WorkflowRun.objects.create(run_id="broken:a", workflow=definition, dedup_key="k", started_at=timezone.now())
    with pytest.raises(IntegrityError):
        WorkflowRun.objects.create(run_id="broken:b", workflow=definition, dedup_key="k", started_at=timezone.now())
