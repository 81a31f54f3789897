"""The error envelope, for every error the API can produce.

`{"error": {"code": "UPPER_SNAKE", "message": "...", "details": {}}}`: service errors,
validation errors, unknown routes, wrong methods, bad JSON and crashes alike.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from django.db import OperationalError
from django.http import Http404, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response

from mash_runtime.services import ServiceError

logger = logging.getLogger("mash_api")


class Unauthorized(exceptions.APIException):
    status_code = status.HTTP_401_UNAUTHORIZED
    default_detail = "Missing or invalid API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
    default_code = "UNAUTHORIZED"


def envelope(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or {}}}


def error_json(code: str, message: str, status_code: int, details: dict[str, Any] | None = None) -> JsonResponse:
    return JsonResponse(envelope(code, message, details), status=status_code)


_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")


def contains_unstorable(value: Any) -> bool:
    """Whether a string, or any key or string inside a JSON value, holds a NUL or a lone surrogate.

    No database of ours stores them: PostgreSQL refuses NUL in text and both in jsonb, and
    UTF-8 cannot encode a lone surrogate (JSON's `"\\ud800"` decodes to one).
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _UNSTORABLE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return False


def unstorable_param_error(path_kwargs: dict[str, Any], query) -> ServiceError | None:
    """A 422 VALIDATION_ERROR for a NUL (or lone surrogate) in a path segment or query value, else None.

    Without this check such ids crash the query on PostgreSQL (500) while SQLite answers;
    no id or filter of ours can contain one.
    """
    locs = [["path", name] for name, value in path_kwargs.items() if contains_unstorable(value)]
    locs += [["query", name] for name in query if contains_unstorable(name) or contains_unstorable(query.getlist(name))]
    if not locs:
        return None
    return ServiceError(f"{locs[0][-1]}: must not contain NUL characters", code="VALIDATION_ERROR", status=422,
                        details={"errors": [{"loc": loc, "msg": "must not contain NUL characters", "type": "value_error"}
                                            for loc in locs]})


def validation_errors(detail: Any, loc: tuple = ("body",)) -> list[dict[str, Any]]:
    """Flatten DRF's nested error detail into `[{loc, msg, type}]`."""
    out: list[dict[str, Any]] = []
    if isinstance(detail, dict):
        for key, value in detail.items():
            out.extend(validation_errors(value, loc if key == "non_field_errors" else (*loc, key)))
    elif isinstance(detail, list):
        for index, value in enumerate(detail):
            if isinstance(value, (dict, list)):
                out.extend(validation_errors(value, (*loc, index)))
            else:
                out.extend(validation_errors(value, loc))
    else:
        out.append({"loc": list(loc), "msg": str(detail), "type": getattr(detail, "code", "invalid")})
    return out


BLANK_CODES = {"blank", "required"}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, ServiceError):
        return Response(envelope(exc.code, exc.message, exc.details), status=exc.status)
    if isinstance(exc, exceptions.ValidationError):
        errors = validation_errors(exc.detail)
        # Blank or missing values are the client's wording problem (400); anything else is shape (422).
        if errors and all(e["type"] in BLANK_CODES for e in errors):
            return Response(envelope("INVALID_REQUEST", errors[0]["msg"] if len(errors) == 1 else "Invalid request",
                                     {"errors": errors}), status=400)
        return Response(envelope("VALIDATION_ERROR", "Request body failed validation", {"errors": errors}), status=422)
    if isinstance(exc, exceptions.ParseError):
        return Response(envelope("INVALID_JSON", f"Request body is not valid JSON: {exc.detail}"), status=400)
    if isinstance(exc, exceptions.UnsupportedMediaType):
        return Response(envelope("UNSUPPORTED_MEDIA_TYPE", str(exc.detail)), status=415)
    if isinstance(exc, (Unauthorized, exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
        return Response(envelope("UNAUTHORIZED", str(Unauthorized.default_detail)), status=401,
                        headers={"WWW-Authenticate": "Bearer"})
    if isinstance(exc, exceptions.PermissionDenied):
        return Response(envelope("FORBIDDEN", str(exc.detail)), status=403)
    if isinstance(exc, exceptions.MethodNotAllowed):
        return Response(envelope("METHOD_NOT_ALLOWED", str(exc.detail)), status=405)
    if isinstance(exc, exceptions.NotFound):
        return Response(envelope("NOT_FOUND", str(exc.detail)), status=404)
    if isinstance(exc, Http404):  # e.g. DRF's own, for a `?format=` no renderer serves: it has no message
        return Response(envelope("NOT_FOUND", str(exc) or "Not found."), status=404)
    if isinstance(exc, exceptions.Throttled):
        return Response(envelope("RATE_LIMITED", str(exc.detail)), status=429)
    if isinstance(exc, OperationalError):
        return unavailable(exc)
    # Imported here: rest_framework.views reads the permission settings, which import this module.
    from rest_framework.views import exception_handler as drf_exception_handler

    response = drf_exception_handler(exc, context)
    if response is not None:
        return Response(envelope("ERROR", str(getattr(exc, "detail", exc))), status=response.status_code)
    logger.exception("unhandled API error", exc_info=exc)
    return Response(envelope("INTERNAL_ERROR", "Internal server error"), status=500)


UNAVAILABLE = ("SERVICE_UNAVAILABLE", "The database is busy or unreachable; retry shortly", {"retryable": True})


def unavailable(exc: Exception) -> Response:
    """A 503 the client may retry: the database could not be reached in time (the pool
    had no free connection, the server restarts, SQLite stayed locked). Nothing was
    stored by the failed call."""
    logger.warning("database unavailable: %s", " ".join(str(exc).split()))
    return Response(envelope(*UNAVAILABLE), status=503, headers={"Retry-After": "1"})


def unavailable_json(exc: Exception) -> JsonResponse:
    """`unavailable` for plain Django views (the SSE ones)."""
    logger.warning("database unavailable: %s", " ".join(str(exc).split()))
    response = error_json(*UNAVAILABLE[:2], 503, UNAVAILABLE[2])
    response["Retry-After"] = "1"
    return response


def is_api_path(path: str) -> bool:
    return path.startswith("/api/") or path.startswith("/h2a/")


def handler404(request, exception=None):
    if is_api_path(request.path):
        return error_json("ROUTE_NOT_FOUND", f"No route for {request.method} {request.path}", 404)
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)


def handler500(request):
    if is_api_path(request.path):
        return error_json("INTERNAL_ERROR", "Internal server error", 500)
    from django.views.defaults import server_error

    return server_error(request)
