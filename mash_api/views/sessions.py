"""Sessions, history, signals, compaction and reasoning traces."""

from drf_spectacular.utils import extend_schema
from rest_framework import serializers

from mash_api.serializers import LimitField, StrictCharField
from mash_api.views.base import ApiView, ok
from mash_runtime import read_services
from mash_runtime.storable import is_storable


class TurnsQuerySerializer(serializers.Serializer):
    limit = LimitField(default=read_services.HISTORY_LIMIT[0], maximum=read_services.HISTORY_LIMIT[1])


class SessionListView(ApiView):
    @extend_schema(summary="Sessions of an agent, newest activity first")
    def get(self, request, agent_id):
        return ok(read_services.list_sessions(agent_id))


class SessionDetailView(ApiView):
    @extend_schema(summary="Session info (zero tokens for an unused id)")
    def get(self, request, agent_id, session_id):
        read_services.hosted_agent(agent_id)
        return ok(read_services.session_info(agent_id.strip(), session_id))


class SessionHistoryView(ApiView):
    @extend_schema(summary="The last N turns, oldest first", parameters=[TurnsQuerySerializer])
    def get(self, request, agent_id, session_id):
        read_services.hosted_agent(agent_id)  # an unknown agent is 404 whatever the query says
        return ok(read_services.session_history(agent_id, session_id, self.query(TurnsQuerySerializer)["limit"]))


class SessionSignalsView(ApiView):
    @extend_schema(summary="Signal definitions and per-turn values", parameters=[TurnsQuerySerializer])
    def get(self, request, agent_id, session_id):
        read_services.hosted_agent(agent_id)
        return ok(read_services.session_signals(agent_id, session_id, self.query(TurnsQuerySerializer)["limit"]))


class ReasoningTraceView(ApiView):
    @extend_schema(summary="One request's steps: model text, tool calls, tokens, durations")
    def get(self, request, agent_id, session_id, trace_id):
        return ok(read_services.reasoning_trace(agent_id, session_id, trace_id))


class StrictIntegerField(serializers.IntegerField):
    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class CompactSessionSerializer(serializers.Serializer):
    reason = StrictCharField(required=False, allow_blank=True, allow_null=True, max_length=64, default="manual")
    session_total_tokens_reset = StrictIntegerField(required=False, allow_null=True, min_value=0, max_value=2**62,
                                                    default=0)

    def validate_reason(self, value):
        if value is not None and not is_storable(value):
            raise serializers.ValidationError("NUL and surrogate characters are not allowed.")
        return value


class CompactSessionView(ApiView):
    write_permissions = {"POST": "mash_runtime.change_session"}

    @extend_schema(summary="Summarise the turns since the last checkpoint into a summary checkpoint turn",
                   request=CompactSessionSerializer)
    def post(self, request, agent_id, session_id):
        read_services.hosted_agent(agent_id)
        body = self.body(CompactSessionSerializer)
        from mash_runtime.memory.compaction import compact_session

        return ok(compact_session(agent_id.strip(), session_id.strip(), reason=(body["reason"] or "").strip() or "manual",
                                  session_total_tokens_reset=body["session_total_tokens_reset"] or 0))
