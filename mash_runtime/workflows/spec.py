"""Workflow definitions: an ordered list of tasks, each one request to an agent."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mash_core.config import validate_agent_id
from mash_core.errors import ConfigError
from mash_core.structured import normalize_schema


@dataclass
class TaskSpec:
    task_id: str
    agent_spec: Any = None  # an AgentSpec: becomes a workflow-only agent of the host
    agent_id: str | None = None
    structured_output: Any = None

    def __post_init__(self) -> None:
        validate_agent_id(self.task_id, "task_id")
        if (self.agent_spec is None) == (self.agent_id is None):
            raise ConfigError(f"task {self.task_id!r} needs exactly one of agent_spec or agent_id")
        if self.agent_spec is not None:
            self.agent_id = self.agent_spec.get_agent_id()
        validate_agent_id(self.agent_id, f"task {self.task_id!r} agent_id")
        if self.structured_output is not None:
            self.structured_output = normalize_schema(self.structured_output)


@dataclass
class WorkflowSpec:
    workflow_id: str
    tasks: list[TaskSpec]
    metadata: dict[str, Any] | None = None
    task_message: dict[str, Any] | None = None  # e.g. {"skill_name": "changelog"}
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_agent_id(self.workflow_id, "workflow_id")
        if not self.tasks:
            raise ConfigError(f"workflow {self.workflow_id!r} needs at least one task")
        seen: set[str] = set()
        for task in self.tasks:
            if not isinstance(task, TaskSpec):
                raise ConfigError(f"workflow {self.workflow_id!r}: tasks must be TaskSpec objects")
            if task.task_id in seen:
                raise ConfigError(f"workflow {self.workflow_id!r} has two tasks named {task.task_id!r}")
            seen.add(task.task_id)
