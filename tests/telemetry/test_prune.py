"""`mash prune`: counts on a dry run, deletes exactly the old finished history on a real one,
and never touches a request that is queued, running or waiting."""

from __future__ import annotations

import io
import json
from datetime import timedelta

import pytest
from django.core.management import call_command, load_command_class
from django.core.management.base import CommandError
from django.utils import timezone

from mash_runtime import models as runtime_models
from mash_runtime.models import Interaction, MemoryTurn, Request, RuntimeEvent, StepCheckpoint
from mash_telemetry.models import ApiRequestLog
from tests.runtime.conftest import engine  # noqa: F401  (the in-process engine fixture)

OLD = timedelta(days=40)


def tool(name, **arguments):
    return {"name": name, "arguments": arguments}


def age(request_ids, by=OLD) -> None:
    """Move requests into the past, as if they had run `by` ago."""
    past = timezone.now() - by
    Request.objects.filter(pk__in=request_ids).update(created_at=past, started_at=past, finished_at=past)
    Request.objects.filter(pk__in=request_ids).exclude(status__in=Request.TERMINAL).update(finished_at=None)


def family(rid) -> list:
    return [rid, *map(str, Request.objects.filter(parent_id=rid).values_list("pk", flat=True))]


def records(ids) -> dict[str, int]:
    return {
        "requests": Request.objects.filter(pk__in=ids).count(),
        "events": RuntimeEvent.objects.filter(request_id__in=ids).count(),
        "checkpoints": StepCheckpoint.objects.filter(request_id__in=ids).count(),
        "interactions": Interaction.objects.filter(request_id__in=ids).count(),
    }


def prune(*args) -> str:
    out = io.StringIO()
    call_command("prune", *args, stdout=out)
    return out.getvalue()


def reported(output: str, name: str) -> int:
    for line in output.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[1] == name:
            return int(parts[0].replace(",", ""))
    raise AssertionError(f"{name!r} not in {output!r}")


@pytest.fixture
def history(engine, tmp_path):  # noqa: F811
    child = {"script": [{"tool_calls": [tool("AskUser", question="Which?")]}, "helper done"]}
    delegated = engine.submit({"script": [
        {"tool_calls": [tool("append_line", path=str(tmp_path / "o"), line="x")]},
        {"tool_calls": [tool("InvokeSubagent", agent_id="helper", prompt=json.dumps(child))]},
        "done",
    ]}, session_id="old")
    engine.drain()
    from mash_runtime.services import answer_interaction

    answer_interaction(delegated, Interaction.objects.get(status="pending").pk, "that one")
    engine.drain()
    failed = engine.submit({"llm_error": {"marker": str(tmp_path / "m"), "times": 9, "transient": False},
                            "script": ["x"]}, session_id="old")
    recent = engine.submit({"script": ["recent"]}, session_id="new")
    engine.drain()
    parked = engine.submit({"script": [{"tool_calls": [tool("write_file", path=str(tmp_path / "f"), text="x")]},
                                       "ok"]}, session_id="parked")
    engine.drain()
    running = engine.submit({"script": ["never runs"]}, session_id="running")
    engine.queue.clear()
    Request.objects.filter(pk=running).update(status=Request.Status.RUNNING, lease_owner="elsewhere:1:x",
                                              lease_expires_at=timezone.now() + timedelta(minutes=5))
    # A finished parent whose child still runs: the family must wait for the child.
    busy_parent = engine.submit({"script": ["parent"]}, session_id="busy")
    engine.drain()
    busy_child = engine.submit({"script": ["child"]}, agent_id="helper", session_id="busy-child")
    engine.queue.clear()
    Request.objects.filter(pk=busy_child).update(parent_id=busy_parent, status=Request.Status.RUNNING)

    ids = {"delegated": delegated, "failed": failed, "recent": recent, "parked": parked, "running": running,
           "busy_parent": busy_parent, "busy_child": busy_child}
    age([*family(delegated), failed, parked, running, busy_parent, busy_child])
    old_log = [ApiRequestLog.objects.create(method="GET", path=f"/api/v1/old{i}", status_code=200, duration_ms=1,
                                            created_at=timezone.now() - OLD) for i in range(3)]
    ApiRequestLog.objects.create(method="GET", path="/api/v1/new", status_code=200, duration_ms=1)
    ids["old_log"] = [row.pk for row in old_log]
    assert Request.objects.get(pk=delegated).status == "completed"
    assert Request.objects.get(pk=failed).status == "failed"
    return ids


def doomed(history) -> list:
    return [*family(history["delegated"]), history["failed"]]


def kept(history) -> list:
    return [history[k] for k in ("recent", "parked", "running", "busy_parent", "busy_child")]


def test_a_dry_run_counts_and_deletes_nothing(history):
    before_all = records(list(Request.objects.values_list("pk", flat=True)))
    expected = records(doomed(history))
    output = prune("--older-than", "30d", "--dry-run")
    assert "Would delete" in output and "Dry run: nothing was deleted." in output
    assert reported(output, "requests") == 2
    assert reported(output, "subagent requests") == 1
    assert reported(output, "events") == expected["events"] > 0
    assert reported(output, "checkpoints") == expected["checkpoints"] > 0
    assert reported(output, "interactions") == expected["interactions"] == 1
    assert reported(output, "API log rows") == 3
    assert "Left alone: 3 unfinished request(s)" in output
    assert records(list(Request.objects.values_list("pk", flat=True))) == before_all
    assert ApiRequestLog.objects.count() == 4


@pytest.mark.parametrize("batch", ["500", "1"])
def test_it_deletes_old_finished_requests_with_their_records_and_nothing_else(history, batch):
    gone = doomed(history)
    expected = records(gone)
    survivors = records(kept(history))
    turns = set(MemoryTurn.objects.filter(request_id__in=gone).values_list("pk", flat=True))
    assert turns
    output = prune("--older-than", "30d", "--batch-size", batch)
    assert "Deleted" in output
    assert reported(output, "events") == expected["events"]
    assert records(gone) == {"requests": 0, "events": 0, "checkpoints": 0, "interactions": 0}
    assert records(kept(history)) == survivors
    assert Request.objects.get(pk=history["running"]).status == "running"
    # Memory stays; it only loses the link to the deleted request.
    assert set(MemoryTurn.objects.filter(pk__in=turns, request__isnull=True).values_list("pk", flat=True)) == turns
    assert list(ApiRequestLog.objects.values_list("path", flat=True)) == ["/api/v1/new"]
    # A second run finds nothing more.
    again = prune("--older-than", "30d")
    assert reported(again, "requests") == 0 and reported(again, "events") == 0


def test_the_age_decides(history):
    output = prune("--older-than", "41d", "--dry-run")
    assert reported(output, "requests") == 0 and reported(output, "API log rows") == 0
    age([history["recent"]], timedelta(hours=1))
    output = prune("--older-than", "30m", "--dry-run")
    assert reported(output, "requests") == 3  # now the recent one too; the busy parent still waits
    assert reported(output, "API log rows") == 3


def test_keep_api_log_leaves_the_log_alone(history):
    prune("--older-than", "30d", "--keep-api-log")
    assert ApiRequestLog.objects.count() == 4
    assert not Request.objects.filter(pk=history["failed"]).exists()


def test_a_request_resumed_after_selection_is_left_alone(history):
    from mash_runtime.management.commands.prune import Command

    failed = history["failed"]
    Request.objects.filter(pk=failed).update(status=Request.Status.ACCEPTED)  # resumed meanwhile
    part = Command().request_batch([failed], dry=False)
    assert part.requests == 0
    assert Request.objects.filter(pk=failed).exists()


@pytest.mark.skipif(not hasattr(runtime_models, "WorkflowRun"), reason="no workflow models yet")
def test_it_prunes_old_finished_workflow_runs(history):
    WorkflowDefinition, WorkflowRun = runtime_models.WorkflowDefinition, runtime_models.WorkflowRun
    definition = WorkflowDefinition.objects.create(workflow_id="wf", source="code", tasks=[])
    past = timezone.now() - OLD
    old = WorkflowRun.objects.create(run_id="old", workflow=definition, status="completed", finished_at=past)
    active = WorkflowRun.objects.create(run_id="active", workflow=definition, status="running")
    new = WorkflowRun.objects.create(run_id="new", workflow=definition, status="failed", finished_at=timezone.now())
    if hasattr(runtime_models, "WorkflowRunEvent"):
        runtime_models.WorkflowRunEvent.objects.create(run=old, seq=1, event_type="workflow.completed")
    # A finished run whose task request is still parked stays.
    waiting = WorkflowRun.objects.create(run_id="waiting", workflow=definition, status="cancelled", finished_at=past)
    Request.objects.filter(pk=history["parked"]).update(workflow_run=waiting)
    output = prune("--older-than", "30d", "--dry-run")
    assert reported(output, "workflow runs") == 1
    prune("--older-than", "30d")
    assert set(WorkflowRun.objects.values_list("run_id", flat=True)) == {active.run_id, new.run_id, waiting.run_id}


def test_bad_arguments_are_one_line_errors(history):
    for args, message in (
        (["--older-than", "soon"], "--older-than wants an age like 30d"),
        (["--older-than", "0d"], "more than zero"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
    ):
        with pytest.raises(CommandError) as info:
            prune(*args)
        assert message in str(info.value) and "\n" not in str(info.value)


def test_help_explains_every_flag():
    parser = load_command_class("mash_runtime", "prune").create_parser("mash", "prune")
    text = parser.format_help()
    for flag, words in (("--older-than", "30d"), ("--dry-run", "delete nothing"), ("--batch-size", "per transaction"),
                        ("--keep-api-log", "API request log")):
        assert flag in text and words in " ".join(text.split()), flag
    assert "never touched" in " ".join(text.split())
