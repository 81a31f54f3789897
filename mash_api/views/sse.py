"""SSE views: async Django views streaming over an async generator (daphne sends frame by frame).

Every SSE route is an `@event_stream` view: the decorator answers a wrong method, a missing
key, a NUL in the path or query, a `ServiceError` the view raises and a database that
cannot serve its checks as JSON with a status, before the first byte; the view itself only
looks up what it streams and returns the body.
"""

from __future__ import annotations

import functools
import json

from asgiref.sync import sync_to_async
from django.db import InterfaceError, OperationalError
from django.http import StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from mash_api.auth import authenticate_headers
from mash_api.connections import release_connection
from mash_api.errors import UNAVAILABLE, Unauthorized, error_json, note_database_fault, unstorable_param_error
from mash_api.stream_readers import latest_event_id, request_frames, sse_delta, sse_frame, tail_frames
from mash_runtime.dbfaults import once_more_if_dropped
from mash_runtime.errors import ServiceError, invalid
from mash_runtime.services import stream_target


def event_stream_response(body) -> StreamingHttpResponse:
    response = StreamingHttpResponse(body, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


def event_stream(view=None, *, error=error_json):
    """An SSE view. `view(request, **path)` runs on a thread once the method is GET (else 405),
    the caller's key passes (else 401) and no path or query value holds a NUL (else 422), in
    the same trip as those checks (one trip, tried once more on a dropped connection: the
    checks only read), and returns the body: an async iterator of SSE text, not started yet.
    A `ServiceError` it raises, and a database that cannot serve the trip (503, retryable),
    become `error(code, message, status, details)`: the API's envelope unless told otherwise.
    The connection is released before the stream starts waiting."""
    if view is None:
        return lambda inner: event_stream(inner, error=error)

    @csrf_exempt  # a POST here is a wrong method (405), not a CSRF failure page
    @functools.wraps(view)
    async def wrapper(request, **path):
        if request.method != "GET":
            return error("METHOD_NOT_ALLOWED", f'Method "{request.method}" not allowed.', 405, None)
        user = await request.auser()

        def checked():
            if authenticate_headers(request.headers, user) is None:
                raise ServiceError(str(Unauthorized.default_detail), code="UNAUTHORIZED", status=401)
            if (nul := unstorable_param_error(path, request.GET)) is not None:
                raise nul
            return view(request, **path)

        def trip():
            try:
                return once_more_if_dropped(checked, "stream checks"), None
            except ServiceError as exc:
                return None, error(exc.code, exc.message, exc.status, exc.details)
            except (OperationalError, InterfaceError) as exc:
                note_database_fault(exc)
                response = error(UNAVAILABLE[0], UNAVAILABLE[1], 503, UNAVAILABLE[2])
                response["Retry-After"] = "1"
                return None, response
            finally:
                release_connection()  # not held while the stream joins its doorbell group and waits

        body, refusal = await sync_to_async(trip)()
        return refusal if refusal is not None else event_stream_response(body)

    return wrapper


STREAM_OPTIONS = ("events", "tokens")


def parse_stream_option(query) -> bool:
    """`?stream=tokens` asks for the token deltas of running steps too (opt-in: the upstream
    CLI, which does not ask, sees exactly the stored events)."""
    value = (query.get("stream") or "events").strip()
    if value not in STREAM_OPTIONS:
        raise invalid(["query", "stream"], "must be 'events' or 'tokens'", "enum",
                      message="stream must be 'events' or 'tokens'")
    return value == "tokens"


def parse_cursor(request) -> int:
    raw = request.headers.get("Last-Event-ID") or request.GET.get("after") or "0"
    message = "Last-Event-ID / after must be a non-negative integer"
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise invalid(["query", "after"], "not an integer", "int_parsing", message=message) from None
    if value < 0:
        raise invalid(["query", "after"], "must be >= 0", message=message)
    return value


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


def request_stream_frames(request, agent_id: str, request_id: str):
    """The frames of the request a stream route names, after its cursor (`Last-Event-ID` or
    `?after=`), with token deltas on `?stream=tokens`; a ServiceError for an unknown request
    or a bad cursor. Runs on the checks' thread."""
    pk = stream_target(request_id, agent_id.strip())
    return request_frames(pk, parse_cursor(request), tokens=parse_stream_option(request.GET))


@event_stream
def request_events(request, agent_id: str, request_id: str):
    return sse_body(request_stream_frames(request, agent_id, request_id))


async def tail_body(frames):
    """SSE text of a tail: one `data:` frame per row (`to_dict()`), `: keep-alive` while idle."""
    async for frame in frames:
        if frame.event is None:
            yield ": keep-alive\n\n"
        else:
            yield f"data: {json.dumps(frame.event.to_dict(), separators=(',', ':'))}\n\n"


@event_stream
def telemetry_event_stream(request):
    # "Now" is taken before the response starts: an event committed after the client saw
    # the stream open must be delivered (the generator's first read runs later).
    start = latest_event_id()
    return tail_body(tail_frames(request.GET.get("agent_id"), request.GET.get("session_id"),
                                  request.GET.get("trace_id"), after_id=start))
