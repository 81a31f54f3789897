"""ASGI entry point: HTTP through Django, WebSocket through Channels."""

import os
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import ThreadSensitiveContext
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


class LanePool:
    """Single-thread executors for HTTP requests' sync code, reused across requests.

    Django runs each request in a fresh `ThreadSensitiveContext`, so its sync parts (the
    view, the ORM) share one thread per request; asgiref makes that thread for the
    request's first sync call and joins it from yet another new thread at the end. Two
    thread starts per request were a sixth of a simple GET's CPU. A request here takes an
    idle lane (one thread, one call at a time, as before) and gives it back when it
    ends; Django's own context then nests inside ours and changes nothing. Lanes beyond
    `keep` idle ones are let go, so a burst of long streams does not leave threads behind.
    """

    def __init__(self, keep: int = 64):
        self.keep = keep
        self.idle: list[ThreadPoolExecutor] = []

    def wrap(self, app):
        async def lane_app(scope, receive, send):
            lane = self.idle.pop() if self.idle else ThreadPoolExecutor(1, thread_name_prefix="mash-http")
            try:
                async with ThreadSensitiveContext(executor=lane):
                    await app(scope, receive, send)
            finally:
                # A cancelled request may leave a call running there: the next request
                # that takes the lane waits for it, as calls on one lane always did.
                if len(self.idle) < self.keep:
                    self.idle.append(lane)
                else:
                    lane.shutdown(wait=False)

        return lane_app


application = ProtocolTypeRouter(
    {
        "http": flush_event_stream_headers(LanePool().wrap(django_asgi_app)),
        "websocket": AuthMiddlewareStack(URLRouter(websocket_urlpatterns)),
    }
)
