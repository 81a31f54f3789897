"""SSE views: async Django views streaming over an async generator (daphne sends frame by frame)."""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.db import InterfaceError, OperationalError
from django.http import StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from mash_api.auth import authenticate_headers
from mash_api.connections import release_connection
from mash_api.errors import Unauthorized, error_json, unavailable_json, unstorable_param_error
from mash_api.streams import request_frames, sse_delta, sse_frame, tail_frames
from mash_runtime.dbfaults import once_more_if_dropped
from mash_runtime.errors import ServiceError
from mash_runtime.services import stream_target


async def authorized(request) -> bool:
    user = await request.auser()
    return await sync_to_async(authenticate_headers)(request.headers, user) is not None


STREAM_OPTIONS = ("events", "tokens")


def parse_stream_option(query) -> bool:
    """`?stream=tokens` asks for the token deltas of running steps too (opt-in: the upstream
    CLI, which does not ask, sees exactly the stored events)."""
    value = (query.get("stream") or "events").strip()
    if value not in STREAM_OPTIONS:
        raise ServiceError("stream must be 'events' or 'tokens'", code="VALIDATION_ERROR", status=422,
                           details={"errors": [{"loc": ["query", "stream"], "msg": "must be 'events' or 'tokens'",
                                                "type": "enum"}]})
    return value == "tokens"


def parse_cursor(request) -> int:
    raw = request.headers.get("Last-Event-ID") or request.GET.get("after") or "0"
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise ServiceError("Last-Event-ID / after must be a non-negative integer", code="VALIDATION_ERROR", status=422,
                           details={"errors": [{"loc": ["query", "after"], "msg": "not an integer", "type": "int_parsing"}]}) from None
    if value < 0:
        raise ServiceError("Last-Event-ID / after must be a non-negative integer", code="VALIDATION_ERROR", status=422,
                           details={"errors": [{"loc": ["query", "after"], "msg": "must be >= 0", "type": "value_error"}]})
    return value


def event_stream_response(body) -> StreamingHttpResponse:
    response = StreamingHttpResponse(body, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


async def sse_body(frames):
    # Frames of one batch go out as one chunk: one write (and one packet) instead of one each.
    pending = []
    async for frame in frames:
        if frame.event is not None:
            pending.append(sse_frame(frame.event))
        elif frame.delta is not None:
            pending.append(sse_delta(frame.delta))
        else:
            pending.append(": keep-alive\n\n")
        if not frame.more:
            yield "".join(pending)
            pending = []
    if pending:
        yield "".join(pending)


async def open_request_stream(request, agent_id: str, request_id: str):
    """Validate everything before the first byte, so errors are still JSON with a status."""
    if request.method != "GET":
        return None, error_json("METHOD_NOT_ALLOWED", f'Method "{request.method}" not allowed.', 405)
    user = await request.auser()

    def check():  # one trip to a thread for the key and the request lookups
        try:
            return once_more_if_dropped(checked, "stream checks")  # read-only: safe to repeat
        except (OperationalError, InterfaceError) as exc:
            return None, unavailable_json(exc)
        finally:
            release_connection()  # not held while the stream joins its doorbell group and waits

    def checked():
        if authenticate_headers(request.headers, user) is None:
            return None, error_json("UNAUTHORIZED", str(Unauthorized.default_detail), 401)
        if (nul := unstorable_param_error({"agent_id": agent_id, "request_id": request_id}, request.GET)) is not None:
            return None, error_json(nul.code, nul.message, nul.status, nul.details)
        try:
            pk = stream_target(request_id, agent_id.strip())
            after = parse_cursor(request)
            with_tokens = parse_stream_option(request.GET)
        except ServiceError as exc:
            return None, error_json(exc.code, exc.message, exc.status, exc.details)
        return pk, (after, with_tokens)

    found, detail = await sync_to_async(check)()
    if found is None:
        return None, detail
    after, with_tokens = detail
    return request_frames(found, after, tokens=with_tokens), None


@csrf_exempt  # a POST here is a wrong method (405 envelope), not a CSRF failure page
async def request_events(request, agent_id: str, request_id: str):
    frames, error = await open_request_stream(request, agent_id, request_id)
    if error is not None:
        return error
    return event_stream_response(sse_body(frames))


@csrf_exempt
async def telemetry_event_stream(request):
    if request.method != "GET":
        return error_json("METHOD_NOT_ALLOWED", f'Method "{request.method}" not allowed.', 405)
    if not await authorized(request):
        return error_json("UNAUTHORIZED", str(Unauthorized.default_detail), 401)
    if (nul := unstorable_param_error({}, request.GET)) is not None:
        return error_json(nul.code, nul.message, nul.status, nul.details)
    import json

    from mash_api.streams import latest_event_id

    # "Now" is taken before the response starts: an event committed after the client saw
    # the stream open must be delivered (the generator's first read runs later).
    start = await sync_to_async(latest_event_id)()

    async def body():
        async for frame in tail_frames(request.GET.get("agent_id"), request.GET.get("session_id"),
                                       request.GET.get("trace_id"), after_id=start):
            if frame.event is None:
                yield ": keep-alive\n\n"
            else:
                yield f"data: {json.dumps(frame.event.to_dict(), separators=(',', ':'))}\n\n"

    return event_stream_response(body())
