"""Skills and workflows published to an agent at run time; stored, so they survive restarts."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from django.db import transaction

from mash_core.errors import ConfigError
from mash_core.skills import SKILL_NAME_RE, Skill, SkillLocationError, SkillRegistry, resolve_skill_location
from mash_runtime.errors import NotFound, ServiceError
from mash_runtime.host_sync import get_agent_row
from mash_runtime.db import published_skill_rows
from mash_runtime.models import PublishedSkill, WorkflowDefinition
from mash_runtime.conf import conf
from mash_runtime.read_services import hosted_agent
from mash_runtime.storable import UnstorableValue, check_storable
from mash_runtime.workflows.validation import validate_tasks

SKILL_TYPES = ("inline", "filesystem", "directory")

logger = logging.getLogger("mash_runtime.workflows.publishing")


def skills_root() -> Path:
    return conf.skills_dir


def stored_location(location: str) -> str:
    """A published location as stored: relative to the skills directory it must resolve inside
    (symlinks followed), so the row keeps working if that directory moves."""
    root = skills_root()
    try:
        real = resolve_skill_location(location, root)
    except SkillLocationError as exc:
        raise ServiceError(f"{exc}; publish the skill as inline content, or put it under MASH_SKILLS_DIR",
                           code="INVALID_SKILL_LOCATION", details={"location": location}) from None
    stored = real.relative_to(os.path.realpath(root)).as_posix()
    limit = PublishedSkill._meta.get_field("location").max_length
    if len(stored) > limit:
        raise ServiceError(f"skill location must be at most {limit} characters inside MASH_SKILLS_DIR",
                           code="INVALID_SKILL_LOCATION", details={"location": location})
    return stored


MAX_METADATA_BYTES = 64 * 1024


def storable_body(body: dict[str, Any], *, code: str) -> None:
    """Refuse what no column stores (`mash_runtime.storable`) before anything is written."""
    try:
        check_storable(body, "body")
    except UnstorableValue as exc:
        raise ServiceError(str(exc), code=code) from None


def published_body(agent_id: str, body: Any, name_field: str, label: str, code: str) -> tuple[Any, str]:
    """What publishing a skill or a workflow checks first: the agent is hosted, the body a
    storable JSON object whose `name_field` is a name (`label` words the refusal, `code` is its code).
    Returns (the hosted agent, the stripped name)."""
    hosted = hosted_agent(agent_id, include_workflow=True)
    if not isinstance(body, dict):
        raise ServiceError("body must be a JSON object", code=code)
    storable_body(body, code=code)
    name = str(body.get(name_field) or "").strip()
    if not SKILL_NAME_RE.match(name):
        raise ServiceError(f"{label} must be 1-64 letters, digits, '.', '_' or '-'", code=code)
    return hosted, name


def publish_skill(agent_id: str, body: Any) -> dict[str, Any]:
    hosted, name = published_body(agent_id, body, "name", "skill name", "INVALID_AGENT_SKILL")
    if not isinstance(body.get("location") or "", str):
        raise ServiceError("location must be a string: a path inside MASH_SKILLS_DIR", code="INVALID_SKILL_LOCATION")
    location = str(body.get("location") or "").strip()
    content = body.get("content")
    content = content.strip() if isinstance(content, str) else ""
    if not location and not content:
        raise ServiceError("a skill needs a location or content", code="INVALID_AGENT_SKILL")
    kind = str(body.get("type") or ("inline" if content else "filesystem")).strip()
    if kind not in SKILL_TYPES:
        raise ServiceError(f"type must be one of {', '.join(SKILL_TYPES)}", code="INVALID_AGENT_SKILL")
    if location:
        location = stored_location(location)
    PublishedSkill.objects.update_or_create(
        agent=get_agent_row(hosted.agent_id, include_workflow=True),
        name=name,
        defaults={"type": kind, "description": str(body.get("description") or "").strip(),
                  "location": location, "content": content},
    )
    return {"agent_id": hosted.agent_id, "skill_name": name}


def remove_skill(agent_id: str, name: str) -> dict[str, Any]:
    hosted = hosted_agent(agent_id, include_workflow=True)
    deleted, _ = PublishedSkill.objects.filter(agent__agent_id=hosted.agent_id, name=name.strip()).delete()
    if not deleted:
        raise NotFound(f"Skill '{name}' is not published to agent '{agent_id}'", code="SKILL_NOT_FOUND")
    return {"agent_id": hosted.agent_id, "skill_name": name.strip(), "deleted": True}


def add_published_skills(agent_id: str, registry: SkillRegistry, rows: list | None = None) -> SkillRegistry:
    """Published skills join the spec's own; a published skill replaces a built-in of the same name.

    Every run builds its agent through here, and usually finds nothing (db.published_skill_rows;
    `rows`: that statement's rows, read along with the run's claim)."""
    if rows is None:
        rows = published_skill_rows(PublishedSkill, agent_id)
    root = skills_root()
    for name, description, content, location in rows:
        if location:
            # Rows stored before locations were checked (or the directory changed since).
            try:
                resolve_skill_location(location, root)
            except SkillLocationError as exc:
                logger.warning("published skill %r of agent %r is not offered to the model: %s", name, agent_id, exc)
                continue
        try:
            skill = Skill(name=name, description=description, content=content or None, location=location or None,
                          root=str(root))
        except ConfigError:
            continue
        registry.register(skill, replace=True)
    return registry


def publish_workflow(agent_id: str, body: Any) -> dict[str, Any]:
    hosted, workflow_id = published_body(agent_id, body, "workflow_id", "workflow_id", "INVALID_AGENT_WORKFLOW")
    tasks = validate_tasks(body.get("tasks"), code="INVALID_AGENT_WORKFLOW")
    metadata = body.get("metadata")
    task_message = body.get("task_message")
    if metadata is not None and not isinstance(metadata, dict):
        raise ServiceError("metadata must be an object", code="INVALID_AGENT_WORKFLOW")
    if metadata is not None and len(json.dumps(metadata, ensure_ascii=False).encode()) > MAX_METADATA_BYTES:
        raise ServiceError(f"metadata must be at most {MAX_METADATA_BYTES} bytes of JSON", code="INVALID_AGENT_WORKFLOW")
    if task_message is not None and not (isinstance(task_message, dict) and
                                         isinstance(task_message.get("skill_name", ""), str)):
        raise ServiceError("task_message must be an object like {\"skill_name\": \"...\"}", code="INVALID_AGENT_WORKFLOW")
    with transaction.atomic():
        existing = WorkflowDefinition.objects.select_for_update().filter(workflow_id=workflow_id).first()
        if existing is not None and existing.source == WorkflowDefinition.Source.CODE and existing.active:
            raise ServiceError(f"workflow '{workflow_id}' is defined in the host app's code and cannot be replaced",
                               code="INVALID_AGENT_WORKFLOW")
        WorkflowDefinition.objects.update_or_create(
            workflow_id=workflow_id,
            defaults={"source": WorkflowDefinition.Source.PUBLISHED, "agent": get_agent_row(hosted.agent_id,
                                                                                            include_workflow=True),
                      "tasks": tasks, "metadata": metadata, "task_message": task_message, "active": True},
        )
    return {"agent_id": hosted.agent_id, "workflow_id": workflow_id}


def remove_workflow(agent_id: str, workflow_id: str) -> dict[str, Any]:
    hosted = hosted_agent(agent_id, include_workflow=True)
    row = WorkflowDefinition.objects.filter(workflow_id=workflow_id.strip(), agent__agent_id=hosted.agent_id,
                                            source=WorkflowDefinition.Source.PUBLISHED, active=True).first()
    if row is None:
        raise NotFound(f"Workflow '{workflow_id}' is not published to agent '{agent_id}'", code="WORKFLOW_NOT_FOUND")
    # Runs keep their history; the definition only stops being runnable.
    WorkflowDefinition.objects.filter(pk=row.pk).update(active=False)
    return {"agent_id": hosted.agent_id, "workflow_id": row.workflow_id, "deleted": True}
