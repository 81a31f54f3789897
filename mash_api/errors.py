"""The error envelope, for every error the API can produce.

`{"error": {"code": "UPPER_SNAKE", "message": "...", "details": {}}}`: service errors,
validation errors, unknown routes, wrong methods, bad JSON and crashes alike.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import Http404, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response

from mash_runtime.dbfaults import connection_dropped, recover_connections
from mash_runtime.errors import InvalidInput, ServiceError
from mash_runtime.storable import UnstorableValue, is_storable

logger = logging.getLogger("mash_api")


class Unauthorized(exceptions.APIException):
    status_code = status.HTTP_401_UNAUTHORIZED
    default_detail = "Missing or invalid API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
    default_code = "UNAUTHORIZED"


def envelope(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or {}}}


def error_json(code: str, message: str, status_code: int, details: dict[str, Any] | None = None) -> JsonResponse:
    return JsonResponse(envelope(code, message, details), status=status_code)


def unstorable_param_error(path_kwargs: dict[str, Any], query) -> ServiceError | None:
    """A 422 VALIDATION_ERROR for a NUL (or lone surrogate) in a path segment or query value, else None.

    Without this check such ids crash the query on PostgreSQL (500) while SQLite answers;
    no id or filter of ours can contain one.
    """
    locs = [["path", name] for name, value in path_kwargs.items() if not is_storable(value)]
    locs += [["query", name] for name in query if not is_storable(name) or not is_storable(query.getlist(name))]
    if not locs:
        return None
    return InvalidInput(f"{locs[0][-1]}: must not contain NUL characters",
                        [{"loc": loc, "msg": "must not contain NUL characters", "type": "value_error"} for loc in locs])




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


def invalid_input(detail: Any, loc: tuple = ("body",)) -> ServiceError:
    """A serializer's errors as the service error the API answers with: 400 INVALID_REQUEST
    when every value at fault is blank or missing (the client's wording problem), else 422
    VALIDATION_ERROR (shape); `details.errors` lists them as `[{loc, msg, type}]`."""
    errors = validation_errors(detail, loc)
    if errors and all(e["type"] in BLANK_CODES for e in errors):
        return ServiceError(errors[0]["msg"] if len(errors) == 1 else "Invalid request", code="INVALID_REQUEST",
                            status=400, details={"errors": errors})
    if loc == ("body",):
        return InvalidInput("Request body failed validation", errors)
    # A query parameter is named, as the services' own checks name theirs (mash_runtime.errors.invalid).
    return InvalidInput(f"{errors[0]['loc'][-1]}: {errors[0]['msg']}" if len(errors) == 1 else "Invalid query", errors)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, UnstorableValue):  # caught by the model field, past the serializers
        exc = InvalidInput(str(exc), [{"loc": ["body", *exc.where.split(".")], "msg": exc.reason, "type": "value_error"}])
    elif isinstance(exc, exceptions.ValidationError):
        exc = invalid_input(exc.detail)
    if isinstance(exc, ServiceError):
        return Response(envelope(exc.code, exc.message, exc.details), status=exc.status)
    if isinstance(exc, RequestDataTooBig):
        return Response(envelope(*_too_large()), status=413)
    if isinstance(exc, exceptions.ParseError):
        return Response(envelope("INVALID_JSON", f"Request body is not valid JSON: {exc.detail}"), status=400)
    if isinstance(exc, exceptions.UnsupportedMediaType):
        return Response(envelope("UNSUPPORTED_MEDIA_TYPE", str(exc.detail)), status=415)
    if isinstance(exc, (Unauthorized, exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
        return Response(envelope("UNAUTHORIZED", str(Unauthorized.default_detail)), status=401,
                        headers={"WWW-Authenticate": "Bearer"})
    if isinstance(exc, exceptions.PermissionDenied):
        # DRF's SessionAuthentication words a failed CSRF check so ("CSRF Failed: ...").
        code = "CSRF_FAILED" if str(exc.detail).startswith("CSRF Failed") else "FORBIDDEN"
        return Response(envelope(code, str(exc.detail)), status=403)
    if isinstance(exc, exceptions.MethodNotAllowed):
        return Response(envelope("METHOD_NOT_ALLOWED", str(exc.detail)), status=405)
    if isinstance(exc, exceptions.NotFound):
        return Response(envelope("NOT_FOUND", str(exc.detail)), status=404)
    if isinstance(exc, Http404):  # e.g. DRF's own, for a `?format=` no renderer serves: it has no message
        return Response(envelope("NOT_FOUND", str(exc) or "Not found."), status=404)
    if isinstance(exc, exceptions.Throttled):
        return Response(envelope("RATE_LIMITED", str(exc.detail)), status=429)
    if isinstance(exc, (OperationalError, InterfaceError)):
        return unavailable(exc)
    # Imported here: rest_framework.views reads the permission settings, which import this module.
    from rest_framework.views import exception_handler as drf_exception_handler

    response = drf_exception_handler(exc, context)
    if response is not None:
        return Response(envelope("ERROR", str(getattr(exc, "detail", exc))), status=response.status_code)
    logger.exception("unhandled API error", exc_info=exc)
    return Response(envelope("INTERNAL_ERROR", "Internal server error"), status=500)


def _too_large() -> tuple[str, str]:
    from django.conf import settings

    return ("PAYLOAD_TOO_LARGE", f"Request body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes "
                                 "(MASH_MAX_BODY_BYTES)")


def too_large_json() -> JsonResponse:
    """413 PAYLOAD_TOO_LARGE for a body over MASH_MAX_BODY_BYTES, outside DRF (handler400, /mcp)."""
    return error_json(*_too_large(), 413)


UNAVAILABLE = ("DATABASE_UNAVAILABLE", "The database is busy or unreachable; retry shortly", {"retryable": True})


def note_database_fault(exc: Exception) -> None:
    logger.warning("database unavailable: %s", " ".join(str(exc).split()))
    if connection_dropped(exc):
        # Its pool's other idle connections died with it most likely: replace them now, not
        # one failed request at a time.
        recover_connections()


def unavailable(exc: Exception) -> Response:
    """A 503 DATABASE_UNAVAILABLE the client may retry: the database could not serve the call
    (the pool had no free connection in time, the connection dropped and its one retry
    failed too, the server restarts, SQLite stayed locked). Nothing was stored by the
    failed call, or what was is found again by the retry: a submit sent again with the same
    Idempotency-Key answers with the request the first one stored, if it did."""
    note_database_fault(exc)
    return Response(envelope(*UNAVAILABLE), status=503, headers={"Retry-After": "1"})


def unavailable_json(exc: Exception) -> JsonResponse:
    """`unavailable` for plain Django views (the SSE ones)."""
    note_database_fault(exc)
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


def handler400(request, exception=None):
    """A Host not in ALLOWED_HOSTS (and other SuspiciousOperation): say which setting admits it.

    Must not call `request.get_host()`: that is what raised.
    """
    from django.core.exceptions import DisallowedHost

    if isinstance(exception, RequestDataTooBig):
        return too_large_json()
    if isinstance(exception, DisallowedHost):
        host = request.META.get("HTTP_HOST", "")
        return error_json("DISALLOWED_HOST", f"Host {host!r} is not served here: add it to MASH_ALLOWED_HOSTS", 400)
    if is_api_path(request.path):
        return error_json("BAD_REQUEST", "Bad request", 400)
    from django.views.defaults import bad_request

    return bad_request(request, exception)
