"""The MCP servers of hosted agents: their tools in each run, and the trace events.

`AgentSpec.build_mcp_servers()` is read once per spec (`servers_of`). Each run, on the
worker's event loop, `attach` adds the servers' tools (`mcp_<server>_<tool>`) to the
run's tool registry through the loop's shared sessions (`mash_core.mcp.loop_pool`): the
first run of a process connects, later ones reuse the session. A name that another tool
of the agent has already is a `ConfigError`. A server that cannot be reached is no
failure: the run goes on without its tools (or with the tools its last session listed, so
a replayed call still finds its tool and its stored result), and the trace gets an
`mcp.client.error` event; `mcp.client.connected` marks the run that connected.

An MCP tool is an ordinary tool to the durable machinery: its call is a `tool.<i>.<j>`
step, checkpointed and replayed like any other, and `requires_approval` goes through the
usual approval interaction. `tool_step` adds `mcp.tool.call`, then `mcp.tool.result` or
`mcp.tool.error`, around it, with the step's key (a replay emits them again and the
dedupe keys drop them).

The `mcp` SDK is imported only when an agent has servers (`mash_core.mcp` itself does not).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from mash_core.errors import ConfigError

if TYPE_CHECKING:
    from mash_core.agent import Agent
    from mash_runtime.host import AgentHost, HostedAgent

logger = logging.getLogger("mash_runtime.mcp")

_servers: dict[int, tuple[Any, tuple]] = {}


def check_servers(spec: Any) -> tuple:
    """The validated `build_mcp_servers()` of a spec: MCPServerConfig objects with distinct names."""
    configs = spec.build_mcp_servers()
    if not configs:
        return ()
    from mash_core.mcp import MCPServerConfig

    agent_id = spec.get_agent_id()
    if not isinstance(configs, (list, tuple)):
        raise ConfigError(f"agent {agent_id!r}: build_mcp_servers() must return a list of MCPServerConfig")
    names: set[str] = set()
    for config in configs:
        if not isinstance(config, MCPServerConfig):
            raise ConfigError(f"agent {agent_id!r}: build_mcp_servers() returned {type(config).__name__}, "
                              f"not an MCPServerConfig")
        if config.name in names:
            raise ConfigError(f"agent {agent_id!r}: two MCP servers are named {config.name!r}")
        names.add(config.name)
    return tuple(configs)


def servers_of(hosted: HostedAgent) -> tuple:
    """The agent's MCP servers, built once per spec object."""
    held = _servers.get(id(hosted.spec))
    if held is None or held[0] is not hosted.spec:
        held = _servers[id(hosted.spec)] = (hosted.spec, check_servers(hosted.spec))
    return held[1]


def has_mcp_servers(hosted: HostedAgent) -> bool:
    """Whether runs of this agent attach MCP tools (True too when its servers are invalid:
    the run then fails with that ConfigError)."""
    try:
        return bool(servers_of(hosted))
    except ConfigError:
        return True


Emit = Callable[..., Awaitable[None]]


async def with_mcp_tools(run: Any, agent: Agent, hosted: HostedAgent, emit: Emit, *, attempt: int = 0) -> Any:
    """The agent loop `run` (a coroutine), once the MCP tools are attached: inside the run's
    task, so a cancel interrupts a slow connect and a ConfigError fails the request."""
    try:
        await attach(agent, hosted, emit, attempt=attempt)
    except BaseException:
        run.close()
        raise
    return await run


async def attach(agent: Agent, hosted: HostedAgent, emit: Emit | None = None, *, attempt: int = 0) -> list[str]:
    """Add the tools of the agent's MCP servers to `agent.tools`; returns their names."""
    servers = servers_of(hosted)
    if not servers:
        return []
    from mash_core.mcp import MCPTool, MCPUnavailable, loop_pool
    from mash_core.mcp.client import RETRY_SECONDS

    pool = loop_pool()

    async def reach(config) -> tuple[Any, Any, str | None, bool]:
        conn = pool.connection(config)
        try:
            return config, conn, None, await conn.connect(retry_after=RETRY_SECONDS)
        except (MCPUnavailable, ConfigError) as exc:
            return config, conn, str(exc), False

    added: list[str] = []
    for config, conn, error, connected in await asyncio.gather(*(reach(c) for c in servers)):
        base = {"server": config.name, "transport": config.transport, "target": config.target}
        if emit is not None and error is not None:
            await emit("mcp.client.error", {**base, "error": error, "tools_known": len(conn.tools or ())},
                       step_key=f"mcp.{config.name}.{attempt}")
        elif emit is not None and connected:
            await emit("mcp.client.connected", {**base, "tools": [t.name for t in conn.tools or ()],
                                                "skipped": conn.skipped, "duration_ms": conn.connect_ms},
                       step_key=f"mcp.{config.name}.{attempt}")
        for remote in conn.tools or ():
            tool = MCPTool(config, remote)
            if tool.name in agent.tools:
                raise ConfigError(
                    f"agent {hosted.agent_id!r}: tool {remote.name!r} of MCP server {config.name!r} is registered "
                    f"as {tool.name!r}, a name another tool of the agent has already; rename that tool, or leave "
                    f"this one out with include_tools"
                )
            agent.tools.register(tool)
            added.append(tool.name)
    return added


def is_mcp_tool(tool: Any) -> bool:
    return "mash_core.mcp.tools" in sys.modules and isinstance(tool, sys.modules["mash_core.mcp.tools"].MCPTool)


async def tool_step(emit: Emit, key: str, tool: Any, call: Any, step: Callable[[], Awaitable[Any]]) -> Any:
    """Run the durable step of an MCP tool call between its `mcp.tool.*` events."""
    loop_index = _loop_index(key)
    base = {"server": tool.mcp_server, "tool": tool.mcp_tool, "tool_name": tool.name, "tool_call_id": call.id}
    await emit("mcp.tool.call", {**base, "arguments": call.arguments}, loop_index=loop_index, step_key=key)
    result = await step()
    done = {**base, "duration_ms": result.metadata.get("duration_ms")}
    if result.is_error:
        await emit("mcp.tool.error", {**done, "error": result.content[:2000], "kind": result.metadata.get("mcp_error")},
                   loop_index=loop_index, step_key=key)
    else:
        await emit("mcp.tool.result", {**done, "chars": len(result.content)}, loop_index=loop_index, step_key=key)
    return result


def _loop_index(key: str) -> int | None:
    parts = key.split(".")
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


# -- a worker process's start and stop ------------------------------------------------------


async def warm_up(host: AgentHost, build_agent: Callable[[HostedAgent], Awaitable[Agent]]) -> None:
    """Connect every MCP server of the host's agents on this loop, so the first runs find
    their sessions open. An unreachable server is logged (`mcp.client.error`), not raised;
    a tool whose name another tool of the agent has is logged as the ConfigError each run
    of that agent will fail with. `build_agent` builds an agent as a run would (on a
    database thread: published skills are read)."""
    from mash_core.mcp import MCPUnavailable, loop_pool

    pool = loop_pool()
    started = time.monotonic()
    for hosted in host.agents.values():
        try:
            servers = servers_of(hosted)
        except ConfigError as exc:
            logger.error("%s", exc)
            continue
        if not servers:
            continue

        async def reach(config):
            try:
                await pool.connection(config).connect()
            except (MCPUnavailable, ConfigError):
                pass  # logged by the connection as mcp.client.error

        await asyncio.gather(*(reach(c) for c in servers))
        agent = await build_agent(hosted)
        try:
            await attach(agent, hosted)
        except ConfigError as exc:
            logger.error("%s", exc)
        finally:
            await agent.tools.aclose()
    logger.info("MCP servers reached in %d ms", int((time.monotonic() - started) * 1000))


def warm_up_worker(runner: Any) -> None:
    """At a worker process's start (its main thread): `warm_up` on the runner's loop, when
    the host's agents have MCP servers. It does not wait for it: the worker takes tasks at
    once, and a run that needs a server still connecting waits for that one only."""
    try:
        from mash_runtime.host import get_host

        host = get_host()
        if not has_servers(host):
            return
        from mash_runtime.run.prepare import build_agent

        done = asyncio.run_coroutine_threadsafe(warm_up(host, runner.db(build_agent)), runner.loop)
        done.add_done_callback(_log_failure)
    except Exception:
        logger.warning("connecting the MCP servers at worker start failed; runs connect them", exc_info=True)


def _log_failure(done) -> None:
    if not done.cancelled() and done.exception() is not None:
        logger.warning("connecting the MCP servers at worker start failed; runs connect them",
                       exc_info=done.exception())


def has_servers(host: AgentHost) -> bool:
    for hosted in host.agents.values():
        try:
            if servers_of(hosted):
                return True
        except ConfigError:
            return True
    return False


def check_at_start(host: AgentHost, build_agent: Callable[[HostedAgent], Agent]) -> list[str]:
    """For `mash host serve` before it starts anything: reach each MCP server of the host's
    agents once, list their tools as a run would, and raise the ConfigError of a name that
    another tool of the agent has (a host that cannot run that agent must not start).
    Returns one line per server it could not reach: a warning, as runs carry on without it.
    Its sessions close again (stdio servers stop): the workers open their own."""
    agents = []
    for hosted in host.agents.values():
        if servers_of(hosted):  # a bad server list is its ConfigError, raised here
            agents.append((hosted, build_agent(hosted)))
    if not agents:
        return []

    async def check() -> list[str]:
        unreachable: list[str] = []

        async def emit(event_type: str, payload: dict, step_key: str = "") -> None:
            if event_type == "mcp.client.error":
                unreachable.append(f"agent {hosted.agent_id!r}: MCP server {payload['server']!r} "
                                   f"({payload['target']}) not reachable: {payload['error']}")

        try:
            for hosted, agent in agents:
                try:
                    await attach(agent, hosted, emit)
                finally:
                    await agent.tools.aclose()
        finally:
            await close_sessions()
        return unreachable

    return asyncio.run(check())


async def close_sessions() -> None:
    """Close this loop's MCP sessions (stdio servers stop with their process group)."""
    if "mash_core.mcp.client" in sys.modules:
        from mash_core.mcp import close_loop_pool

        await close_loop_pool()
