"""ASGI entry point: HTTP through Django, WebSocket through Channels."""

import os

from asgiref.sync import ThreadSensitiveContext
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mash_project.settings")
# Django must be set up before anything imports models (the websocket routes do).
# The static handler serves /static/ (the admin's CSS and JS) from the apps' static
# folders with no collectstatic step; every other path goes straight to Django.
django_asgi_app = ASGIStaticFilesHandler(get_asgi_application())


def quiet_request_started() -> None:
    """Send request_started without a thread hop: Django runs its sync receivers on a
    thread before the first middleware, once per request, and the only ones are its own
    `reset_queries` and `close_old_connections`, neither of which has work here. A
    request's sync calls start on a connection given back by the call before
    (`shared_threads`), and `close_old_connections` still runs at request_finished, which
    is what gives connections back; the queries log `reset_queries` empties is DEBUG's, a
    bounded deque. An ASGI request reached its first middleware about a thread hop later
    than it could."""
    from django.core import signals
    from django.db import close_old_connections, reset_queries

    signals.request_started.disconnect(reset_queries)
    signals.request_started.disconnect(close_old_connections)


quiet_request_started()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from mash_api.mcp_endpoint import with_mcp_endpoint  # noqa: E402
from mash_telemetry.asgi_log import LoggedExchange  # noqa: E402
from mash_project.routing import websocket_urlpatterns  # noqa: E402
from mash_runtime.run.dbthreads import DbThreads  # noqa: E402


def web_threads() -> int:
    """MASH_WEB_THREADS, or a few fewer than the pool's connections (the API log's writer
    and the odd out-of-band call take one too)."""
    from mash_runtime.conf import conf

    return conf.web_threads


def flush_event_stream_headers(app):
    """Send an event stream's headers at once instead of with its first bytes.

    daphne (Twisted) writes the status line and headers only with the first body bytes,
    so an idle SSE stream (a telemetry tail, a resume with nothing new yet) looked like a
    hanging connection until its first keep-alive 15 s later. An empty body message
    right after the start makes daphne send the headers and no body bytes.
    """

    async def wrapped(scope, receive, send):
        async def send_flushing(message):
            await send(message)
            if message["type"] == "http.response.start" and any(
                name.lower() == b"content-type" and value.startswith(b"text/event-stream")
                for name, value in message.get("headers", [])
            ):
                await send({"type": "http.response.body", "body": b"", "more_body": True})

        await app(scope, receive, send_flushing)

    return wrapped


def shared_threads(app, threads):
    """Run every HTTP request's sync code (the views, the ORM, sync middleware and signal
    receivers) on one small shared pool of threads instead of a thread per request.

    Django gives each request a `ThreadSensitiveContext`, so its sync parts share one
    thread, made for the request's first sync call and kept until the request ends: an
    open SSE stream kept a thread for hours (2,000 streams, 2,000 threads), and a burst of
    requests ran hundreds of sync calls at once, all taking a pooled connection and
    waiting on one another for the GIL until the pool ran dry (PoolTimeout after 10 s).
    Here the calls of every request go to `threads` (`DbThreads`): at most that many run at
    once, the rest wait on the event loop, which costs nothing; each call gives its pooled
    connection back when it ends, so no request holds one between calls (none of ours
    keeps a transaction open across calls) and the pool cannot run dry as long as it has
    more connections than there are threads. A request's calls still run one at a time.
    """

    async def with_threads(scope, receive, send):
        async with ThreadSensitiveContext(executor=threads.executor):
            await app(scope, receive, send)

    return with_threads


application = ProtocolTypeRouter(
    {
        # /mcp is the MCP server's own ASGI app (mash_api.mcp_endpoint), on the same threads;
        # its exchanges are logged as API requests by the telemetry app's LoggedExchange.
        "http": flush_event_stream_headers(shared_threads(with_mcp_endpoint(django_asgi_app, LoggedExchange),
                                                          DbThreads(web_threads(), name="mash-http"))),
        "websocket": AuthMiddlewareStack(URLRouter(websocket_urlpatterns)),
    }
)
