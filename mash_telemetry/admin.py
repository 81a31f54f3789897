"""Admin for the API request log (`ApiRequestLog`, written by `middleware.py`).

Append-only and large: read-only, paged by estimate, filtered by fixed choices. The
runtime records' admin is `mash_runtime/admin.py`, whose bases this one shares.
"""

from __future__ import annotations

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html_join

from mash_runtime.admin import BigTableAdmin, FixedChoicesFilter, clipped, when_display
from mash_telemetry.models import ApiRequestLog


class MethodFilter(FixedChoicesFilter):
    title = "method"
    parameter_name = "method"
    field = "method"
    options = tuple((m, m) for m in ("GET", "POST", "PUT", "PATCH", "DELETE"))


class StatusCodeFilter(FixedChoicesFilter):
    title = "status code"
    parameter_name = "status_code"
    field = "status_code"
    options = tuple((str(c), str(c)) for c in (200, 201, 202, 204, 400, 401, 403, 404, 405, 409, 410, 422, 500, 503))


@admin.register(ApiRequestLog)
class ApiRequestLogAdmin(BigTableAdmin):
    list_display = ("created", "method", "short_path", "status_code", "duration_ms", "streaming", "client")
    list_filter = (MethodFilter, StatusCodeFilter)
    search_fields = ("path",)
    show_full_result_count = False  # append-only and large: no COUNT(*) per page
    fields = ("created", "about", *(f.name for f in ApiRequestLog._meta.fields if f.name not in ("id", "created_at")))
    readonly_fields = fields
    list_display_links = ("created",)
    created = when_display("created_at", "when")

    @admin.display(description="path", ordering="path")
    def short_path(self, obj):
        return clipped(obj.path, 70)

    @admin.display(description="about")
    def about(self, obj):
        from mash_telemetry.page_data import attach_api_log_links

        attach_api_log_links([obj])
        links = []
        if obj.trace_request_id:
            links.append(("trace of request " + obj.trace_request_id[:8], reverse("telemetry:request",
                                                                                  args=[obj.trace_request_id])))
        if obj.workflow_run_id:
            links.append((f"workflow run {obj.workflow_run_id}", reverse("telemetry:run", args=[obj.workflow_run_id])))
        links.append(("telemetry page", reverse("telemetry:api-log-entry", args=[obj.pk])))
        return format_html_join(" · ", '<a href="{1}">{0}</a>', links)
