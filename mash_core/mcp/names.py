"""Tool names for MCP tools: `mcp_<server>_<tool>` within the models' charset.

Providers accept tool names matching `^[a-zA-Z0-9_-]{1,64}$`; MCP servers name tools as
they like (`get.weather`, `repo/search`, names in any script). Every other character
becomes `_`; a name that still does not fit is cut and given a short hash of the full
name, so two long names that share a prefix stay apart.
"""

from __future__ import annotations

import hashlib
import re

from mash_core.tools.base import TOOL_NAME_RE

MAX_NAME = 64
_OUTSIDE = re.compile(r"[^A-Za-z0-9_-]")


def mcp_tool_name(server: str, tool: str) -> str:
    """The registered name of `tool` of `server` (deterministic: the same on every process)."""
    name = f"mcp_{_OUTSIDE.sub('_', server)}_{_OUTSIDE.sub('_', tool) or '_'}"
    if len(name) > MAX_NAME:
        digest = hashlib.sha256(f"{server}\x00{tool}".encode()).hexdigest()[:8]
        name = f"{name[:MAX_NAME - 9]}_{digest}"
    assert TOOL_NAME_RE.match(name), name
    return name
