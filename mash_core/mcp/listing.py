"""A server's tool listing checked before its tools are offered: names, descriptions and
input schemas bounded and plain JSON (`checked_tools`), as `RemoteTool`s.

A leaf of the package: the connection checks the listing it gets, the tool adapters
wrap what passed.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from mash_core.mcp.config import MCPServerConfig

logger = logging.getLogger("mash_core.mcp")

MAX_DESCRIPTION = 4000
MAX_SCHEMA_BYTES = 64 * 1024
MAX_SCHEMA_DEPTH = 32
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


@dataclass(frozen=True)
class RemoteTool:
    """One tool as the server lists it (already checked by `checked_tools`)."""

    name: str
    description: str
    input_schema: dict[str, Any]
