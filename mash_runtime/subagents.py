"""Delegation from a primary agent to its subagents."""

from __future__ import annotations

from typing import Any

from mash_core.tools.base import Tool, ToolResult, object_schema

INVOKE_SUBAGENT = "InvokeSubagent"


class InvokeSubagentTool(Tool):
    """Definition only: the engine runs these calls as child requests (see engine.subagent_step)."""

    name = INVOKE_SUBAGENT

    def __init__(self, agent_ids: list[str]):
        self.description = (
            "Delegate a task to a subagent and get its answer back. Give the subagent everything it "
            "needs in `prompt`: it does not see this conversation."
        )
        self.parameters = object_schema({
            "agent_id": {"type": "string", "enum": list(agent_ids), "description": "Which subagent."},
            "prompt": {"type": "string", "description": "The task, self-contained."},
        }, required=["agent_id", "prompt"])

    async def execute(self, args: dict[str, Any]) -> ToolResult:
        return ToolResult.error("InvokeSubagent runs only inside the Mash runtime")


def routing_block(subagents: list[Any]) -> str:
    """The system-prompt section that tells a primary whom it can delegate to, and when."""
    lines = ["## Subagents", f"Delegate with the {INVOKE_SUBAGENT} tool when a subagent fits the task better:"]
    for hosted in subagents:
        meta = hosted.metadata
        if meta is None:
            lines.append(f"- {hosted.agent_id}")
            continue
        line = f"- {hosted.agent_id} ({meta.display_name}): {meta.description}"
        if meta.capabilities:
            line += f" Capabilities: {', '.join(meta.capabilities)}."
        if meta.usage_guidance:
            line += f" Use when: {meta.usage_guidance}"
        lines.append(line)
    return "\n".join(lines)
