"""The host's agents and code-defined workflows written as rows, and the Agent row of one agent.

`HostBuilder.build()` only composes specs; the rows that name its agents (`Agent`) and
its code-defined workflows (`WorkflowDefinition`) are written here, so a host can be
built before Django is set up and nothing below the services writes rows on its behalf.
"""

from __future__ import annotations

import copy
import threading

from django.db import IntegrityError

from mash_runtime.errors import NotFound
from mash_runtime.host import AgentHost, get_host
from mash_runtime.db import select_rows
from mash_runtime.models import Agent, WorkflowDefinition


def sync_host(host: AgentHost) -> None:
    """Make the Agent rows match this host; agents no longer defined stay, marked inactive.
    Then the same for its code-defined workflows (published ones are left alone)."""
    forget_agent_rows()
    for hosted in host.agents.values():
        Agent.objects.update_or_create(
            agent_id=hosted.agent_id,
            defaults={
                "role": hosted.role,
                "metadata": hosted.metadata.to_dict() if hosted.metadata else None,
                "model_name": hosted.model,
                "config": hosted.config.to_dict(),
                "active": True,
            },
        )
    Agent.objects.exclude(agent_id__in=list(host.agents)).update(active=False)
    for wf in host.workflows.values():
        tasks = [{"task_id": t.task_id, "agent_id": t.agent_id, "structured_output": t.structured_output}
                 for t in wf.tasks]
        WorkflowDefinition.objects.update_or_create(
            workflow_id=wf.workflow_id,
            defaults={"source": WorkflowDefinition.Source.CODE, "tasks": tasks, "metadata": wf.metadata,
                      "task_message": wf.task_message, "active": True, "agent": None},
        )
    WorkflowDefinition.objects.filter(source=WorkflowDefinition.Source.CODE).exclude(
        workflow_id__in=list(host.workflows)).update(active=False)


# The host whose rows this process has written; another host (`set_host`) is synced again.
_synced: AgentHost | None = None
_sync_lock = threading.Lock()


def ensure_synced() -> AgentHost:
    """The host, with its Agent and workflow rows synced once per process.

    `serve` syncs before it starts anything; this covers `runserver` + `qcluster` and tests.
    Two processes syncing at once may collide on a unique row: the loser simply retries.
    """
    global _synced
    host = get_host()
    if _synced is not host:
        # One thread syncs; the others (a burst of first requests) wait for it instead of
        # each writing every row again.
        with _sync_lock:
            if _synced is not host:
                try:
                    sync_host(host)
                except IntegrityError:
                    sync_host(host)
                _synced = host
    return host


# Agent rows as this process last read them, for the host it read them for: every submit
# needs its agent's row, and nothing but sync_host writes one (the admin shows them read-only,
# nothing deletes them), so a row read once stays right until this process syncs again.
_rows: dict[str, tuple[AgentHost, Agent]] = {}


def get_agent_row(agent_id: str, *, include_workflow: bool = True) -> Agent:
    """The Agent row of a hosted agent (synced again if the row does not match the host), or
    NotFound. A copy of the row this process read the first time: callers may change it."""
    host = ensure_synced()
    hosted = host.get(agent_id)
    if hosted is None or (hosted.role == "workflow" and not include_workflow):
        raise NotFound(f"Agent '{agent_id}' not found", code="AGENT_NOT_FOUND")
    known = _rows.get(agent_id)
    if known is not None and known[0] is host:
        return copy.copy(known[1])
    found = select_rows(Agent, {"agent_id": agent_id})
    agent = found[0] if found else None
    if agent is None or agent.role != hosted.role or not agent.active:
        sync_host(host)
        agent = Agent.objects.get(agent_id=agent_id)
    _rows[agent_id] = (host, agent)
    return copy.copy(agent)


def forget_agent_rows() -> None:
    """Read the rows again next time (after sync_host, or an insert that found one gone)."""
    _rows.clear()
