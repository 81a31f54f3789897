"""The API request log over HTTP: list, search and SSE tail (`/api/v1/telemetry/api/...`).

Rows come out as `ApiRequestLog.to_dict()` (credential headers already redacted at
write time, timestamps as float epoch seconds), newest N in ascending order. The routes
are mounted by `mash_project/urls.py` from `api_urls.py`; they stand on mash_api's view
bases and stream reader, as every /api/v1 route does.
"""

from __future__ import annotations

import math
from datetime import datetime
from datetime import timezone as dt_timezone
from typing import Any

from django.db.models import Q
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers

from mash_api.serializers import CursorField, LimitField
from mash_api.stream_readers import PollBackoff, latest_id, table_frames
from mash_api.views.base import ApiView, ok, validated_query
from mash_api.views.sse import event_stream, tail_body
from mash_telemetry.models import ApiRequestLog

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
BATCH = 200


def status_q(value: Any) -> Q | None:
    """`404` matches one status, `4xx` a whole class; blank matches any."""
    text = str(value).strip().lower()
    if not text:
        return None
    if len(text) == 3 and text[0] in "12345" and text[1:] == "xx":
        low = int(text[0]) * 100
        return Q(status_code__gte=low, status_code__lt=low + 100)
    try:
        code = int(text)
    except ValueError:
        raise serializers.ValidationError("must be an HTTP status like 404 or a class like 4xx",
                                          code="int_parsing") from None
    if not 100 <= code <= 599:
        raise serializers.ValidationError("must be between 100 and 599", code="value_error")
    return Q(status_code=code)


def method_name(value: Any) -> str:
    text = str(value).strip().upper()
    if text and (not text.isalpha() or len(text) > 16):
        raise serializers.ValidationError("must be an HTTP method like GET", code="value_error")
    return text


# The checks of the filters the list and the stream (query) share with the search (body):
# `method`, `path` (prefix), `status` (404 or 4xx; it comes out as its Q, None for any). No
# docstrings on these serializers: drf-spectacular would publish them in the schema.
class FilterChecks:
    def validate_method(self, value):
        return method_name(value)

    def validate_status(self, value):
        return status_q(value)


class QueryFilters(FilterChecks, serializers.Serializer):
    method = serializers.CharField(required=False, allow_blank=True)
    path = serializers.CharField(required=False, allow_blank=True)
    status = serializers.CharField(required=False, allow_blank=True)


class ListQuerySerializer(QueryFilters):
    limit = LimitField(default=DEFAULT_LIMIT, maximum=MAX_LIMIT)


class StreamQuerySerializer(QueryFilters):
    after = CursorField(required=False)


class SearchSerializer(FilterChecks, serializers.Serializer):
    method = serializers.CharField(required=False, allow_blank=True, max_length=16)
    path = serializers.CharField(required=False, allow_blank=True, max_length=2048, help_text="path prefix")
    path_contains = serializers.CharField(required=False, allow_blank=True, max_length=2048)
    status = serializers.CharField(required=False, allow_blank=True, max_length=3,
                                   help_text="an HTTP status (404) or a class (4xx)")
    min_duration_ms = serializers.FloatField(required=False, min_value=0)
    since = serializers.FloatField(required=False, min_value=0, help_text="epoch seconds")
    limit = serializers.IntegerField(required=False, min_value=1, max_value=MAX_LIMIT)

    def to_internal_value(self, data):
        # A misspelt filter would silently match everything: reject what we do not know.
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError(
                    {name: [serializers.ErrorDetail("unknown filter", code="extra_forbidden")] for name in unknown})
        return super().to_internal_value(data)

    def validate_min_duration_ms(self, value):
        if not math.isfinite(value):
            raise serializers.ValidationError("must be a finite number")
        return value

    def validate_since(self, value):
        if not math.isfinite(value) or value > 1e11:
            raise serializers.ValidationError("must be epoch seconds")
        return value


def log_filters(data: dict[str, Any]) -> Q:
    """The Q of a checked filter set (any of the serializers above)."""
    q = Q()
    if data.get("method"):
        q &= Q(method=data["method"])
    if data.get("path"):
        q &= Q(path__startswith=data["path"])
    if data.get("path_contains"):
        q &= Q(path__contains=data["path_contains"])
    if data.get("status") is not None:
        q &= data["status"]
    if data.get("min_duration_ms") is not None:
        q &= Q(duration_ms__gte=data["min_duration_ms"])
    if data.get("since") is not None:
        q &= Q(created_at__gte=datetime.fromtimestamp(data["since"], tz=dt_timezone.utc))
    return q


def newest(q: Q, limit: int) -> list[dict[str, Any]]:
    rows = list(ApiRequestLog.objects.filter(q).order_by("-id")[:limit])
    return [row.to_dict() for row in reversed(rows)]


class ApiLogListView(ApiView):
    """`{events, limit}`: logged API requests (credentials redacted, bodies cut at 4 KiB), newest N ascending."""

    @extend_schema(summary="The newest N logged API requests, oldest first", parameters=[
        OpenApiParameter("method", str), OpenApiParameter("path", str, description="path prefix"),
        OpenApiParameter("status", str, description="an HTTP status (404) or a class (4xx)"),
        OpenApiParameter("limit", int, description=f"1..{MAX_LIMIT}, default {DEFAULT_LIMIT}")],
        responses={200: OpenApiTypes.OBJECT})
    def get(self, request):
        params = self.query(ListQuerySerializer)
        return ok({"events": newest(log_filters(params), params["limit"]), "limit": params["limit"]})


class ApiLogSearchView(ApiView):
    write_permissions = {"POST": "mash_telemetry.view_apirequestlog"}

    """Filters in a JSON body: method, path (prefix), path_contains, status (404 or 4xx), min_duration_ms,
    since (epoch seconds), limit. Unknown filters are a 422."""

    @extend_schema(summary="Search the API request log", request=SearchSerializer,
                   responses={200: OpenApiTypes.OBJECT})
    def post(self, request):
        body = self.body(SearchSerializer)
        limit = body.get("limit") or DEFAULT_LIMIT
        return ok({"events": newest(log_filters(body), limit), "limit": limit})


@event_stream
def api_log_stream(request):
    """GET /api/v1/telemetry/api/events/stream?method&path&status&after: tail the log.

    Without `after` the stream starts with rows logged from now on (taken before the
    response starts, as the runtime events' tail does); `after=<id>` replays the rows after
    that id first (each row carries its `id`). No doorbell rings for this table: it polls.
    """
    params = validated_query(StreamQuerySerializer, request.GET)
    after = params.get("after")
    if after is None:
        after = latest_id(ApiRequestLog)
    return tail_body(table_frames(ApiRequestLog.objects.filter(log_filters(params)), after,
                                  backoff=PollBackoff(), batch_size=BATCH))
