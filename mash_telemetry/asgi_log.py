"""API log rows for the ASGI apps mounted beside Django (the MCP endpoint, /mcp), which
Django's middleware never sees: the same row, built by the middleware's own functions from
the exchange as it went by. mash_project.asgi hands `LoggedExchange` to the endpoint."""

from __future__ import annotations

import io
import logging

from django.core.handlers.asgi import ASGIRequest
from django.http import HttpResponse, StreamingHttpResponse

from mash_api.mcp_endpoint import Exchange
from mash_telemetry.middleware import build_entry, read_request_body, should_log, write_entry
from mash_telemetry.models import BODY_LIMIT

logger = logging.getLogger("mash_telemetry")


class LoggedExchange(Exchange):
    """An exchange as the API log needs it: its body and what was answered, seen on the way out."""

    def __init__(self, send) -> None:
        super().__init__(send)
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()

    async def send(self, message) -> None:
        if message["type"] == "http.response.start":
            self.status, self.headers = message["status"], list(message.get("headers") or ())
        elif message["type"] == "http.response.body" and len(self.body) <= BODY_LIMIT:
            # One byte past the limit is enough for clip_body to mark the cut.
            self.body += message.get("body", b"")[:BODY_LIMIT + 1 - len(self.body)]
        await self.downstream(message)

    def response(self) -> HttpResponse | StreamingHttpResponse:
        """The answer as the Django response the middleware's `build_entry` reads."""
        streamed = any(name.lower() == b"content-type" and value.startswith(b"text/event-stream")
                       for name, value in self.headers)
        response = StreamingHttpResponse((), status=self.status) if streamed else HttpResponse(
            bytes(self.body), status=self.status)
        del response["Content-Type"]  # Django's default: only what was really sent belongs in the row
        for name, value in self.headers:
            response[name.decode("latin-1")] = value.decode("latin-1")
        return response

    async def finish(self, scope, started: float) -> None:
        if not should_log(scope["path"]):
            return
        try:
            request = ASGIRequest(scope, io.BytesIO(self.request_body))
            entry = build_entry(request, self.response(), started, read_request_body(request))
        except Exception:  # logging is best effort, as in the middleware
            logger.warning("API request log: could not capture %s %s", scope.get("method"), scope.get("path"),
                           exc_info=True)
            return
        await write_entry(entry)
