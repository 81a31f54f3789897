"""Memory turns: one per completed request, the history sent as context, turn signals."""

from __future__ import annotations

from typing import Any

from mash_core.agent import AgentResult
from mash_core.messages import HistoryTurn
from mash_runtime import signals as _signals
from mash_runtime.models import MemoryTurn, Request, bound_cursor

SUMMARY_USER_MESSAGE = "[Summary of the earlier conversation]"


def load_history(req: Request, limit: int) -> list[HistoryTurn]:
    """The last `limit` turns of the session before this request, after its newest summary.

    "Before" is session order (`session_seq`), not time: a turn is written when its
    request completes, which is after a request queued behind it was submitted.

    One statement, written out: every run reads this, and the ORM's two queries (the
    summary, then the turns after it) cost more to compile than to run.
    """
    turns, requests = MemoryTurn._meta.db_table, Request._meta.db_table
    # The newest summary is looked up once (a CTE used twice is computed once), not once
    # per candidate turn.
    sql = (
        f"WITH summary AS (SELECT created_at, agent_response FROM {turns} "
        f"WHERE session_id = %s AND kind = %s ORDER BY created_at DESC LIMIT 1) "
        f"SELECT 0, '', agent_response FROM summary "
        f"UNION ALL SELECT * FROM (SELECT r.session_seq, t.user_message, t.agent_response FROM {turns} t "
        f"JOIN {requests} r ON r.id = t.request_id WHERE t.session_id = %s AND t.kind = %s AND r.session_seq < %s "
        f"AND NOT EXISTS (SELECT 1 FROM summary WHERE summary.created_at >= t.created_at) "
        f"ORDER BY r.session_seq DESC LIMIT %s) recent"
    )
    session, summary, turn = req.session_id, MemoryTurn.Kind.SUMMARY, MemoryTurn.Kind.TURN
    with bound_cursor() as cursor:
        cursor.execute(sql, [session, summary, session, turn, req.session_seq, max(limit, 0)])
        rows = sorted(cursor.fetchall(), key=lambda row: row[0])  # the summary (0) first, then session order
    return [HistoryTurn(SUMMARY_USER_MESSAGE, response) if position == 0 else HistoryTurn(message, response)
            for position, message, response in rows]


# Signals live in `mash_runtime.signals` (a registry a host app can extend); these names
# stay for callers that imported them from here.
estimate_tokens = _signals.estimate_tokens
SIGNAL_DEFINITIONS = _signals.LiveSignalDefinitions()


def compute_signals(result: AgentResult, request: Request | None = None) -> dict[str, Any]:
    return _signals.collect_signals(result, request=request)


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
        signals=compute_signals(result, req),
        metadata={
            "request_id": str(req.pk),
            "steps": result.steps,
            "stop_reason": result.stop_reason,
            "tools_used": result.tools_used,
            "llm_calls": result.llm_calls,
            **({"parent_request_id": str(req.parent_id)} if req.parent_id else {}),
        },
    )
