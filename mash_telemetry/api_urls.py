"""The API request log's routes under /api/v1 (mounted at `api/v1/telemetry/api/` by mash_project)."""

from django.urls import path

from mash_telemetry import api_log

urlpatterns = [
    path("events", api_log.ApiLogListView.as_view(), name="telemetry-api-events"),
    path("events/search", api_log.ApiLogSearchView.as_view(), name="telemetry-api-events-search"),
    path("events/stream", api_log.api_log_stream, name="telemetry-api-events-stream"),
]
