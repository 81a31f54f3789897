"""`AskUser`: the model asks the person a question.

The tool itself never answers: the agent loop routes calls to it through its
interaction hook (a durable `info` or `choice` interaction in the runtime, a
callback in a plain `Agent.run`).
"""

from __future__ import annotations

from typing import Any

from mash_core.tools.base import Tool, ToolResult, object_schema

ASK_USER_TOOL_NAME = "AskUser"
ASK_USER_TIMEOUT_SECONDS = 3600


class AskUserTool(Tool):
    name = ASK_USER_TOOL_NAME
    description = (
        "Ask the user a question and wait for the answer. Give `options` when the user "
        "should pick from a list; leave them out for a free-text answer."
    )
    parameters = object_schema({
        "question": {"type": "string", "description": "The question to show the user."},
        "options": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Choices the user may pick from (one or more).",
        },
    }, required=["question"])

    async def execute(self, args: dict[str, Any]) -> ToolResult:
        # Reached only when no interaction hook handles AskUser.
        return ToolResult.error("AskUser needs an interactive runtime; no one is there to answer")


def interaction_for_ask_user(args: dict[str, Any]) -> dict[str, Any]:
    """The interaction an AskUser call asks for: type, prompt, schema, default answer, timeout."""
    options = [str(o) for o in (args.get("options") or []) if str(o).strip()]
    question = str(args.get("question") or "").strip()
    if options:
        return {
            "type": "choice",
            "prompt": question,
            "schema": {"type": "multi_select", "options": options},
            "default": [],
            "timeout_seconds": ASK_USER_TIMEOUT_SECONDS,
        }
    return {
        "type": "info",
        "prompt": question,
        "schema": {"type": "text"},
        "default": "",
        "timeout_seconds": ASK_USER_TIMEOUT_SECONDS,
    }


APPROVAL_TIMEOUT_SECONDS = 300
APPROVAL_OPTIONS = ["approve", "deny", "skip"]


def interaction_for_approval(tool_name: str, args: dict[str, Any]) -> dict[str, Any]:
    import json

    shown = json.dumps(args, ensure_ascii=False, default=str)
    if len(shown) > 500:
        shown = shown[:500] + "..."
    return {
        "type": "approval",
        "prompt": f"Allow tool '{tool_name}' to run with arguments {shown}?",
        "schema": {"type": "enum", "options": list(APPROVAL_OPTIONS)},
        "default": "deny",
        "timeout_seconds": APPROVAL_TIMEOUT_SECONDS,
    }
