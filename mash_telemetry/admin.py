"""Admin registrations for every runtime record.

History records (events, checkpoints, turns) are read-only: they are what happened.
Big append-only tables skip the full COUNT(*) on every page load.
"""

from django.contrib import admin

from mash_runtime.models import Agent, Interaction, MemoryTurn, Request, RuntimeEvent, Session, StepCheckpoint


class ReadOnlyAdmin(admin.ModelAdmin):
    show_full_result_count = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    list_display = ("agent_id", "role", "model_name", "active", "updated_at")
    list_filter = ("role", "active")
    search_fields = ("agent_id",)
    readonly_fields = ("agent_id", "role", "metadata", "model_name", "config", "created_at", "updated_at")


@admin.register(Session)
class SessionAdmin(admin.ModelAdmin):
    list_display = ("session_id", "agent", "session_total_tokens", "last_activity_at", "created_at")
    list_filter = ("agent",)
    search_fields = ("session_id",)
    list_select_related = ("agent",)
    raw_id_fields = ("agent",)
    show_full_result_count = False


@admin.register(Request)
class RequestAdmin(admin.ModelAdmin):
    list_display = ("id", "agent", "status", "session", "created_at", "finished_at")
    list_filter = ("status", "agent")
    search_fields = ("=id", "=trace_id", "message")
    list_select_related = ("agent", "session")
    raw_id_fields = ("agent", "session", "parent")
    readonly_fields = [f.name for f in Request._meta.fields]
    show_full_result_count = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(RuntimeEvent)
class RuntimeEventAdmin(ReadOnlyAdmin):
    list_display = ("request", "seq", "event_type", "agent_id", "step_key", "created_at")
    list_filter = ("event_type",)
    search_fields = ("=request__id", "agent_id", "session_id")
    raw_id_fields = ("request",)


@admin.register(StepCheckpoint)
class StepCheckpointAdmin(ReadOnlyAdmin):
    list_display = ("request", "step_key", "kind", "duration_ms", "created_at")
    list_filter = ("kind",)
    search_fields = ("=request__id", "step_key")
    raw_id_fields = ("request",)


@admin.register(Interaction)
class InteractionAdmin(ReadOnlyAdmin):
    list_display = ("interaction_id", "request", "type", "status", "created_at", "expires_at")
    list_filter = ("type", "status")
    search_fields = ("=interaction_id", "=request__id")
    raw_id_fields = ("request",)


@admin.register(MemoryTurn)
class MemoryTurnAdmin(ReadOnlyAdmin):
    list_display = ("turn_id", "agent", "session", "kind", "session_total_tokens", "created_at")
    list_filter = ("kind", "agent")
    search_fields = ("=turn_id", "user_message", "agent_response")
    list_select_related = ("agent", "session")
    raw_id_fields = ("agent", "session", "request")


# -- API request log (appended with mash_telemetry/middleware.py) ----------------------

from mash_telemetry.models import ApiRequestLog  # noqa: E402


@admin.register(ApiRequestLog)
class ApiRequestLogAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "method", "path", "status_code", "duration_ms", "streaming", "client")
    list_filter = ("method", "status_code")
    search_fields = ("path",)
    show_full_result_count = False  # append-only and large: no COUNT(*) per page
    readonly_fields = [f.name for f in ApiRequestLog._meta.fields]
