"""Sessions, history, signals and reasoning traces."""

from drf_spectacular.utils import OpenApiParameter, extend_schema

from mash_api.views.base import ApiView, ok
from mash_runtime import queries

LIMIT = OpenApiParameter("limit", int, required=False)


class SessionListView(ApiView):
    @extend_schema(summary="Sessions of an agent, newest activity first")
    def get(self, request, agent_id):
        return ok(queries.list_sessions(agent_id))


class SessionDetailView(ApiView):
    @extend_schema(summary="Session info (zero tokens for an unused id)")
    def get(self, request, agent_id, session_id):
        queries.hosted_agent(agent_id)
        return ok(queries.session_info(agent_id.strip(), session_id))


class SessionHistoryView(ApiView):
    @extend_schema(summary="The last N turns, oldest first", parameters=[LIMIT])
    def get(self, request, agent_id, session_id):
        return ok(queries.session_history(agent_id, session_id, request.query_params.get("limit")))


class SessionSignalsView(ApiView):
    @extend_schema(summary="Signal definitions and per-turn values", parameters=[LIMIT])
    def get(self, request, agent_id, session_id):
        return ok(queries.session_signals(agent_id, session_id, request.query_params.get("limit")))


class ReasoningTraceView(ApiView):
    @extend_schema(summary="One request's steps: model text, tool calls, tokens, durations")
    def get(self, request, agent_id, session_id, trace_id):
        return ok(queries.reasoning_trace(agent_id, session_id, trace_id))
