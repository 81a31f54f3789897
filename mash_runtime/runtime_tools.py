"""Runtime memory tools, registered for agents whose spec says `enable_runtime_tools()`.

- `search_conversations(query, limit=10, scope="session"|"app")`: full-text search over
  this agent's memory turns (`scope="session"`: the current session only; `"app"`: every
  session of the agent). The query may start with `@user:` or `@agent:`; without a
  prefix both columns are searched and a turn keeps its best score. Each run reports
  `memory.search.*` events on the request's stream.
- `get_full_turn_message(pairs=[{session_id, turn_id}])`: the full text of turns found
  by a search -> `{requested_count, found_count, turns, missing_pairs}`. Only this
  agent's turns are readable.

The tools are built per request run (`build_runtime_tools(hosted, request)`), because
they are bound to the request's agent, session and event stream.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from mash_core.tools.base import Tool, ToolRegistry, ToolResult, object_schema
from mash_runtime.events import append_event
from mash_runtime.memory.search import SearchValidationError, search_memory
from mash_runtime.models import MemoryTurn, epoch
from mash_runtime.run.dbthreads import database

logger = logging.getLogger("mash_runtime.runtime_tools")

SEARCH_CONVERSATIONS = "search_conversations"
GET_FULL_TURN_MESSAGE = "get_full_turn_message"
MAX_SEARCH_LIMIT = 50
MAX_PAIRS = 20
MAX_TURN_CHARS = 50_000


@dataclass
class RuntimeToolContext:
    agent_id: str
    session_id: str | None = None  # the wire session id of the current request
    request: Any = None  # the Request whose stream gets the search events

    def emit(self, event_type: str, payload: dict[str, Any]) -> None:
        """Append an event to the request's stream (sync: runs in the database thread)."""
        if self.request is None:
            return
        try:
            append_event(self.request, event_type, payload, step_key="memory.search")
        except Exception:  # a lost trace event must not fail the search
            logger.warning("could not record %s for request %s", event_type, self.request.pk, exc_info=True)


def _as_int(value: Any, default: int) -> int | None:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


class SearchConversationsTool(Tool):
    name = SEARCH_CONVERSATIONS
    description = (
        "Search earlier conversation turns of this agent (full-text, best matches first). "
        "Start the query with '@user:' to search only what the user wrote or '@agent:' to search only "
        "your answers; without a prefix both are searched. Words match any of them; put a phrase in "
        "double quotes. scope 'session' searches this conversation, 'app' all conversations. "
        "Results carry session_id, turn_id, a score in [0, 1] and a preview of at most 200 characters; "
        "read a whole turn with get_full_turn_message."
    )
    parameters = object_schema({
        "query": {"type": "string", "description": "Words or \"a phrase\", optionally prefixed by @user: or @agent:"},
        "limit": {"type": "integer", "minimum": 1, "maximum": MAX_SEARCH_LIMIT, "default": 10,
                  "description": "How many results (1-50)."},
        "scope": {"type": "string", "enum": ["session", "app"], "default": "session",
                  "description": "session: this conversation; app: every conversation of this agent."},
    }, required=["query"])

    def __init__(self, context: RuntimeToolContext):
        self.context = context

    async def execute(self, args: dict[str, Any]) -> ToolResult:
        query = args.get("query")
        if not isinstance(query, str) or not query.strip():
            return ToolResult.error("query must be a non-empty string", error_code="SEARCH_VALIDATION_ERROR")
        limit = _as_int(args.get("limit"), 10)
        if limit is None:
            return ToolResult.error("limit must be an integer between 1 and 50", error_code="SEARCH_VALIDATION_ERROR")
        limit = max(1, min(MAX_SEARCH_LIMIT, limit))
        scope = args.get("scope") or "session"
        if scope not in ("session", "app"):
            return ToolResult.error("scope must be 'session' or 'app'", error_code="SEARCH_VALIDATION_ERROR")
        if scope == "session" and not self.context.session_id:
            return ToolResult.error("there is no current session to search; use scope 'app'",
                                    error_code="SEARCH_VALIDATION_ERROR")
        try:
            data = await database(self._search)(query, limit, scope)
        except SearchValidationError as exc:
            return ToolResult.error(exc.message, error_code=exc.code)
        return ToolResult.success(data, result_count=data["result_count"])

    def _search(self, query: str, limit: int, scope: str) -> dict[str, Any]:
        outcome = search_memory(
            query,
            agent_id=self.context.agent_id,
            session_id=self.context.session_id if scope == "session" else None,
            limit=limit,
            require_prefix=False,
            emit=self.context.emit,
            scope_label=scope,
        )
        return {
            "query": query,
            "scope": scope,
            "result_count": len(outcome.results),
            "results": [r.to_tool() for r in outcome.results],
        }


class GetFullTurnMessageTool(Tool):
    name = GET_FULL_TURN_MESSAGE
    description = (
        "Read whole conversation turns (the user's message and the agent's answer) by their "
        "session_id and turn_id, as returned by search_conversations. Returns requested_count, "
        "found_count, turns and missing_pairs (pairs that do not name a turn of this agent)."
    )
    parameters = object_schema({
        "pairs": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_PAIRS,
            "items": {
                "type": "object",
                "properties": {"session_id": {"type": "string"}, "turn_id": {"type": "string"}},
                "required": ["session_id", "turn_id"],
            },
            "description": "Which turns to read, e.g. [{\"session_id\": \"s1\", \"turn_id\": \"...\"}]",
        }
    }, required=["pairs"])

    def __init__(self, context: RuntimeToolContext):
        self.context = context

    async def execute(self, args: dict[str, Any]) -> ToolResult:
        pairs = args.get("pairs")
        if isinstance(pairs, dict):
            pairs = [pairs]
        if not isinstance(pairs, list) or not pairs:
            return ToolResult.error("pairs must be a non-empty list of {session_id, turn_id} objects")
        if len(pairs) > MAX_PAIRS:
            return ToolResult.error(f"at most {MAX_PAIRS} pairs per call")
        normalised: list[dict[str, str]] = []
        for pair in pairs:
            if not isinstance(pair, dict):
                return ToolResult.error("each pair must be an object {session_id, turn_id}")
            item = {"session_id": str(pair.get("session_id") or "").strip(), "turn_id": str(pair.get("turn_id") or "").strip()}
            if item not in normalised:
                normalised.append(item)
        data = await database(self._fetch)(normalised)
        return ToolResult.success(data, found_count=data["found_count"], requested_count=data["requested_count"])

    def _fetch(self, pairs: list[dict[str, str]]) -> dict[str, Any]:
        ids: list[uuid.UUID] = []
        for pair in pairs:
            try:
                ids.append(uuid.UUID(pair["turn_id"]))
            except ValueError:
                pass
        rows = {
            str(t.turn_id): t
            for t in MemoryTurn.objects.filter(agent__agent_id=self.context.agent_id, turn_id__in=ids)
            .select_related("session")
        }
        turns: list[dict[str, Any]] = []
        missing: list[dict[str, str]] = []
        for pair in pairs:
            try:
                key = str(uuid.UUID(pair["turn_id"]))
            except ValueError:
                key = None
            turn = rows.get(key) if key else None
            if turn is None or turn.session.session_id != pair["session_id"]:
                missing.append(pair)
                continue
            turns.append({
                "session_id": turn.session.session_id,
                "turn_id": key,
                "kind": turn.kind,
                "user_message": _cap(turn.user_message),
                "agent_response": _cap(turn.agent_response),
                "created_at": epoch(turn.created_at),
            })
        return {"requested_count": len(pairs), "found_count": len(turns), "turns": turns, "missing_pairs": missing}


def _cap(text: str) -> str:
    if len(text) <= MAX_TURN_CHARS:
        return text
    return text[:MAX_TURN_CHARS] + f"\n[... {len(text) - MAX_TURN_CHARS} more characters not shown]"


def build_runtime_tools(hosted, request=None) -> list[Tool]:
    """The runtime tools bound to one request run (or to the agent only, without a request)."""
    context = RuntimeToolContext(
        agent_id=hosted.agent_id,
        session_id=request.session.session_id if request is not None else None,
        request=request,
    )
    return [SearchConversationsTool(context), GetFullTurnMessageTool(context)]


def register_runtime_tools(registry: ToolRegistry, hosted, request=None) -> list[str]:
    """Add the runtime tools to a run's registry; a tool of the same name from the host app wins."""
    added = []
    for tool in build_runtime_tools(hosted, request):
        if tool.name in registry:
            logger.warning("agent %s defines its own %r tool; the runtime tool is not added", hosted.agent_id, tool.name)
            continue
        registry.register(tool)
        added.append(tool.name)
    return added


__all__ = [
    "SEARCH_CONVERSATIONS",
    "GET_FULL_TURN_MESSAGE",
    "RuntimeToolContext",
    "SearchConversationsTool",
    "GetFullTurnMessageTool",
    "build_runtime_tools",
    "register_runtime_tools",
    "MAX_SEARCH_LIMIT",
    "MAX_PAIRS",
    "MAX_TURN_CHARS",
]
