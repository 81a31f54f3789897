"""Memory turns: one per completed request, and the history sent as context."""

from __future__ import annotations

from mash_core.agent import AgentResult
from mash_core.messages import HistoryTurn
from mash_runtime.db import recent_history
from mash_runtime.memory.turn_signals import collect_signals
from mash_runtime.models import MemoryTurn, Request

SUMMARY_USER_MESSAGE = "[Summary of the earlier conversation]"


def load_history(req: Request, limit: int, rows: list | None = None) -> list[HistoryTurn]:
    """The last `limit` turns of the session before this request, after its newest summary.

    "Before" is session order (`session_seq`), not time: a turn is written when its
    request completes, which is after a request queued behind it was submitted.

    One statement (db.recent_history): every run reads this; or `rows`, that statement's
    rows for a `limit` at least this one, read along with the claim.
    """
    if rows is None:
        rows = recent_history(MemoryTurn, Request, req.session_id, req.session_seq, limit)
    else:
        turns = [row for row in rows if row[0] != 0]
        rows = [row for row in rows if row[0] == 0] + (turns[-limit:] if limit > 0 else [])
    return [HistoryTurn(SUMMARY_USER_MESSAGE, response) if position == 0 else HistoryTurn(message, response)
            for position, message, response in rows]


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
        signals=collect_signals(result, request=req),
        metadata={
            "request_id": str(req.pk),
            "steps": result.steps,
            "stop_reason": result.stop_reason,
            "tools_used": result.tools_used,
            "llm_calls": result.llm_calls,
            **({"parent_request_id": str(req.parent_id)} if req.parent_id else {}),
        },
    )
