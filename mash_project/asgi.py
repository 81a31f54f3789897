"""ASGI entry point: HTTP through Django, WebSocket through Channels."""

import os

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mash_project.settings")
# Django must be set up before anything imports models (the websocket routes do).
# The static handler serves /static/ (the admin's CSS and JS) from the apps' static
# folders with no collectstatic step; every other path goes straight to Django.
django_asgi_app = ASGIStaticFilesHandler(get_asgi_application())

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from mash_project.routing import websocket_urlpatterns  # noqa: E402


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


application = ProtocolTypeRouter(
    {
        "http": flush_event_stream_headers(django_asgi_app),
        "websocket": AuthMiddlewareStack(URLRouter(websocket_urlpatterns)),
    }
)
