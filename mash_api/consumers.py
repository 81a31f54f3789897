"""WebSocket consumers: a request's stream (with in-band answers) and the staff telemetry tail.

Both refuse a connection that fails the same key check as HTTP (key in a header; a
logged-in staff session also works). Each send re-checks nothing new: the stream only
ever carries the one request, or, for the tail, the consumer is staff-only.
"""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs

from asgiref.sync import sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from mash_api.auth import Principal, authenticate_headers, origin_refusal, permission_refusal
from mash_api.stream_readers import latest_event_id, request_frames, tail_frames, ws_delta, ws_message
from mash_runtime.errors import ServiceError
from mash_runtime.services import answer_interaction, get_request

UNAUTHORIZED = 4401
NOT_FOUND = 4404


def scope_headers(scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


class _StreamConsumer(AsyncJsonWebsocketConsumer):
    pump: asyncio.Task | None = None

    async def principal(self):
        """The caller, or None when refused: a key, or a staff session from this host's
        own pages (a cookie-authenticated socket from a foreign Origin is refused)."""
        headers = scope_headers(self.scope)
        principal = await sync_to_async(authenticate_headers)(headers, self.scope.get("user"))
        if origin_refusal(headers, principal) is not None:
            return None
        return principal

    async def receive(self, text_data=None, bytes_data=None, **kwargs) -> None:
        try:
            content = await self.decode_json(text_data) if text_data is not None else None
        except (ValueError, RecursionError):  # not JSON, NaN, or nested too deep to parse
            await self.send_json({"type": "error", "error": {"code": "INVALID_JSON",
                                                             "message": "messages must be JSON objects"}})
            return
        if content is None:
            await self.send_json({"type": "error", "error": {"code": "INVALID_MESSAGE",
                                                             "message": "send text frames holding JSON"}})
            return
        await self.receive_json(content, **kwargs)

    def query(self, name: str) -> str | None:
        values = parse_qs(self.scope.get("query_string", b"").decode()).get(name)
        return values[0] if values else None

    async def start_pump(self, frames) -> None:
        async def pump():
            try:
                async for frame in frames:
                    if frame.event is not None:
                        await self.send_json(ws_message(frame.event) if self.full_messages else frame.event.to_dict())
                    elif frame.delta is not None:
                        await self.send_json(ws_delta(frame.delta))
            except asyncio.CancelledError:
                raise
            finally:
                if self.close_when_done:
                    await self.close()

        self.pump = asyncio.create_task(pump())

    async def disconnect(self, code) -> None:
        if self.pump is not None:
            self.pump.cancel()


class RequestStreamConsumer(_StreamConsumer):
    """`/ws/v1/agent/<agent_id>/request/<request_id>/?after=<seq>`"""

    full_messages = True
    close_when_done = True

    async def connect(self) -> None:
        self.caller = await self.principal()
        if self.caller is None:
            await self.close(code=UNAUTHORIZED)
            return
        kwargs = self.scope["url_route"]["kwargs"]
        try:
            self.request_row = await sync_to_async(get_request)(kwargs["request_id"], kwargs["agent_id"])
            after = int(self.query("after") or 0)
        except (ServiceError, ValueError):
            await self.close(code=NOT_FOUND)
            return
        await self.accept()
        with_tokens = self.query("stream") == "tokens"  # as ?stream=tokens on the SSE route
        await self.start_pump(request_frames(self.request_row.pk, max(0, after), tokens=with_tokens))

    async def receive_json(self, content, **kwargs) -> None:
        if not isinstance(content, dict) or content.get("type") != "interaction":
            await self.send_json({"type": "error", "error": {"code": "INVALID_MESSAGE",
                                                             "message": "expected {type: 'interaction', ...}"}})
            return
        refusal = permission_refusal(self.caller, self.scope.get("user"), "POST", "mash_runtime.change_interaction")
        if refusal is not None:
            await self.send_json({"type": "error", "error": {"code": "FORBIDDEN", "message": refusal, "status": 403}})
            return
        try:
            result = await sync_to_async(answer_interaction)(
                self.request_row.pk, content.get("interaction_id"), content.get("response"),
                self.request_row.agent.agent_id,
            )
        except ServiceError as exc:
            await self.send_json({"type": "error", "error": {"code": exc.code, "message": exc.message,
                                                             "status": exc.status}})
            return
        await self.send_json({"type": "interaction.result", "data": result})


class TelemetryTailConsumer(_StreamConsumer):
    """`/ws/v1/telemetry/?agent_id=...`: every new event, for staff users only."""

    full_messages = False
    close_when_done = False

    async def connect(self) -> None:
        user = self.scope.get("user")
        if not (user is not None and user.is_active and user.is_staff) or \
                origin_refusal(scope_headers(self.scope), Principal("staff")) is not None:
            await self.close(code=UNAUTHORIZED)
            return
        start = await sync_to_async(latest_event_id)()  # "now", before the client sees the accept
        await self.accept()
        await self.start_pump(tail_frames(self.query("agent_id"), self.query("session_id"), self.query("trace_id"),
                                          after_id=start))
