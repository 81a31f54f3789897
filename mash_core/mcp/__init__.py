"""MCP servers as tool sources: `MCPServerConfig`, the client sessions, `MCPTool`.

Importing this package does not import the `mcp` SDK; the first connection does.
"""

from mash_core.mcp.client import MCPConnection, MCPPool, MCPTimeout, MCPUnavailable, close_loop_pool, loop_pool
from mash_core.mcp.config import MCPServerConfig
from mash_core.mcp.names import mcp_tool_name
from mash_core.mcp.tools import MCPTool, discover_tools

__all__ = [
    "MCPConnection",
    "MCPPool",
    "MCPServerConfig",
    "MCPTimeout",
    "MCPTool",
    "MCPUnavailable",
    "close_loop_pool",
    "discover_tools",
    "loop_pool",
    "mcp_tool_name",
]
