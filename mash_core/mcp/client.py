"""Sessions with MCP servers, on the official `mcp` SDK (2.x), one per server per event loop.

A worker process runs every request on one event loop, so `loop_pool()` hands each run
the same `MCPConnection` for a server: connected (and its tools listed) once, reused by
every request, connected again after a failure. The SDK's client is a structured-concurrency
object (anyio task groups), so each connection has an owner task that enters it and holds
it open; calls run as tasks of the owner's group. A transport that breaks ends the owner,
which cancels the calls in flight (each becomes an `MCPUnavailable` for its caller) and
leaves the connection ready to connect again. Closing a stdio connection lets the SDK stop
the child: stdin closed, then SIGTERM and SIGKILL to its process group (it starts the child
in a session of its own). A worker killed outright closes the child's stdin by dying, and
an MCP stdio server exits at end of input.

The `mcp` SDK is imported in here only when a connection is first made: a process whose
agents name no MCP server never loads it (tens of MiB per worker process).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import weakref
from typing import Any

from mash_core.errors import ConfigError, MashError
from mash_core.mcp.config import MCPServerConfig
from mash_core.mcp.listing import RemoteTool, checked_tools

logger = logging.getLogger("mash_core.mcp")

# An unreachable server is tried again for tool discovery at most this often, so a run
# does not wait out a connect timeout that the previous run just waited out.
RETRY_SECONDS = 30.0
MAX_TOOLS = 256
# Starting a stdio server (an interpreter and its imports) takes seconds on a loaded host:
# connecting may take this long even when the per-call timeout is shorter.
MIN_CONNECT_SECONDS = 10.0


class MCPUnavailable(MashError):
    """The server could not be reached, or the connection broke."""


class MCPTimeout(MashError):
    """The server did not answer within the configured timeout."""


class MCPCallFailed(MashError):
    """The server answered a request with a protocol error."""


def config_key(config: MCPServerConfig) -> str:
    """One connection per distinct configuration (two agents naming the same server share it).
    Header templates go in only as a hash: they may be literal tokens."""
    raw = json.dumps([config.name, config.url, config.command, list(config.args), sorted((config.env or {}).items()),
                      sorted((config.headers or {}).items()), config.cwd, config.timeout], default=str)
    return hashlib.sha256(raw.encode()).hexdigest()


def describe_error(exc: BaseException) -> str:
    """A short, secret-free account of a failure: exception groups are unwrapped to their
    first leaf; messages of the SDK and httpx name URLs and codes, never our headers."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = " ".join(str(exc).split())[:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class MCPConnection:
    """One session with one server on the event loop that made it."""

    def __init__(self, config: MCPServerConfig):
        self.config = config
        self.tools: list[RemoteTool] | None = None  # the listing of the newest session
        self.skipped: list[str] = []  # tools the listing held that failed the checks, with why
        self.last_error: str | None = None
        self.failed_at: float | None = None
        self.connected_at: float | None = None
        self.connect_ms: int | None = None
        self._client: Any = None
        self._group: Any = None
        self._owner: asyncio.Task | None = None
        self._stop: asyncio.Event | None = None
        self._lock = asyncio.Lock()

    def _describe(self, exc: BaseException) -> str:
        # An error's text may quote the URL, whose query or user info can hold a token.
        text = describe_error(exc)
        return text.replace(self.config.url, self.config.target) if self.config.url else text

    @property
    def connected(self) -> bool:
        return self._client is not None and self._owner is not None and not self._owner.done()

    async def connect(self, *, retry_after: float | None = None) -> bool:
        """Connect and list the tools unless connected already; True when this call connected.
        With `retry_after`, a failure less than that many seconds ago is raised again at once.
        Raises MCPUnavailable (or ConfigError for a header variable that is not set)."""
        async with self._lock:
            if self.connected:
                return False
            if retry_after is not None and self.failed_at is not None and time.monotonic() - self.failed_at < retry_after:
                raise MCPUnavailable(self.last_error or "unreachable")
            started = time.monotonic()
            loop = asyncio.get_running_loop()
            ready: asyncio.Future = loop.create_future()
            self._stop = asyncio.Event()
            self._owner = loop.create_task(self._own(ready), name=f"mcp-{self.config.name}")
            wait = max(self.config.timeout, MIN_CONNECT_SECONDS)
            try:
                await asyncio.wait_for(asyncio.shield(ready), wait)
            except BaseException as exc:
                await self._end_owner(cancel=True)  # still connecting: nothing to wind down gently
                ready.add_done_callback(_retrieved)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                message = (f"no answer within {wait:g} s" if isinstance(exc, TimeoutError)
                           else self._describe(exc))
                self.last_error, self.failed_at = message, time.monotonic()
                logger.warning("mcp.client.error server=%s target=%s error=%s", self.config.name, self.config.target,
                               message)
                if isinstance(exc, ConfigError):
                    raise
                raise MCPUnavailable(message) from None
            self.connected_at, self.failed_at, self.last_error = time.time(), None, None
            self.connect_ms = int((time.monotonic() - started) * 1000)
            logger.info("mcp.client.connected server=%s target=%s tools=%d duration_ms=%d", self.config.name,
                        self.config.target, len(self.tools or ()), self.connect_ms)
            return True

    async def _own(self, ready: asyncio.Future) -> None:
        import anyio

        try:
            async with _open_client(self.config) as client:
                listing = await _list_tools(client)
                self.tools, self.skipped = checked_tools(self.config, listing)
                async with anyio.create_task_group() as group:
                    self._client, self._group = client, group
                    ready.set_result(None)
                    await self._stop.wait()
                    group.cancel_scope.cancel()
        except BaseException as exc:  # whatever ended the session: its waiter and the log learn why
            if not ready.done():
                ready.set_exception(exc if isinstance(exc, Exception) else MCPUnavailable(self._describe(exc)))
            elif not (self._stop and self._stop.is_set()):
                self.last_error, self.failed_at = self._describe(exc), time.monotonic()
                logger.warning("mcp.client.error server=%s target=%s error=connection lost: %s", self.config.name,
                               self.config.target, self.last_error)
        finally:
            self._client = self._group = None
            if not ready.done():
                ready.set_exception(MCPUnavailable("the connection closed while it opened"))

    async def call(self, tool: str, arguments: dict[str, Any]) -> Any:
        """Call a tool of the server (connecting first if need be); the SDK's CallToolResult.
        Raises MCPUnavailable, MCPTimeout or MCPCallFailed."""
        if not self.connected:
            await self.connect()
        client, group = self._client, self._group
        if client is None or group is None:
            raise MCPUnavailable(self.last_error or "the connection closed")
        import anyio
        from mcp import MCPError
        from mcp_types import REQUEST_TIMEOUT

        loop = asyncio.get_running_loop()
        answer: asyncio.Future = loop.create_future()
        scopes: list = []

        async def run() -> None:
            with anyio.CancelScope() as scope:
                scopes.append(scope)
                try:
                    result = await client.call_tool(tool, arguments, read_timeout_seconds=self.config.timeout)
                except MCPError as exc:
                    if not answer.done():
                        answer.set_exception(MCPTimeout(f"no answer within {self.config.timeout:g} s")
                                             if exc.code == REQUEST_TIMEOUT else MCPCallFailed(self._describe(exc)))
                    return
                except Exception as exc:  # the transport's failures are many types (httpx, anyio, OS)
                    if not answer.done():
                        answer.set_exception(MCPUnavailable(self._describe(exc)))
                    return
                except BaseException:
                    if not answer.done():
                        answer.set_exception(MCPUnavailable("the connection closed during the call"))
                    raise
                if not answer.done():
                    answer.set_result(result)
            if not answer.done():
                answer.set_exception(MCPUnavailable("the call was cancelled"))

        group.start_soon(run)
        try:
            return await answer
        except asyncio.CancelledError:
            for scope in scopes:  # the run was cancelled: so is its call on the server's session
                scope.cancel()
            answer.add_done_callback(_retrieved)
            raise
        except MCPUnavailable:
            await self.close()  # the next call connects afresh
            raise

    async def _end_owner(self, *, cancel: bool = False) -> None:
        owner, self._owner = self._owner, None
        if self._stop is not None:
            self._stop.set()
        if owner is not None and not owner.done():
            if cancel:
                owner.cancel()
            try:
                await asyncio.wait_for(asyncio.shield(owner), 10)
            except BaseException:
                owner.cancel()
                await asyncio.gather(owner, return_exceptions=True)
        self._client = self._group = None

    async def close(self) -> None:
        """End the session (a stdio child is stopped with its process group). The last
        listing stays in `tools`: a replayed call of a server that is down still finds its tool."""
        await self._end_owner()


def _retrieved(future: asyncio.Future) -> None:
    # Nobody waits for this answer any more; reading it keeps asyncio from logging it as lost.
    if not future.cancelled():
        future.exception()


def _open_client(config: MCPServerConfig):
    """The SDK's client for `config`, entered by the caller; headers resolved now."""
    from contextlib import asynccontextmanager

    from mcp import Client, StdioServerParameters
    from mcp_types import Implementation

    info = Implementation(name="mash", version="1")
    if config.command is not None:
        from mash_core.tools.environment import tool_environment

        params = StdioServerParameters(command=config.command, args=list(config.args),
                                       env=tool_environment(config.env), cwd=config.cwd)
        return Client(params, client_info=info, cache=None, read_timeout_seconds=config.timeout)

    headers = config.resolved_headers()  # raises before anything is opened

    @asynccontextmanager
    async def opened():
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        timeout = httpx2.Timeout(config.timeout, read=max(config.timeout, 300.0))
        async with httpx2.AsyncClient(headers=headers, timeout=timeout) as http:
            transport = streamable_http_client(config.url, http_client=http)
            async with Client(transport, client_info=info, cache=None, read_timeout_seconds=config.timeout) as client:
                yield client

    return opened()


async def _list_tools(client: Any) -> list[Any]:
    tools: list[Any] = []
    cursor = None
    for _ in range(32):  # pages; a server whose cursor never ends cannot hold the connect
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if cursor is None or len(tools) >= MAX_TOOLS:
            break
    return tools[:MAX_TOOLS]


class MCPPool:
    """The connections of one event loop, by configuration."""

    def __init__(self) -> None:
        self._connections: dict[str, MCPConnection] = {}

    def connection(self, config: MCPServerConfig) -> MCPConnection:
        key = config_key(config)
        conn = self._connections.get(key)
        if conn is None:
            conn = self._connections[key] = MCPConnection(config)
        return conn

    def __len__(self) -> int:
        return len(self._connections)

    async def aclose(self) -> None:
        connections, self._connections = list(self._connections.values()), {}
        await asyncio.gather(*(c.close() for c in connections), return_exceptions=True)


_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, MCPPool] = weakref.WeakKeyDictionary()


def loop_pool() -> MCPPool:
    """The running loop's pool (made on first use)."""
    loop = asyncio.get_running_loop()
    pool = _pools.get(loop)
    if pool is None:
        pool = _pools[loop] = MCPPool()
    return pool


async def close_loop_pool() -> None:
    """Close the running loop's connections (a stopping worker calls this)."""
    pool = _pools.pop(asyncio.get_running_loop(), None)
    if pool is not None:
        await pool.aclose()
