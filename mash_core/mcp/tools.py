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
from typing import Any

from mash_core.mcp.client import RETRY_SECONDS, MCPCallFailed, MCPTimeout, MCPUnavailable, loop_pool
from mash_core.mcp.config import MCPServerConfig
from mash_core.mcp.listing import RemoteTool, clean_text
from mash_core.mcp.names import mcp_tool_name
from mash_core.tools.base import Tool, ToolResult

logger = logging.getLogger("mash_core.mcp")

MAX_RESULT_CHARS = 50_000


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
