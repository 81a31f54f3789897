"""Admin: Masher's records are browsable and read-only (they are recomputed, never edited)."""

from django.contrib import admin

from mash_runtime.masher.models import EvalRecord, MasherCheckpoint, TraceDigest


class MasherReadOnlyAdmin(admin.ModelAdmin):
    show_full_result_count = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(TraceDigest)
class TraceDigestAdmin(MasherReadOnlyAdmin):
    list_display = ("trace_id", "agent_id", "status", "step_count", "tool_call_count", "event_count",
                    "total_tokens", "duration_ms", "created_at")
    list_filter = ("status", "agent_id", "mode")
    search_fields = ("=trace_id", "agent_id", "session_id", "summary", "run_id")
    raw_id_fields = ("request",)
    date_hierarchy = "created_at"


@admin.register(EvalRecord)
class EvalRecordAdmin(MasherReadOnlyAdmin):
    list_display = ("trace_id", "agent_id", "status", "short_message", "total_tokens", "created_at")
    list_filter = ("status", "agent_id", "mode")
    search_fields = ("=trace_id", "agent_id", "user_message", "answer", "run_id")
    raw_id_fields = ("request",)

    @admin.display(description="user message")
    def short_message(self, obj):
        text = obj.user_message or ""
        return text if len(text) <= 80 else text[:79] + "…"


@admin.register(MasherCheckpoint)
class MasherCheckpointAdmin(MasherReadOnlyAdmin):
    list_display = ("agent_id", "kind", "last_finished_at", "last_trace_id", "processed_count", "updated_at")
    list_filter = ("kind",)
    search_fields = ("agent_id",)
    # Deletable: deleting a checkpoint makes incremental mode start over for that agent.
