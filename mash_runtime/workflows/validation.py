"""A workflow's task list as stored (`WorkflowDefinition.tasks`), checked against the host.

The publish API and the admin's form (`WorkflowDefinition.clean`) both take task lists
through `validate_tasks`; it reads no rows, so the model can call it.
"""

from __future__ import annotations

from typing import Any

from mash_core.errors import ConfigError
from mash_core.structured import normalize_schema
from mash_runtime.errors import ServiceError
from mash_runtime.host import get_host

MAX_TASKS = 100


def validate_tasks(tasks: Any, *, code: str) -> list[dict[str, Any]]:
    host = get_host()
    if not isinstance(tasks, list) or not tasks:
        raise ServiceError("tasks must be a non-empty list", code=code)
    if len(tasks) > MAX_TASKS:
        raise ServiceError(f"a workflow has at most {MAX_TASKS} tasks", code=code)
    seen: set[str] = set()
    out = []
    for task in tasks:
        if not isinstance(task, dict) or not isinstance(task.get("task_id"), str) or not task["task_id"].strip():
            raise ServiceError("each task needs a task_id", code=code)
        task_id = task["task_id"].strip()
        if len(task_id) > 64:
            raise ServiceError("a task_id is at most 64 characters", code=code)
        if task_id in seen:
            raise ServiceError(f"two tasks are named '{task_id}'", code=code)
        seen.add(task_id)
        agent_id = str(task.get("agent_id") or "").strip()
        if host.get(agent_id) is None:
            raise ServiceError(f"task '{task_id}' names unknown agent '{agent_id}'", code=code)
        schema = task.get("structured_output")
        if schema is not None:
            try:
                schema = normalize_schema(schema)
            except ConfigError as exc:
                raise ServiceError(f"task '{task_id}': {exc}", code=code) from None
        out.append({"task_id": task_id, "agent_id": agent_id, "structured_output": schema})
    return out
