"""The per-agent binding the upstream SDK `AgentClient` speaks: bare JSON bodies, no envelope."""

from __future__ import annotations

import json

from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import serializers

from mash_api.auth import authenticate_headers, csrf_refusal, permission_refusal
from mash_api.errors import unstorable_param_error, validation_errors
from mash_api.serializers import StrictCharField, SubmitRequestSerializer
from mash_api.views.sse import event_stream, request_stream_frames, sse_body
from mash_runtime import read_services, services
from mash_runtime.errors import NotFound, ServiceError
from mash_runtime.host import get_host
from mash_runtime.storable import UnstorableValue, check_storable


def h2a_error(code: str, message: str, status: int) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message}}, status=status)


def guarded(view=None, *, permission: str | None = None):
    """Method, key and agent checks, and service errors as bare error bodies.

    The binding speaks to SDK clients with keys, so it is exempt from Django's CSRF
    middleware; a logged-in browser's writes still pass Django's CSRF check here and need
    `permission`, as they do on /api/v1.
    """
    if view is None:
        return lambda inner: guarded(inner, permission=permission)

    @csrf_exempt
    def wrapper(request, agent_id: str | None = None, **kwargs):
        user = getattr(request, "user", None)
        principal = authenticate_headers(request.headers, user)
        if principal is None:
            return h2a_error("UNAUTHORIZED", "Missing or invalid API key", 401)
        if principal.kind == "staff" and (reason := csrf_refusal(request)) is not None:
            return h2a_error("CSRF_FAILED", f"CSRF check failed: {reason}", 403)
        if (reason := permission_refusal(principal, user, request.method, permission)) is not None:
            return h2a_error("FORBIDDEN", reason, 403)
        if (nul := unstorable_param_error({"agent_id": agent_id, **kwargs}, request.GET)) is not None:
            return h2a_error("INVALID_REQUEST", nul.message, 400)
        if agent_id is not None:
            hosted = get_host().get(agent_id.strip())
            if hosted is None or hosted.role == "workflow":
                return h2a_error("ROUTE_NOT_FOUND", f"No agent '{agent_id}' on this host", 404)
            kwargs["agent_id"] = hosted.agent_id
        try:
            return view(request, **kwargs)
        except ServiceError as exc:
            return h2a_error(exc.code, exc.message, exc.status)

    return wrapper


class H2ASubmitSerializer(SubmitRequestSerializer):
    """The upstream AgentClient's submit: the API's rules, but any message length and no
    metadata, as that binding always took; every complaint is its 400 INVALID_REQUEST, and
    a structured_output that is not a schema is the service's INVALID_STRUCTURED_OUTPUT."""

    message = StrictCharField()
    structured_output = serializers.JSONField(required=False, allow_null=True)
    metadata = None


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _json_body(request) -> dict:
    try:
        body = json.loads(request.body or b"{}", parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):  # also NaN / Infinity, and nesting json gives up on
        raise ServiceError("Request body is not valid JSON", code="INVALID_JSON") from None
    if not isinstance(body, dict):
        raise ServiceError("Request body must be a JSON object", code="INVALID_REQUEST")
    try:
        check_storable(body, "body")
    except UnstorableValue as exc:
        raise ServiceError(str(exc), code="INVALID_REQUEST") from None
    return body


def _only(request, method: str) -> JsonResponse | None:
    if request.method != method:
        return h2a_error("METHOD_NOT_ALLOWED", f"{request.method} is not allowed here", 405)
    return None


@guarded
def health(request):
    return _only(request, "GET") or JsonResponse({"status": "ok", "service": "mash-h2a", **read_services.list_agents()})


@guarded(permission="mash_runtime.add_request")
def submit(request, agent_id: str):
    if (wrong := _only(request, "POST")) is not None:
        return wrong
    serializer = H2ASubmitSerializer(data=_json_body(request))
    if not serializer.is_valid():
        errors = validation_errors(serializer.errors)
        raise ServiceError("; ".join(f"{e['loc'][-1]}: {e['msg']}" for e in errors), code="INVALID_REQUEST")
    body = serializer.validated_data
    data = services.submit_request(agent_id, body["message"], session_id=body.get("session_id"),
                                   structured_output=body.get("structured_output"))
    return JsonResponse(data, status=202)


@guarded(permission="mash_runtime.change_interaction")
def interaction(request, agent_id: str, request_id: str):
    if (wrong := _only(request, "POST")) is not None:
        return wrong
    body = _json_body(request)
    if not isinstance(body.get("interaction_id"), str) or "response" not in body:
        raise ServiceError("interaction_id and response are required", code="INVALID_REQUEST")
    return JsonResponse(services.answer_interaction(request_id, body["interaction_id"], body["response"], agent_id))


@guarded
def status(request, agent_id: str, request_id: str):
    return _only(request, "GET") or JsonResponse(services.get_request_status(request_id, agent_id))


@guarded(permission="mash_runtime.change_request")
def resume(request, agent_id: str, request_id: str):
    return _only(request, "POST") or JsonResponse(services.resume_request(request_id, agent_id))


def _bare_error(code: str, message: str, status: int, details=None) -> JsonResponse:
    return h2a_error(code, message, status)


@event_stream(error=_bare_error)
def stream(request, agent_id: str, request_id: str):
    try:
        frames, missing = request_stream_frames(request, agent_id, request_id), None
    except ServiceError as exc:
        if exc.status != 404:
            raise
        frames, missing = None, exc
    # After the method and key checks, as `guarded` does: an agent this binding does not serve.
    hosted = get_host().get(agent_id.strip())
    if hosted is None or hosted.role == "workflow":
        raise NotFound(f"No agent '{agent_id}' on this host", code="ROUTE_NOT_FOUND")
    if missing is not None:
        raise NotFound(missing.message, code="REQUEST_NOT_FOUND")
    return sse_body(frames)
