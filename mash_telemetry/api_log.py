"""The API request log over HTTP: list, search and SSE tail (`/api/v1/telemetry/api/...`).

Rows come out as `ApiRequestLog.to_dict()` (credential headers already redacted at
write time, timestamps as float epoch seconds), newest N in ascending order.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from datetime import datetime
from datetime import timezone as dt_timezone
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.db.models import Q
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers

from mash_api.errors import Unauthorized, error_json
from mash_api.streams import IdCursor
from mash_api.views.base import ApiView, ok
from mash_runtime.errors import ServiceError
from mash_telemetry.models import ApiRequestLog

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
KEEPALIVE_SECONDS = 15.0
BATCH = 200
POLL_MIN = 0.05


def _poll_ceiling() -> float:
    return float(getattr(settings, "MASH_STREAM_POLL_MAX", 0.5))


def _invalid(loc: list[str], msg: str, type_: str = "value_error") -> ServiceError:
    return ServiceError(f"{loc[-1]}: {msg}", code="VALIDATION_ERROR", status=422,
                        details={"errors": [{"loc": loc, "msg": msg, "type": type_}]})


def status_q(value: Any, loc: list[str]) -> Q:
    """`404` matches one status, `4xx` a whole class."""
    text = str(value).strip().lower()
    if len(text) == 3 and text[0] in "12345" and text[1:] == "xx":
        low = int(text[0]) * 100
        return Q(status_code__gte=low, status_code__lt=low + 100)
    try:
        code = int(text)
    except ValueError:
        raise _invalid(loc, "must be an HTTP status like 404 or a class like 4xx", "int_parsing") from None
    if not 100 <= code <= 599:
        raise _invalid(loc, "must be between 100 and 599")
    return Q(status_code=code)


def method_q(value: Any, loc: list[str]) -> Q:
    text = str(value).strip().upper()
    if not text.isalpha() or len(text) > 16:
        raise _invalid(loc, "must be an HTTP method like GET")
    return Q(method=text)


def parse_limit(value: Any, loc: list[str]) -> int:
    if value in (None, ""):
        return DEFAULT_LIMIT
    try:
        limit = int(str(value).strip())
    except ValueError:
        raise _invalid(loc, "not an integer", "int_parsing") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise _invalid(loc, f"must be between 1 and {MAX_LIMIT}")
    return limit


def path_text(value: Any, loc: list[str]) -> str:
    text = str(value).strip()
    if "\x00" in text:  # PostgreSQL cannot even compare it
        raise _invalid(loc, "must not contain NUL characters")
    return text


def query_filters(params) -> Q:
    """Filters shared by the list and the stream: `method`, `path` (prefix), `status`."""
    q = Q()
    if (params.get("method") or "").strip():
        q &= method_q(params["method"], ["query", "method"])
    if (params.get("path") or "").strip():
        q &= Q(path__startswith=path_text(params["path"], ["query", "path"]))
    if (params.get("status") or "").strip():
        q &= status_q(params["status"], ["query", "status"])
    return q


def newest(q: Q, limit: int) -> list[dict[str, Any]]:
    rows = list(ApiRequestLog.objects.filter(q).order_by("-id")[:limit])
    return [row.to_dict() for row in reversed(rows)]


def _check(parse, value):
    if value:
        try:
            parse(value, ["body"])
        except ServiceError as exc:
            raise serializers.ValidationError(exc.details["errors"][0]["msg"]) from None
    return value


class SearchSerializer(serializers.Serializer):
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

    def validate_status(self, value):
        return _check(status_q, value)

    def validate_method(self, value):
        return _check(method_q, value)

    def validate_path(self, value):
        return _check(path_text, value)

    def validate_path_contains(self, value):
        return _check(path_text, value)

    def validate_min_duration_ms(self, value):
        if not math.isfinite(value):
            raise serializers.ValidationError("must be a finite number")
        return value

    def validate_since(self, value):
        if not math.isfinite(value) or value > 1e11:
            raise serializers.ValidationError("must be epoch seconds")
        return value


def search_filters(body: dict[str, Any]) -> Q:
    q = Q()
    if body.get("method"):
        q &= method_q(body["method"], ["body", "method"])
    if body.get("path", "").strip():
        q &= Q(path__startswith=body["path"].strip())
    if body.get("path_contains"):
        q &= Q(path__contains=body["path_contains"])
    if body.get("status"):
        q &= status_q(body["status"], ["body", "status"])
    if body.get("min_duration_ms") is not None:
        q &= Q(duration_ms__gte=body["min_duration_ms"])
    if body.get("since") is not None:
        q &= Q(created_at__gte=datetime.fromtimestamp(body["since"], tz=dt_timezone.utc))
    return q


class ApiLogListView(ApiView):
    """`{events, limit}`: logged API requests (credentials redacted, bodies cut at 4 KiB), newest N ascending."""

    @extend_schema(summary="The newest N logged API requests, oldest first", parameters=[
        OpenApiParameter("method", str), OpenApiParameter("path", str, description="path prefix"),
        OpenApiParameter("status", str, description="an HTTP status (404) or a class (4xx)"),
        OpenApiParameter("limit", int, description=f"1..{MAX_LIMIT}, default {DEFAULT_LIMIT}")],
        responses={200: OpenApiTypes.OBJECT})
    def get(self, request):
        p = request.query_params
        limit = parse_limit(p.get("limit"), ["query", "limit"])
        return ok({"events": newest(query_filters(p), limit), "limit": limit})


class ApiLogSearchView(ApiView):
    write_permissions = {"POST": "mash_telemetry.view_apirequestlog"}

    """Filters in a JSON body: method, path (prefix), path_contains, status (404 or 4xx), min_duration_ms,
    since (epoch seconds), limit. Unknown filters are a 422."""

    @extend_schema(summary="Search the API request log", request=SearchSerializer,
                   responses={200: OpenApiTypes.OBJECT})
    def post(self, request):
        body = self.body(SearchSerializer)
        limit = body.get("limit") or DEFAULT_LIMIT
        return ok({"events": newest(search_filters(body), limit), "limit": limit})


def _fetch_after(cursor: IdCursor, q: Q) -> list[dict[str, Any]]:
    """Rows new to `cursor` matching `q`; the first call of a cursor with no position only finds "now"."""
    try:
        return [row.to_dict() for row in cursor.read(ApiRequestLog.objects.filter(q), BATCH)]
    finally:
        # A stream may live for hours: hand the connection back between polls (ecosystem notes).
        connection.close()


async def api_log_frames(q: Q, after: int | None = None):
    """SSE text: one `data:` frame per new row, `: keep-alive` every 15 s while idle; never ends."""
    cursor = IdCursor(after)
    poll = POLL_MIN
    last_sent = time.monotonic()
    while True:
        rows = await sync_to_async(_fetch_after)(cursor, q)
        for row in rows:
            yield f"data: {json.dumps(row, separators=(',', ':'))}\n\n"
        if rows:
            last_sent = time.monotonic()
            poll = POLL_MIN
            continue
        if time.monotonic() - last_sent >= KEEPALIVE_SECONDS:
            last_sent = time.monotonic()
            yield ": keep-alive\n\n"
        await asyncio.sleep(poll)
        poll = min(poll * 1.5, _poll_ceiling())


async def api_log_stream(request):
    """GET /api/v1/telemetry/api/events/stream?method&path&status&after: tail the log.

    Without `after` the stream starts with rows logged from now on; `after=<id>` replays
    the rows after that id first (each row carries its `id`).
    """
    # Imported here: mash_api.views.streams pulls in the runtime's stream readers.
    from mash_api.views.streams import authorized, event_stream_response

    if request.method != "GET":
        return error_json("METHOD_NOT_ALLOWED", f'Method "{request.method}" not allowed.', 405)
    if not await authorized(request):
        return error_json("UNAUTHORIZED", str(Unauthorized.default_detail), 401)
    try:
        q = query_filters(request.GET)
        after = None
        raw_after = (request.GET.get("after") or "").strip()
        if raw_after:
            try:
                after = int(raw_after)
            except ValueError:
                raise _invalid(["query", "after"], "not an integer", "int_parsing") from None
            if after < 0:
                raise _invalid(["query", "after"], "must be a non-negative integer")
    except ServiceError as exc:
        return error_json(exc.code, exc.message, exc.status, exc.details)
    return event_stream_response(api_log_frames(q, after))
