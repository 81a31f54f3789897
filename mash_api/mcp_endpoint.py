"""`/mcp`: the host's agents served to MCP clients (Streamable HTTP), in the web process's ASGI app.

The MCP SDK's handler is an ASGI app of its own, so a request for `/mcp` goes to it
instead of through Django; what Django and the API views would have checked is checked
here first, with the API's own functions and answers:

- the Host must be one of ALLOWED_HOSTS (400 `DISALLOWED_HOST`), as Django checks it for
  every other path (a DNS-rebinding page otherwise reaches a loopback server);
- the key, exactly as on /api/v1 (`mash_api.auth`: a Bearer, else X-API-Key; MASH_API_KEY or
  an active `ApiKey`; open when none is configured, which `serve` allows on loopback
  only): 401 `UNAUTHORIZED`. A logged-in browser's cookie is not a credential here: MCP
  clients send keys, and a cookie-authenticated POST from any page would be a CSRF hole;
- an Origin, when sent, must be this host, a loopback origin or one of
  CSRF_TRUSTED_ORIGINS (403 `FORBIDDEN`), as the MCP transport spec asks of servers;
- the body must fit MASH_MAX_BODY_BYTES (413 `PAYLOAD_TOO_LARGE`): it is read here, before
  the SDK sees the request, and a chunked one is cut off as soon as it passes the limit
  (the SDK would answer its own 413, not the API's envelope).

Every exchange is logged to the API request log as Django's requests are, by the
middleware's own functions (`mash_telemetry.middleware`: the same redaction, clipping and
batch writer), once it ends: its duration is the whole call, even for an answer sent as
an event stream (whose body, as the middleware's streams, is not captured).

Nothing here imports `mcp`: a process that never serves `/mcp` never loads the SDK
(mash_api.mcp_server is imported on the first request that passes these checks).
"""

from __future__ import annotations

import logging
import time
from urllib.parse import urlsplit

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.http import HttpResponse
from django.http.request import split_domain_port, validate_host

from mash_api.auth import authenticate_key, is_loopback, presented_key
from mash_api.connections import release_connection
from mash_api.errors import Unauthorized, error_json, too_large_json, unavailable_json
from mash_runtime.conf import conf
from mash_runtime.dbfaults import once_more_if_dropped

logger = logging.getLogger("mash_api.mcp")

MCP_PATHS = ("/mcp", "/mcp/")


def enabled() -> bool:
    return bool(conf.MCP_ENDPOINT)


def scope_headers(scope) -> dict[str, str]:
    """The request's headers by lower-case name (the first of repeated ones)."""
    headers: dict[str, str] = {}
    for name, value in scope.get("headers") or ():
        headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    return headers


def host_refusal(headers: dict[str, str]) -> HttpResponse | None:
    host = headers.get("host", "")
    domain, _port = split_domain_port(host)
    if domain and validate_host(domain, settings.ALLOWED_HOSTS):
        return None
    return error_json("DISALLOWED_HOST", f"Host {host!r} is not served here: add it to MASH_ALLOWED_HOSTS", 400)


def origin_refusal(headers: dict[str, str]) -> HttpResponse | None:
    origin = headers.get("origin")
    if origin is None or origin in settings.CSRF_TRUSTED_ORIGINS:
        return None
    parsed = urlsplit(origin)
    if parsed.scheme in ("http", "https") and parsed.hostname is not None and (
            is_loopback(parsed.hostname) or parsed.netloc.lower() == headers.get("host", "").lower()):
        return None
    return error_json("FORBIDDEN", f"Origin {origin!r} may not call this server: add it to MASH_CSRF_TRUSTED_ORIGINS",
                      403)


def key_refusal(headers: dict[str, str]) -> HttpResponse | None:
    """401 without a valid key (when one is configured); runs on a database thread (ApiKey rows)."""

    def checked():
        if authenticate_key(presented_key(headers)) is not None:
            return None
        response = error_json("UNAUTHORIZED", str(Unauthorized.default_detail), 401)
        response["WWW-Authenticate"] = "Bearer"
        return response

    try:
        return once_more_if_dropped(checked, "mcp key check")  # read-only: safe to repeat
    except (OperationalError, InterfaceError) as exc:
        return unavailable_json(exc)
    finally:
        release_connection()


async def send_response(response: HttpResponse, send) -> None:
    headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in response.items()]
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": response.content})


async def refusal(scope) -> HttpResponse | None:
    """The API's answer to a request /mcp must not serve, or None to serve it."""
    headers = scope_headers(scope)
    found = host_refusal(headers)
    if found is None:
        found = await sync_to_async(key_refusal)(headers)
    if found is None:
        found = origin_refusal(headers)
    return found


def declared_length(headers: dict[str, str]) -> int | None:
    try:
        return int(headers["content-length"])
    except (KeyError, ValueError):
        return None


async def read_body(scope, receive) -> tuple[bytes, bool] | None:
    """`(body, over_the_limit)`, or None when the client left before sending it all.

    Over MASH_MAX_BODY_BYTES nothing more is read (the answer is 413 whatever follows), so
    no more than the limit is ever held in memory."""
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    declared = declared_length(scope_headers(scope))
    if limit is not None and declared is not None and declared > limit:
        return b"", True
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if limit is not None and size > limit:
            return b"", True
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), False


def replayed(body: bytes, receive):
    """`receive` for the SDK: the body read here first, then the client's own messages (the
    disconnect an event-stream answer waits for)."""
    first = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay():
        return first.pop() if first else await receive()

    return replay


class Exchange:
    """One /mcp exchange: what `serve` sends through it and the request body it read. This one
    only passes the answer on; mash_project.asgi gives the API log's (mash_telemetry.asgi_log),
    which also keeps what was answered, so this package never imports the telemetry one."""

    def __init__(self, send) -> None:
        self.downstream = send
        self.request_body = b""
        self.status: int | None = None

    async def send(self, message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self.downstream(message)

    async def finish(self, scope, started: float) -> None:
        """After the exchange (answered: `status` is set)."""


async def serve(scope, receive, exchange: Exchange) -> None:
    send = exchange.send
    if not enabled():
        await send_response(error_json(
            "ROUTE_NOT_FOUND", f"No route for {scope['method']} {scope['path']}: the MCP endpoint is off "
                               "(MASH_MCP_ENDPOINT)", 404), send)
        return
    read = await read_body(scope, receive)
    if read is None:
        return  # the client is gone: nobody to answer
    exchange.request_body, too_large = read
    if (refused := await refusal(scope)) is not None:
        await send_response(refused, send)
        return
    if scope["method"] == "GET":
        # The stream a GET opens carries what a session's server sends unasked; a stateless
        # server has no session and sends nothing there, so it would only hold a connection.
        response = error_json("METHOD_NOT_ALLOWED", "This MCP server is stateless: it opens no GET stream; POST "
                                                    "requests to it", 405)
        response["Allow"] = "POST"
        await send_response(response, send)
        return
    if too_large:  # after the key check, as on /api/v1, where a missing key is 401 whatever the body
        await send_response(too_large_json(), send)
        return
    from mash_api.mcp_server import handle

    await handle(scope, replayed(exchange.request_body, receive), send)


def with_mcp_endpoint(app, exchange_class: type[Exchange] = Exchange):
    """`app` (Django) with `/mcp` answered by the MCP server (unless MASH_MCP_ENDPOINT is off);
    each exchange goes through an `exchange_class` (the API log's, as mash_project.asgi mounts it)."""

    async def routed(scope, receive, send):
        if scope["type"] != "http" or scope["path"] not in MCP_PATHS:
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        exchange = exchange_class(send)
        try:
            await serve(scope, receive, exchange)
        except Exception:
            if exchange.status is None:
                exchange.status = 500  # what daphne answers an app that fails before its response
            raise
        finally:
            if exchange.status is not None:  # else the client left unanswered: nothing was exchanged
                await exchange.finish(scope, started)

    return routed
