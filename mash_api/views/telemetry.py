"""Telemetry reads: runtime events and memory search."""

from drf_spectacular.utils import OpenApiParameter, extend_schema

from mash_api.views.base import ApiView, ok
from mash_runtime import read_services


class EventListView(ApiView):
    @extend_schema(summary="The newest N runtime events, oldest first", parameters=[
        OpenApiParameter("agent_id", str), OpenApiParameter("session_id", str),
        OpenApiParameter("trace_id", str), OpenApiParameter("limit", int)])
    def get(self, request):
        p = request.query_params
        return ok(read_services.telemetry_events(p.get("agent_id"), p.get("session_id"), p.get("trace_id"), p.get("limit")))


class MemorySearchView(ApiView):
    @extend_schema(summary="Search memory turns; q starts with @user: or @agent:", parameters=[
        OpenApiParameter("q", str, required=True), OpenApiParameter("app_id", str),
        OpenApiParameter("session_id", str), OpenApiParameter("limit", int)])
    def get(self, request):
        p = request.query_params
        return ok(read_services.memory_search(p.get("q"), p.get("app_id"), p.get("session_id"), p.get("limit")))
