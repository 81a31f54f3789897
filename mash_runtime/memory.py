"""Memory turns: one per completed request, the history sent as context, turn signals."""

from __future__ import annotations

import json
from typing import Any

from mash_core.agent import AgentResult
from mash_core.messages import HistoryTurn
from mash_runtime.models import MemoryTurn, Request

SUMMARY_USER_MESSAGE = "[Summary of the earlier conversation]"


def load_history(req: Request, limit: int) -> list[HistoryTurn]:
    """The last `limit` turns of the session before this request, after its newest summary."""
    turns = MemoryTurn.objects.filter(session_id=req.session_id, created_at__lt=req.created_at)
    summary = turns.filter(kind=MemoryTurn.Kind.SUMMARY).order_by("-created_at").first()
    if summary is not None:
        turns = turns.filter(created_at__gt=summary.created_at)
    history: list[HistoryTurn] = []
    if summary is not None:
        history.append(HistoryTurn(SUMMARY_USER_MESSAGE, summary.agent_response))
    if limit > 0:
        recent = list(
            turns.filter(kind=MemoryTurn.Kind.TURN).order_by("-created_at").values_list("user_message", "agent_response")[:limit]
        )
        history.extend(HistoryTurn(u, a) for u, a in reversed(recent))
    return history


def estimate_tokens(value: Any) -> int:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return max(1, len(text) // 4)


SIGNAL_DEFINITIONS = {
    "unused_tools": {
        "name": "unused_tools",
        "value_type": "list[str]",
        "description": "Tools offered to the model in this turn that it never called.",
    },
    "unused_tool_tokens": {
        "name": "unused_tool_tokens",
        "value_type": "int",
        "description": "Estimated input tokens spent sending the definitions of unused tools, over all LLM calls.",
    },
}


def compute_signals(result: AgentResult) -> dict[str, Any]:
    used = set(result.tools_used)
    unused = [d for d in result.tool_definitions if d["name"] not in used]
    per_call = sum(estimate_tokens(d) for d in unused)
    return {
        "unused_tools": [d["name"] for d in unused],
        "unused_tool_tokens": per_call * max(1, result.llm_calls),
    }


def build_turn(req: Request, result: AgentResult) -> MemoryTurn:
    """The unsaved turn of a completed request (the caller sets the session total and saves it)."""
    return MemoryTurn(
        turn_id=req.trace_id,
        agent_id=req.agent_id,
        session_id=req.session_id,
        request=req,
        user_message=req.message,
        agent_response=result.text,
        token_usage=result.usage.to_dict(),
        signals=compute_signals(result),
        metadata={
            "request_id": str(req.pk),
            "steps": result.steps,
            "stop_reason": result.stop_reason,
            "tools_used": result.tools_used,
            "llm_calls": result.llm_calls,
            **({"parent_request_id": str(req.parent_id)} if req.parent_id else {}),
        },
    )
