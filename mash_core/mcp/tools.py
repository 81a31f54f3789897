"""MCP tools as ordinary tools: `MCPTool`, the checks on what a server lists, its results.

What a server sends is untrusted: a listed tool must have a usable name, a bounded
description and a bounded JSON object schema, or it is skipped (with the reason logged);
a result becomes text of bounded size without NUL bytes or lone surrogates. A server
error, a timeout or a broken connection is an error result the model can read, never an
exception out of the tool.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from mash_core.mcp.client import (
    RETRY_SECONDS,
    MCPCallFailed,
    MCPTimeout,
    MCPUnavailable,
    RemoteTool,
    loop_pool,
)
from mash_core.mcp.config import MCPServerConfig
from mash_core.mcp.names import mcp_tool_name
from mash_core.tools.base import Tool, ToolResult

logger = logging.getLogger("mash_core.mcp")

MAX_DESCRIPTION = 4000
MAX_SCHEMA_BYTES = 64 * 1024
MAX_SCHEMA_DEPTH = 32
MAX_RESULT_CHARS = 50_000
_BAD_TEXT = re.compile(r"[\x00\ud800-\udfff]")


def clean_text(text: str) -> str:
    return _BAD_TEXT.sub("\ufffd", text)


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_SCHEMA_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level)
    return level


def check_schema(schema: Any) -> str | None:
    """Why `schema` cannot be a tool's parameters, or None."""
    if not isinstance(schema, dict) or schema.get("type") != "object":
        return "its input schema is not a JSON object schema"
    try:
        text = json.dumps(schema, allow_nan=False)
    except (TypeError, ValueError):
        return "its input schema is not plain JSON"
    if len(text.encode()) > MAX_SCHEMA_BYTES:
        return f"its input schema is larger than {MAX_SCHEMA_BYTES} bytes"
    if _depth(schema) > MAX_SCHEMA_DEPTH:
        return f"its input schema is nested deeper than {MAX_SCHEMA_DEPTH}"
    if _BAD_TEXT.search(text):
        return "its input schema holds NUL bytes or lone surrogates"
    return None


def checked_tools(config: MCPServerConfig, listing: list[Any]) -> tuple[list[RemoteTool], list[str]]:
    """The usable tools of a listing (only `include_tools` when given), and why others were left out."""
    wanted = set(config.include_tools) if config.include_tools else None
    tools: list[RemoteTool] = []
    skipped: list[str] = []
    seen: set[str] = set()
    for item in listing:
        name = getattr(item, "name", None)
        if wanted is not None and name not in wanted:
            continue
        if not isinstance(name, str) or not name or len(name) > 128 or _BAD_TEXT.search(name):
            skipped.append(f"{str(name)[:60]!r}: its name is empty, longer than 128 characters or not text")
            continue
        if name in seen:
            skipped.append(f"{name!r}: listed twice")
            continue
        schema = getattr(item, "input_schema", None)
        problem = check_schema(schema)
        if problem:
            skipped.append(f"{name!r}: {problem}")
            continue
        description = getattr(item, "description", None) or getattr(item, "title", None) or ""
        if not isinstance(description, str):
            description = ""
        description = clean_text(description)[:MAX_DESCRIPTION] or f"The tool {name!r} of the MCP server {config.name!r}."
        seen.add(name)
        tools.append(RemoteTool(name=name, description=description, input_schema=json.loads(json.dumps(schema))))
    for reason in skipped:
        logger.warning("MCP server %r: tool %s; it is not registered", config.name, reason)
    if wanted is not None and (missing := wanted - {getattr(item, "name", None) for item in listing}):
        logger.warning("MCP server %r does not list include_tools %s", config.name, ", ".join(sorted(missing)))
    return tools, skipped


def result_text(result: Any) -> str:
    """The text of a CallToolResult: text blocks as they are, other blocks named, the
    structured content when there is no text; cut to MAX_RESULT_CHARS with a note."""
    parts: list[str] = []
    for block in getattr(result, "content", None) or []:
        kind = getattr(block, "type", "")
        if kind == "text":
            parts.append(str(getattr(block, "text", "")))
        elif kind in ("image", "audio"):
            parts.append(f"[{kind} content ({getattr(block, 'mime_type', '') or 'unknown type'}) left out]")
        elif kind == "resource":
            resource = getattr(block, "resource", None)
            text = getattr(resource, "text", None)
            parts.append(str(text) if isinstance(text, str) else f"[resource {getattr(resource, 'uri', '')} left out]")
        elif kind == "resource_link":
            parts.append(f"[resource link: {getattr(block, 'uri', '')}]")
        else:
            parts.append(f"[{kind or 'unknown'} content left out]")
    structured = getattr(result, "structured_content", None)
    if not parts and structured is not None:
        try:
            parts.append(json.dumps(structured, ensure_ascii=False, default=str))
        except (TypeError, ValueError):
            parts.append(str(structured))
    text = clean_text("\n".join(parts))
    if len(text) > MAX_RESULT_CHARS:
        text = text[:MAX_RESULT_CHARS] + f"\n[truncated: the result had {len(text)} characters, {MAX_RESULT_CHARS} shown]"
    return text


class MCPTool(Tool):
    """A tool of an MCP server, registered as `mcp_<server>_<tool>`. Calls go through the
    running loop's pool, so every run of a worker process shares one session per server.
    `aclose` (at the end of a run) leaves the session open for the next run."""

    def __init__(self, config: MCPServerConfig, remote: RemoteTool):
        self.config = config
        self.mcp_server = config.name
        self.mcp_tool = remote.name
        self.name = mcp_tool_name(config.name, remote.name)
        self.description = remote.description
        self.parameters = remote.input_schema
        self.requires_approval = config.requires_approval

    def _meta(self, **extra: Any) -> dict[str, Any]:
        return {"mcp_server": self.mcp_server, "mcp_tool": self.mcp_tool, **extra}

    async def execute(self, args: dict[str, Any]) -> ToolResult:
        where = f"MCP server '{self.mcp_server}'"
        try:
            result = await loop_pool().connection(self.config).call(self.mcp_tool, args)
        except MCPTimeout as exc:
            return ToolResult.error(f"{where} did not answer {self.mcp_tool}: {exc}", **self._meta(mcp_error="timeout"))
        except MCPUnavailable as exc:
            return ToolResult.error(f"{where} is unreachable: {exc}", **self._meta(mcp_error="unreachable"))
        except MCPCallFailed as exc:
            return ToolResult.error(f"{where} refused {self.mcp_tool}: {exc}", **self._meta(mcp_error="server"))
        text = result_text(result)
        if getattr(result, "is_error", False):
            return ToolResult.error(text or f"{self.mcp_tool} failed", **self._meta(mcp_error="tool"))
        return ToolResult.success(text, **self._meta())


async def discover_tools(config: MCPServerConfig, *, retry_after: float | None = RETRY_SECONDS) -> list[MCPTool]:
    """The tools of `config`'s server, connecting the running loop's session if need be.
    Raises MCPUnavailable when it cannot be reached (at most once per `retry_after`)."""
    conn = loop_pool().connection(config)
    await conn.connect(retry_after=retry_after)
    return [MCPTool(config, remote) for remote in conn.tools or ()]
