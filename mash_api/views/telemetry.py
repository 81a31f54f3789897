"""Telemetry reads: runtime events and memory search."""

from drf_spectacular.utils import extend_schema
from rest_framework import serializers

from mash_api.serializers import LimitField
from mash_api.views.base import ApiView, ok
from mash_runtime import read_services


def passed_on(**kwargs):
    """A query value handed to the service as the client wrote it (its meaning is the service's)."""
    return serializers.CharField(required=False, allow_blank=True, trim_whitespace=False, **kwargs)


class EventQuerySerializer(serializers.Serializer):
    agent_id = passed_on()
    session_id = passed_on()
    trace_id = passed_on()
    limit = LimitField(default=read_services.EVENTS_LIMIT[0], maximum=read_services.EVENTS_LIMIT[1])


class MemorySearchQuerySerializer(serializers.Serializer):
    q = passed_on(help_text="starts with @user: or @agent:")
    app_id = passed_on()
    session_id = passed_on()
    limit = LimitField(default=read_services.SEARCH_LIMIT[0], maximum=read_services.SEARCH_LIMIT[1])


class EventListView(ApiView):
    @extend_schema(summary="The newest N runtime events, oldest first", parameters=[EventQuerySerializer])
    def get(self, request):
        p = self.query(EventQuerySerializer)
        return ok(read_services.telemetry_events(p.get("agent_id"), p.get("session_id"), p.get("trace_id"), p["limit"]))


class MemorySearchView(ApiView):
    @extend_schema(summary="Search memory turns; q starts with @user: or @agent:",
                   parameters=[MemorySearchQuerySerializer])
    def get(self, request):
        p = self.query(MemorySearchQuerySerializer)
        return ok(read_services.memory_search(p.get("q"), p.get("app_id"), p.get("session_id"), p["limit"]))
