"""Building a run: a fresh agent for the request, its history and its stored steps."""

from __future__ import annotations

from mash_core.agent import Agent
from mash_runtime.host import HostedAgent, get_host
from mash_runtime.memory.history import load_history
from mash_runtime.models import Request
from mash_runtime.run.checkpoints import load_checkpoints
from mash_runtime.run.state import Prepared
from mash_runtime.runtime_tools import register_runtime_tools
from mash_runtime.subagents import InvokeSubagentTool, routing_block
from mash_runtime.workflows.publishing import add_published_skills


def prepare_run(req: Request, hosted: HostedAgent, *, first_start: bool = False, reads: tuple | None = None) -> Prepared:
    """Everything a run needs from the database and the spec, in one trip to a database
    thread. A first start has no checkpoints to load; `reads` are the (history, published
    skills) rows its claim read along (lifecycle._claim_first_start), else they are read here."""
    checkpoints = {} if first_start else load_checkpoints(req)
    history_rows, skill_rows = reads if reads is not None else (None, None)
    return Prepared(build_agent(hosted, req, skill_rows=skill_rows),
                    load_history(req, hosted.config.conversation_history_turns, rows=history_rows), checkpoints)


def build_agent(hosted: HostedAgent, request: Request | None = None, *, skill_rows: list | None = None) -> Agent:
    """A fresh agent for one run: tools hold per-run state (a bash shell), so never share them.

    With `enable_runtime_tools()`, the memory tools are added, bound to `request` (its agent,
    session and event stream)."""
    tools = hosted.spec.build_tools()
    if hosted.spec.enable_runtime_tools():
        register_runtime_tools(tools, hosted, request)
    suffix = ""
    host = get_host()
    if hosted.role == "primary" and host.subagent_ids:
        subagents = [host.get(i) for i in host.subagent_ids]
        tools.register(InvokeSubagentTool([s.agent_id for s in subagents]))
        suffix = routing_block(subagents)
    skills = add_published_skills(hosted.agent_id, hosted.spec.build_skills(), rows=skill_rows)
    return Agent(hosted.config, hosted.spec.build_llm(), tools, skills, system_suffix=suffix)
