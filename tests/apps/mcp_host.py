"""A scripted host whose agent uses real MCP servers (tests/fakes/mcp_server.py).

Configured from the environment, so worker processes started by e2e tests build the same:
- MCP_TEST_LOG: the call log the servers append to (MCP_FAKE_LOG of the fake);
- `local` (stdio, every tool) and `gated` (stdio, only `echo`, requires approval) always;
- `web` (Streamable HTTP) when MCP_TEST_HTTP_URL is set, with
  `Authorization: Bearer ${MCP_TEST_TOKEN}` (the value is read when connecting);
- MCP_TEST_TIMEOUT: the servers' timeout (seconds);
- MCP_TEST_CLASH: the agent also has its own tool named `mcp_local_echo`.
"""

from __future__ import annotations

import os

from mash_core.mcp import MCPServerConfig
from mash_core.tools import FunctionTool, ToolRegistry
from mash_runtime import HostBuilder
from tests.apps.engine_host import ScriptedSpec
from tests.fakes.mcp_server import stdio_config


class MCPSpec(ScriptedSpec):
    def build_tools(self) -> ToolRegistry:
        tools = super().build_tools()
        if os.environ.get("MCP_TEST_CLASH"):
            tools.register(FunctionTool(lambda: "mine", name="mcp_local_echo", description="Not the MCP one."))
        return tools

    def build_mcp_servers(self) -> list[MCPServerConfig]:
        log = os.environ.get("MCP_TEST_LOG", "")
        timeout = float(os.environ.get("MCP_TEST_TIMEOUT") or 30)
        servers = [
            stdio_config("local", log=log, timeout=timeout),
            stdio_config("gated", log=log, timeout=timeout, requires_approval=True, include_tools=["echo"]),
        ]
        if os.environ.get("MCP_TEST_HTTP_URL"):
            servers.append(MCPServerConfig("web", url=os.environ["MCP_TEST_HTTP_URL"], timeout=timeout,
                                           headers={"Authorization": "Bearer ${MCP_TEST_TOKEN}"}))
        return servers


def build_host():
    return HostBuilder().primary(MCPSpec()).build()
