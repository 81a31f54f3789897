"""Workflow runs: tasks run in order, each as a normal durable request.

A run never executes anything itself. Starting a run submits its first task's request;
when a task's request ends, `advance_run` (a django-q2 task enqueued by the request's
end, and by the sweeper if that enqueue was lost) records the task's structured output
as its state and submits the next task, or finishes the run. So crash recovery,
interactions, cancel and streaming inside tasks are the request engine's, unchanged.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import uuid
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from mash_core.tools.base import object_schema
from mash_runtime import doorbell
from mash_runtime.errors import Conflict, NotFound, ServiceError, invalid
from mash_runtime.host_sync import ensure_synced, get_agent_row
from mash_runtime.models import (
    Request,
    WorkflowDefinition,
    WorkflowRun,
    WorkflowRunEvent,
    WorkflowTaskRun,
    WorkflowTaskState,
    epoch,
)
from mash_runtime.queue import enqueue_request_on_commit
from mash_runtime.services import cancel_request, create_request, resume_request
from mash_runtime.storable import UnstorableValue, check_storable

# Tasks without a declared schema still end in one validated object: their state.
DEFAULT_TASK_SCHEMA = object_schema({"result": {"type": "string", "description": "What this task produced."}}, required=["result"])


def task_session_id(workflow_id: str, task_id: str, run_id: str) -> str:
    return f"workflow:{workflow_id}:task:{task_id}:run:{run_id}"


def new_run_id(workflow_id: str) -> str:
    return f"{workflow_id}:{secrets.token_hex(8)}"


def get_definition(workflow_id: str) -> WorkflowDefinition:
    ensure_synced()
    wf = WorkflowDefinition.objects.filter(workflow_id=str(workflow_id).strip(), active=True).first()
    if wf is None:
        raise NotFound(f"Workflow '{workflow_id}' not found", code="WORKFLOW_NOT_FOUND")
    return wf


def get_run(workflow_id: str, run_id: str) -> WorkflowRun:
    run = WorkflowRun.objects.select_related("workflow").filter(
        pk=str(run_id).strip(), workflow__workflow_id=str(workflow_id).strip()
    ).first()
    if run is None:
        raise NotFound(f"Run '{run_id}' of workflow '{workflow_id}' not found", code="WORKFLOW_RUN_NOT_FOUND")
    return run


def run_event(run: WorkflowRun, event_type: str, payload: dict[str, Any], dedupe_key: str) -> None:
    if WorkflowRunEvent.append(run.pk, event_type, payload, dedupe_key):
        transaction.on_commit(lambda: doorbell.ring_run(run.pk))


def _run_keys(run: WorkflowRun) -> dict[str, str]:
    return {"workflow_id": run.workflow.workflow_id, "run_id": run.pk}


# -- starting and advancing -----------------------------------------------------------------


def task_message(wf: WorkflowDefinition, task: dict[str, Any], run: WorkflowRun, earlier: dict[str, Any]) -> str:
    previous = WorkflowTaskState.objects.filter(workflow=wf, task_id=task["task_id"]).values_list("state", flat=True).first()
    parts = [
        f"You are running task '{task['task_id']}' of workflow '{wf.workflow_id}' (run {run.pk}).",
        "Workflow input:\n" + json.dumps(run.input, indent=2, sort_keys=True),
        "This task's state from its previous run:\n" + (json.dumps(previous, indent=2, sort_keys=True)
                                                        if previous is not None else "(none: first run)"),
    ]
    if earlier:
        parts.append("Outputs of earlier tasks in this run:\n" + json.dumps(earlier, indent=2, sort_keys=True))
    skill = (wf.task_message or {}).get("skill_name")
    if skill:
        parts.append(f"Use the skill '{skill}' (load it with the Skill tool) to do this task.")
    parts.append("Finish with the structured output this task requires; it becomes the task's new state.")
    return "\n\n".join(parts)


def _start_task(run: WorkflowRun, index: int, earlier: dict[str, Any]) -> WorkflowTaskRun:
    wf = run.workflow
    task = wf.tasks[index]
    request_id = uuid.uuid4()
    # The task's start comes first in the run's stream, before its request's own frames.
    run_event(run, "workflow.task.started",
              {**_run_keys(run), "task_id": task["task_id"], "task_agent_id": task["agent_id"],
               "request_id": str(request_id)},
              f"task.{index}.started")
    req = create_request(
        get_agent_row(task["agent_id"]),
        task_message(wf, task, run, earlier),
        session_id=task_session_id(wf.workflow_id, task["task_id"], run.pk),
        structured_output=task.get("structured_output") or DEFAULT_TASK_SCHEMA,
        metadata={"workflow_id": wf.workflow_id, "run_id": run.pk, "task_id": task["task_id"]},
        workflow_run=run,
        request_id=request_id,
    )
    task_run = WorkflowTaskRun.objects.create(run=run, task_id=task["task_id"], index=index, agent_id=task["agent_id"],
                                              request=req)
    WorkflowRun.objects.filter(pk=run.pk).update(task_index=index)
    enqueue_request_on_commit(req.pk)
    return task_run


MAX_DEDUP_KEY = WorkflowRun._meta.get_field("dedup_key").max_length


def start_run(workflow_id: str, *, input: Any = None, dedup_key: Any = None) -> dict[str, Any]:
    wf = get_definition(workflow_id)
    if input is not None and not isinstance(input, dict):
        raise invalid(["body", "input"], "must be an object", "dict_type", message="input must be a JSON object")
    if dedup_key is not None:
        if not isinstance(dedup_key, str) or not dedup_key.strip():
            raise ServiceError("dedup_key must be a non-empty string", code="INVALID_REQUEST")
        dedup_key = dedup_key.strip()
        if len(dedup_key) > MAX_DEDUP_KEY:
            raise ServiceError(f"dedup_key must be at most {MAX_DEDUP_KEY} characters", code="INVALID_REQUEST")
    try:
        check_storable({"input": input, "dedup_key": dedup_key}, "body")
    except UnstorableValue as exc:
        raise ServiceError(str(exc), code="VALIDATION_ERROR", status=422) from None
    try:
        with transaction.atomic():
            run = WorkflowRun.objects.create(run_id=new_run_id(wf.workflow_id), workflow=wf, dedup_key=dedup_key,
                                             input=input or {}, started_at=timezone.now())
            _start_task(run, 0, {})
    except IntegrityError:
        active = WorkflowRun.objects.filter(workflow=wf, dedup_key=dedup_key, status=WorkflowRun.Status.RUNNING).first()
        if active is None:
            raise
        raise Conflict(f"Workflow '{wf.workflow_id}' already has an active run with dedup_key '{dedup_key}'",
                       code="WORKFLOW_DUPLICATE_RUN", details={"run_id": active.pk}) from None
    return {"run_id": run.pk, "workflow_id": wf.workflow_id, "status": run.status}


def advance_run_task(run_id: str) -> str:
    """django-q2 entry point."""
    from django.db import close_old_connections

    close_old_connections()
    try:
        return advance_run(run_id)
    finally:
        close_old_connections()


def advance_run(run_id: str) -> str:
    """Move a run past its current task if that task's request has ended. Idempotent."""
    with transaction.atomic():
        run = WorkflowRun.objects.select_for_update().select_related("workflow").filter(pk=run_id).first()
        if run is None or run.is_terminal:
            return "nothing to do"
        task_run = WorkflowTaskRun.objects.select_related("request").filter(run=run, index=run.task_index).first()
        if task_run is None or task_run.request is None or not task_run.request.is_terminal:
            return "task running"
        req = task_run.request
        keys = {**_run_keys(run), "task_id": task_run.task_id, "task_agent_id": task_run.agent_id}
        if req.status != Request.Status.COMPLETED:
            error = req.error or f"task request {req.status}"
            _finish_task(task_run, "failed", error=error)
            run_event(run, "workflow.task.error", {**keys, "error": error, "error_code": req.error_code},
                      f"task.{task_run.index}.error.{req.run_attempt}")
            status = WorkflowRun.Status.CANCELLED if req.status == Request.Status.CANCELLED else WorkflowRun.Status.FAILED
            _finish_run(run, status, error=f"task '{task_run.task_id}' {req.status}: {error}")
            return status
        state = (req.response or {}).get("structured_output")
        if not isinstance(state, dict):
            error = f"task '{task_run.task_id}' ended without structured output"
            _finish_task(task_run, "failed", error=error)
            run_event(run, "workflow.task.error", {**keys, "error": error, "error_code": "INVALID_STRUCTURED_OUTPUT"},
                      f"task.{task_run.index}.error")
            _finish_run(run, WorkflowRun.Status.FAILED, error=error)
            return "failed"
        _finish_task(task_run, "completed", output=state)
        WorkflowTaskState.objects.update_or_create(workflow=run.workflow, task_id=task_run.task_id,
                                                   defaults={"state": state, "run": run})
        run_event(run, "workflow.task.completed", {**keys, "output": state}, f"task.{task_run.index}.completed")
        next_index = task_run.index + 1
        if next_index < len(run.workflow.tasks):
            _start_task(run, next_index, task_states(run))
            return "next task"
        output = {
            "workflow_id": run.workflow.workflow_id,
            "run_id": run.pk,
            "completed_at": timezone.now().timestamp(),
            "task_requests": {t.task_id: str(t.request_id) for t in run.task_runs.order_by("index")},
            "task_states": task_states(run),
        }
        _finish_run(run, WorkflowRun.Status.COMPLETED, output=output)
        return "completed"


def task_states(run: WorkflowRun) -> dict[str, Any]:
    return {t.task_id: t.output for t in run.task_runs.filter(status="completed").order_by("index")}


def _finish_task(task_run: WorkflowTaskRun, status: str, *, output=None, error: str = "") -> None:
    WorkflowTaskRun.objects.filter(pk=task_run.pk).update(status=status, output=output, error=error,
                                                          finished_at=timezone.now())
    task_run.status, task_run.output = status, output


def _finish_run(run: WorkflowRun, status: str, *, output=None, error: str = "") -> None:
    WorkflowRun.objects.filter(pk=run.pk, status=WorkflowRun.Status.RUNNING).update(
        status=status, output=output, error=error, finished_at=timezone.now()
    )
    keys = _run_keys(run)
    if status == WorkflowRun.Status.COMPLETED:
        run_event(run, "workflow.completed", {**keys, "status": status, "output": output}, "final")
    else:
        run_event(run, "workflow.error", {**keys, "status": status, "error": error}, "final")


def stalled_runs() -> list[str]:
    """Running runs whose current task's request already ended (their advance was lost)."""
    return list(
        WorkflowTaskRun.objects.filter(
            run__status=WorkflowRun.Status.RUNNING, index=F("run__task_index"), request__status__in=Request.TERMINAL
        ).values_list("run_id", flat=True)
    )


# -- cancel, resume, reads ----------------------------------------------------------------


def cancel_run(workflow_id: str, run_id: str) -> dict[str, Any]:
    run = get_run(workflow_id, run_id)
    if run.is_terminal:
        return {"run_id": run.pk, "workflow_id": run.workflow.workflow_id, "status": run.status}
    task_run = WorkflowTaskRun.objects.filter(run=run, index=run.task_index).first()
    if task_run is not None and task_run.request_id:
        cancel_request(task_run.request_id)
    with transaction.atomic():
        _finish_run(run, WorkflowRun.Status.CANCELLED, error="Run cancelled")
    run.refresh_from_db()
    return {"run_id": run.pk, "workflow_id": run.workflow.workflow_id, "status": run.status}


def resume_run(workflow_id: str, run_id: str) -> dict[str, Any]:
    run = get_run(workflow_id, run_id)
    previous = run.status
    if run.status not in (WorkflowRun.Status.FAILED, WorkflowRun.Status.CANCELLED):
        return {"run_id": run.pk, "workflow_id": run.workflow.workflow_id, "status": run.status,
                "message": f"Run is {run.status}; nothing to resume"}
    task_run = WorkflowTaskRun.objects.filter(run=run, index=run.task_index).first()
    with transaction.atomic():
        try:
            WorkflowRun.objects.filter(pk=run.pk).update(status=WorkflowRun.Status.RUNNING, error="", finished_at=None)
        except IntegrityError:
            raise Conflict("another run with the same dedup_key is active", code="WORKFLOW_DUPLICATE_RUN") from None
        WorkflowRunEvent.objects.filter(run=run, dedupe_key="final").update(dedupe_key=f"final.{previous}.{run.last_seq}")
        if task_run is not None and task_run.request_id:
            WorkflowTaskRun.objects.filter(pk=task_run.pk).update(status="running", error="", finished_at=None)
            transaction.on_commit(lambda: resume_request(task_run.request_id))
    return {"run_id": run.pk, "workflow_id": run.workflow.workflow_id, "status": "resumed", "previous_status": previous}


def describe_run(run: WorkflowRun, *, with_output: bool = True) -> dict[str, Any]:
    tasks = list(run.task_runs.order_by("index").values("task_id", "status", "request_id", "error"))
    data = {
        "run_id": run.pk,
        "workflow_id": run.workflow.workflow_id,
        "dedup_key": run.dedup_key,
        "status": run.status,
        "created_at": epoch(run.created_at),
        "started_at": epoch(run.started_at),
        "finished_at": epoch(run.finished_at),
        "error": run.error or None,
        "summary": {"tasks_total": len(run.workflow.tasks), "tasks_completed": sum(t["status"] == "completed" for t in tasks),
                    "tasks": [{**t, "request_id": str(t["request_id"]) if t["request_id"] else None} for t in tasks]},
    }
    if with_output:
        data["output"] = run.output
    return data


RUNS_LIMIT = (50, 200)  # `?limit=` of the runs route: (default, maximum)


def list_runs(workflow_id: str, *, statuses: list[str] | None = None, start: dt.datetime | None = None,
              end: dt.datetime | None = None, limit: int = RUNS_LIMIT[0], offset: int = 0,
              descending: bool = True) -> dict[str, Any]:
    """Runs of a workflow, newest first unless `descending` is False; `statuses` are
    WorkflowRun.Status values, `start`/`end` bound their creation time."""
    wf = get_definition(workflow_id)
    qs = WorkflowRun.objects.select_related("workflow").filter(workflow=wf)
    if statuses:
        qs = qs.filter(status__in=statuses)
    if start is not None:
        qs = qs.filter(created_at__gte=start)
    if end is not None:
        qs = qs.filter(created_at__lte=end)
    qs = qs.order_by("-created_at" if descending else "created_at")
    return {"workflow_id": wf.workflow_id, "runs": [describe_run(r, with_output=False) for r in qs[offset: offset + limit]]}


# -- definitions ----------------------------------------------------------------------------


def list_workflows() -> dict[str, Any]:
    ensure_synced()
    return {"workflows": [wf.describe() for wf in WorkflowDefinition.objects.filter(active=True)]}
