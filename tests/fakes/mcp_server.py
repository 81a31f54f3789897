"""A real MCP server for the tests, on the official SDK's `MCPServer`, run as its own process.

    python tests/fakes/mcp_server.py stdio
    python tests/fakes/mcp_server.py http PORT [--token TOKEN]

Over HTTP it serves Streamable HTTP at `/mcp` on 127.0.0.1:PORT; with `--token` (or
MCP_FAKE_TOKEN) every request must carry `Authorization: Bearer TOKEN`, else 401.
Every tool call appends one JSON line `{"tool", "args", "pid"}` to the file MCP_FAKE_LOG
names (when set) before it does anything, so tests count calls across processes.
`slow` waits `seconds`, or until the file `until` names exists, which lets a test hold a
call open while it kills the worker that made it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from mcp.server import MCPServer

server = MCPServer("fake", instructions="A test server", log_level="WARNING")


def _log(tool: str, **args) -> None:
    path = os.environ.get("MCP_FAKE_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"tool": tool, "args": args, "pid": os.getpid()}) + "\n")


@server.tool(description="Echo the text back.")
def echo(text: str) -> str:
    _log("echo", text=text)
    return text


@server.tool(description="Add two integers.")
def add(a: int, b: int) -> int:
    _log("add", a=a, b=b)
    return a + b


@server.tool(name="get.weather", description="Weather for a city (a name the model's charset does not allow).")
def get_weather(city: str) -> str:
    _log("get.weather", city=city)
    return f"sunny in {city}"


@server.tool(description="Wait, then answer.")
async def slow(seconds: float = 30.0, until: str = "") -> str:
    _log("slow", seconds=seconds, until=until)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        if until and Path(until).exists():
            break
        await asyncio.sleep(0.05)
    return "done waiting"


@server.tool(description="Always fails.")
def fail(message: str = "it broke") -> str:
    from mcp.server.mcpserver.exceptions import ToolError

    _log("fail", message=message)
    raise ToolError(message)


@server.tool(description="The value of an environment variable of this server process, or '(unset)'.")
def env(name: str) -> str:
    _log("env", name=name)
    return os.environ.get(name, "(unset)")


@server.tool(description="A long text of n characters.")
def big(n: int) -> str:
    _log("big", n=n)
    return "x" * n


def _serve_http(port: int, token: str) -> None:
    import uvicorn
    from starlette.responses import PlainTextResponse

    app = server.streamable_http_app()

    async def guarded(scope, receive, send):
        if token and scope["type"] == "http":
            headers = dict(scope.get("headers") or [])
            if headers.get(b"authorization", b"").decode() != f"Bearer {token}":
                await PlainTextResponse("unauthorized", status_code=401)(scope, receive, send)
                return
        await app(scope, receive, send)

    uvicorn.run(guarded, host="127.0.0.1", port=port, log_level="warning", lifespan="on")


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in ("stdio", "http"):
        sys.exit("usage: mcp_server.py stdio | http PORT [--token TOKEN]")
    if argv[0] == "stdio":
        server.run("stdio")
        return
    token = os.environ.get("MCP_FAKE_TOKEN", "")
    if "--token" in argv:
        token = argv[argv.index("--token") + 1]
    _serve_http(int(argv[1]), token)


if __name__ == "__main__":
    main(sys.argv[1:])


# -- for the tests: the server as a child process ------------------------------------------

SCRIPT = Path(__file__).resolve()


def stdio_config(name: str = "fake", *, log: str | Path = "", env: dict | None = None, **kwargs):
    """An MCPServerConfig that starts this script over stdio with the test interpreter (it
    gets no variable of ours but those in `env`: the call log is passed as one)."""
    from mash_core.mcp import MCPServerConfig

    env = {**(env or {}), **({"MCP_FAKE_LOG": str(log)} if log else {})}
    return MCPServerConfig(name, command=sys.executable, args=[str(SCRIPT), "stdio"], env=env or None, **kwargs)


class HTTPServerProcess:
    """This script serving Streamable HTTP on a free loopback port, as a child process."""

    def __init__(self, token: str = "", log: str = "") -> None:
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.token, self.log = token, log
        self.proc = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self, timeout: float = 30.0) -> HTTPServerProcess:
        import socket
        import subprocess
        import time

        env = {**os.environ, "MCP_FAKE_TOKEN": self.token, "MCP_FAKE_LOG": self.log}
        self.proc = subprocess.Popen([sys.executable, str(SCRIPT), "http", str(self.port)], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the MCP test server exited with {self.proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the MCP test server did not listen in time")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


def calls(log: str | Path) -> list[dict]:
    """The calls the servers wrote to the MCP_FAKE_LOG file, in order."""
    path = Path(log)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
