"""The MCP server behind `/mcp` (mounted and guarded by mash_api.mcp_endpoint).

One tool per agent a client may address (`read_services.list_agents`: the primary and its
subagents), named by its agent id, taking `message` and an optional `session_id`. A call
submits a durable request through `services.submit_request`, as the HTTP API does,
follows its stored events with the SSE streams' reader (`streams.request_frames`) and
answers the final text, with `{agent_id, request_id, session_id, status, text}` as
structured content. A failed or cancelled request is a tool error result carrying its
error code and message; a request that stops to ask its user (an approval, AskUser) is
answered at once with what it asks and how to answer it (the interaction route), since
an MCP client has no way to answer it here. While the run goes on, a client that sent a
progress token gets a progress notification for each step and one every few seconds
of silence (a long model call), which also keeps clients that time out idle calls waiting.

The request is durable: a client that disconnects or cancels the call leaves it running
(its id is in the first progress message and in every answer); cancel it through the API.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

import anyio
import mcp_types as types
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import InterfaceError, OperationalError
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError

from mash_api.errors import BLANK_CODES, UNAVAILABLE, validation_errors
from mash_api.serializers import SubmitRequestSerializer
from mash_api.stream_readers import request_frames
from mash_core.tools.base import object_schema
from mash_runtime import read_services, services
from mash_runtime.errors import ServiceError
from mash_runtime.host import get_host

logger = logging.getLogger("mash_api.mcp")

# A progress notification at least this often while a run is silent.
HEARTBEAT_SECONDS = 5.0

ARGUMENTS = ("message", "session_id")

INPUT_SCHEMA: dict[str, Any] = object_schema({
    "message": {"type": "string", "minLength": 1,
                "maxLength": SubmitRequestSerializer().fields["message"].max_length,
                "description": "What to ask the agent."},
    "session_id": {"type": "string", "maxLength": SubmitRequestSerializer().fields["session_id"].max_length,
                   "description": "Continue a conversation: the session_id an earlier call answered, or a "
                                  "name of your own. Omitted, the agent's default session (shared by every "
                                  "caller that omits it)."},
}, required=["message"])

OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "agent_id": {"type": "string"},
        "request_id": {"type": "string"},
        "session_id": {"type": "string"},
        "status": {"type": "string", "enum": ["completed", "awaiting_input"]},
        "text": {"type": "string", "description": "The agent's final answer (completed)."},
        "interactions": {"type": "array", "items": {"type": "object"},
                         "description": "What the agent waits for (awaiting_input)."},
    },
    "required": ["agent_id", "request_id", "session_id", "status"],
}


class InvalidArguments(ValueError):
    def __init__(self, code: str, message: str, errors: list[dict[str, Any]]):
        super().__init__(message)
        self.code, self.message, self.errors = code, message, errors


def clean_arguments(arguments: Any) -> tuple[str, str | None]:
    """`(message, session_id)` from a call's untrusted arguments, by the submit route's own rules
    (its serializer), or InvalidArguments with the API's code (INVALID_REQUEST for a missing or
    blank value, VALIDATION_ERROR for any other) and `[{loc, msg, type}]`."""
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        errors = [{"loc": ["arguments"], "msg": "must be an object", "type": "type_error"}]
        raise InvalidArguments("VALIDATION_ERROR", "arguments must be an object", errors)
    unknown = sorted(str(name) for name in arguments if name not in ARGUMENTS)
    if unknown:
        errors = [{"loc": ["arguments", name], "msg": "unknown argument (this tool takes message and session_id)",
                   "type": "extra_forbidden"} for name in unknown]
        raise InvalidArguments("VALIDATION_ERROR", f"unknown argument(s) {', '.join(unknown)}: this tool takes "
                                                   "message and, optionally, session_id", errors)
    serializer = SubmitRequestSerializer(data={name: arguments[name] for name in ARGUMENTS if name in arguments})
    if not serializer.is_valid():
        errors = validation_errors(serializer.errors, ("arguments",))
        code = "INVALID_REQUEST" if all(e["type"] in BLANK_CODES for e in errors) else "VALIDATION_ERROR"
        raise InvalidArguments(code, "; ".join(f"{e['loc'][-1]}: {e['msg']}" for e in errors), errors)
    data = serializer.validated_data
    return data["message"], (data.get("session_id") or None)


def error_result(code: str, message: str, **details: Any) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=f"{code}: {message}")], is_error=True,
                                structured_content={"error_code": code, "error": message, **details})


def listed_agent(name: str):
    hosted = get_host().get(name)
    return hosted if hosted is not None and hosted.role != "workflow" else None


def tool_for(hosted) -> types.Tool:
    meta = hosted.metadata
    title = (meta.display_name if meta else "") or hosted.agent_id
    about = [f"Ask the Mash agent '{hosted.agent_id}' ({hosted.role}) and get its final answer."]
    if meta is not None:
        about += [text for text in (meta.description, meta.usage_guidance) if text]
        if meta.capabilities:
            about.append("Capabilities: " + ", ".join(meta.capabilities))
    about.append("Its runs are durable requests of this host: the answer's request_id finds one in the API.")
    return types.Tool(name=hosted.agent_id, title=title, description="\n".join(about), input_schema=INPUT_SCHEMA,
                      output_schema=OUTPUT_SCHEMA,
                      annotations=types.ToolAnnotations(title=title, read_only_hint=False, open_world_hint=True))


async def list_tools(ctx, params) -> types.ListToolsResult:
    # On a thread: the first call in a process loads the host app (imports, its builder's work).
    host = await sync_to_async(get_host)()
    return types.ListToolsResult(tools=[tool_for(hosted) for hosted in host.listed_agents()])


class Progress:
    """Progress notifications of one call, numbered 1, 2, ... (a client's progress must only grow).

    A no-op when the client sent no progress token (the SDK drops them then)."""

    def __init__(self, session) -> None:
        self.session = session
        self.count = 0
        self.started = self.last = time.monotonic()
        self.lock = anyio.Lock()

    async def report(self, message: str) -> None:
        async with self.lock:  # the heartbeat reports too: numbers must reach the client in order
            self.count += 1
            self.last = time.monotonic()
            try:
                await self.session.report_progress(self.count, None, message)
            except Exception:  # the client is gone; the answer cannot reach it either
                logger.debug("progress notification not sent", exc_info=True)

    async def heartbeat(self) -> None:
        while True:
            await anyio.sleep(max(0.0, self.last + HEARTBEAT_SECONDS - time.monotonic()))
            if time.monotonic() - self.last >= HEARTBEAT_SECONDS:
                await self.report(f"still running ({time.monotonic() - self.started:.0f} s)")


def step_message(event) -> str | None:
    """What a stored event says about the run's progress, or None when it says nothing new."""
    payload = event.payload or {}
    step = f"step {event.loop_index + 1}" if isinstance(event.loop_index, int) else "step"
    kind = event.event_type
    if kind == "request.started":
        return "started"
    if kind == "request.waiting":
        return "waiting for an earlier request of its session to finish"
    if kind == "runtime.llm.think.completed":
        calls = [c.get("name") for c in payload.get("tool_calls") or () if isinstance(c, dict)]
        return f"{step}: calling {', '.join(map(str, calls))}" if calls else f"{step}: answering"
    if kind in ("runtime.tool.call.completed", "runtime.subagent.call.completed"):
        failed = isinstance(payload.get("result"), dict) and payload["result"].get("is_error")
        return f"{step}: {payload.get('tool_name', 'tool')} {'failed' if failed else 'done'}"
    return None


def interaction_text(agent_id: str, request_id: str, pending: list[dict[str, Any]]) -> str:
    lines = [f"The agent is waiting for its user's input; request {request_id} is parked until it is answered:"]
    for item in pending:
        options = (item.get("schema") or {}).get("options")
        lines.append(f"- {item.get('type')} {item.get('interaction_id')}: {item.get('prompt')}"
                     + (f" (options: {', '.join(map(str, options))})" if options else "")
                     + (f", within {item['timeout_seconds']} s" if item.get("timeout_seconds") else ""))
    lines.append(f"Answer with POST /api/v1/agent/{agent_id}/request/{request_id}/interaction "
                 '{"interaction_id": ..., "response": ...}; its events stream at '
                 f"/api/v1/agent/{agent_id}/request/{request_id}/events.")
    return "\n".join(lines)


async def follow(accepted: dict[str, Any], progress: Progress) -> types.CallToolResult:
    """Follow a submitted request's events to its answer: its terminal event, or the end of a
    batch that leaves it waiting for its user."""
    agent_id, request_id, session_id = accepted["agent_id"], accepted["request_id"], accepted["session_id"]
    ids = {"agent_id": agent_id, "request_id": request_id, "session_id": session_id}
    pending: dict[str, dict[str, Any]] = {}
    async for frame in request_frames(request_id):
        event = frame.event
        if event is None:
            continue  # a keep-alive: the heartbeat speaks for silences
        data = event.wire_data()
        if event.event_type == "request.completed":
            text = str((data.get("response") or {}).get("text") or "")
            return types.CallToolResult(content=[types.TextContent(text=text)],
                                        structured_content={**ids, "status": "completed", "text": text})
        if event.event_type == "request.error":
            status = "cancelled" if data.get("error_code") == "cancelled" else "failed"
            return error_result(str(data.get("error_code") or "ERROR"), str(data.get("error") or "request failed"),
                                retryable=bool(data.get("retryable")), status=status, **ids)
        if event.event_type == "request.interaction.create":
            pending[data.get("interaction_id")] = {key: data.get(key) for key in (
                "interaction_id", "type", "prompt", "schema", "timeout_seconds")}
        elif event.event_type == "request.interaction.ack":
            pending.pop(data.get("interaction_id"), None)
        elif (message := step_message(event)) is not None:
            await progress.report(message)
        if pending and not frame.more:
            waiting = list(pending.values())
            return types.CallToolResult(
                content=[types.TextContent(text=interaction_text(agent_id, request_id, waiting))],
                structured_content={**ids, "status": "awaiting_input", "interactions": waiting})
    # The reader ends only after a terminal event, or on finding the request finished at once.
    status = await sync_to_async(services.get_request_status)(request_id, agent_id)
    return error_result(str(status.get("error_code") or "ERROR"), str(status.get("error") or status["status"]),
                        status=status["status"], **ids)


def submit(agent_id: str, message: str, session_id: str | None) -> tuple[dict[str, Any], str | None]:
    accepted = services.submit_request(agent_id, message, session_id=session_id)
    return accepted, read_services.no_worker_warning()


async def call_tool(ctx, params: types.CallToolRequestParams) -> types.CallToolResult:
    hosted = await sync_to_async(listed_agent)(params.name)
    if hosted is None:
        raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {params.name}")
    try:
        message, session_id = clean_arguments(params.arguments)
    except InvalidArguments as exc:
        return error_result(exc.code, exc.message, errors=exc.errors)
    try:
        accepted, warning = await sync_to_async(submit)(hosted.agent_id, message, session_id)
    except ServiceError as exc:
        return error_result(exc.code, exc.message, **exc.details)
    except (OperationalError, InterfaceError):
        logger.warning("MCP submit: database unavailable", exc_info=True)
        return error_result(UNAVAILABLE[0], UNAVAILABLE[1], **UNAVAILABLE[2])
    progress = Progress(ctx.session)
    await progress.report(f"request {accepted['request_id']} accepted (session {accepted['session_id']})"
                          + (f"; {warning}" if warning else ""))
    async with anyio.create_task_group() as group:
        group.start_soon(progress.heartbeat)
        try:
            return await follow(accepted, progress)
        except (OperationalError, InterfaceError):
            logger.warning("MCP call: database unavailable while following %s", accepted["request_id"], exc_info=True)
            return error_result(UNAVAILABLE[0], "The database stopped answering while the call waited; the request "
                                "goes on: follow it through the API", request_id=accepted["request_id"],
                                session_id=accepted["session_id"], agent_id=hosted.agent_id, retryable=True)
        finally:
            group.cancel_scope.cancel()


def tool_input_schema(name: str) -> dict[str, Any] | None:
    return INPUT_SCHEMA if listed_agent(name) is not None else None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mash-django")
    except PackageNotFoundError:
        return ""


@functools.cache
def server() -> Server:
    return Server("mash", version=_version(), title="Mash host",
                  instructions="Each tool is an agent of this Mash host: send it a message, get its answer. Pass "
                               "the session_id an answer gave to continue that conversation.",
                  on_list_tools=list_tools, on_call_tool=call_tool, get_tool_input_schema=tool_input_schema)


async def handle(scope, receive, send) -> None:
    """Serve one `/mcp` request (already authenticated).

    Stateless: each POST stands alone (no `Mcp-Session-Id`), so any web process serves any
    request of a client and nothing outlives the request. The session manager runs the
    server's tasks in a task group that its `run()` opens, meant for an ASGI lifespan,
    which daphne does not run; a manager per request keeps that task group inside the
    request's own task, so a disconnect or a shutdown cancels exactly this request's tasks
    and there is no long-lived task to start, watch or restart.
    """
    manager = StreamableHTTPSessionManager(server(), stateless=True,
                                           max_request_body_size=settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
    async with manager.run():
        await manager.handle_request(scope, receive, send)
