"""`MCPServerConfig`: one MCP server an agent uses, validated on construction.

Nothing here imports the `mcp` SDK: a host whose agents name no server never loads it.
Header values may name environment variables (`${GITHUB_TOKEN}`); they are resolved only
when a connection is made (`resolved_headers`), through `mash_core.secrets` (so
`GITHUB_TOKEN_FILE` works too), and the result is handed to the HTTP client, never kept on
the config, put in its `repr`, or logged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from mash_core.errors import ConfigError
from mash_core.secrets import read_secret
from mash_core.tools.environment import check_tool_env

SERVER_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP token (RFC 9110)
MAX_TIMEOUT_SECONDS = 600.0


@dataclass(frozen=True, repr=False, eq=False)
class MCPServerConfig:
    """An MCP server: exactly one of `url` (Streamable HTTP) or `command` (a stdio child).

    - `headers`: sent with every HTTP request; `${NAME}` in a value is replaced by the
      server variable NAME (or the file NAME_FILE names) when connecting.
    - `env`: the stdio child's variables beyond the minimal allow-list of
      `mash_core.tools.environment.tool_environment` (it never inherits the server's secrets).
    - `timeout`: seconds for each tool call, and for connecting (at least 10).
    - `requires_approval`: every tool of this server asks a person first.
    - `include_tools`: only these tools (the server's own names) are exposed.
    """

    name: str
    url: str | None = None
    command: str | None = None
    args: tuple[str, ...] = ()
    env: Mapping[str, str] | None = None
    headers: Mapping[str, str] | None = None
    timeout: float = 30
    requires_approval: bool = False
    include_tools: tuple[str, ...] | None = None
    cwd: str | None = None

    def __init__(
        self,
        name: str,
        *,
        url: str | None = None,
        command: str | None = None,
        args: Iterable[str] = (),
        env: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30,
        requires_approval: bool = False,
        include_tools: Iterable[str] | None = None,
        cwd: str | None = None,
    ):
        if not isinstance(name, str) or not SERVER_NAME_RE.match(name):
            raise ConfigError(f"MCP server name {name!r} is invalid: use 1-32 letters, digits, '_' or '-'")
        owner = f"MCP server {name!r}"
        if (url is None) == (command is None):
            raise ConfigError(f"{owner}: give exactly one of url= (Streamable HTTP) or command= (stdio)")
        if url is not None:
            if not isinstance(url, str):
                raise ConfigError(f"{owner}: url must be a string")
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(f"{owner}: url must be an http:// or https:// URL, got {redact_url(url)!r}")
            if env:
                raise ConfigError(f"{owner}: env= is for stdio servers (command=); an HTTP server has its own")
        if command is not None:
            if not isinstance(command, str) or not command.strip() or "\x00" in command:
                raise ConfigError(f"{owner}: command must be a non-empty string")
            if headers:
                raise ConfigError(f"{owner}: headers= is for HTTP servers (url=)")
        if isinstance(args, str):
            raise ConfigError(f"{owner}: args must be a list of strings, not one string")
        args = tuple(args)
        if any(not isinstance(a, str) or "\x00" in a for a in args):
            raise ConfigError(f"{owner}: args must be strings without NUL bytes")
        if args and command is None:
            raise ConfigError(f"{owner}: args= is for stdio servers (command=)")
        check_tool_env(env, owner=owner)
        for key, value in (headers or {}).items():
            if not isinstance(key, str) or not _HEADER_NAME_RE.match(key):
                raise ConfigError(f"{owner}: {key!r} is not a valid HTTP header name")
            if not isinstance(value, str) or any(c in value for c in "\r\n\x00"):
                raise ConfigError(f"{owner}: header {key} must be a string without line breaks")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_TIMEOUT_SECONDS:
            raise ConfigError(f"{owner}: timeout must be a number of seconds in (0, {MAX_TIMEOUT_SECONDS:g}]")
        if include_tools is not None:
            if isinstance(include_tools, str):
                raise ConfigError(f"{owner}: include_tools must be a list of tool names, not one string")
            include_tools = tuple(include_tools)
            if not include_tools or any(not isinstance(t, str) or not t for t in include_tools):
                raise ConfigError(f"{owner}: include_tools must name at least one tool, each a non-empty string")
        if cwd is not None and (not isinstance(cwd, str) or command is None):
            raise ConfigError(f"{owner}: cwd= is a directory (string) for stdio servers")
        set_ = object.__setattr__
        set_(self, "name", name)
        set_(self, "url", url)
        set_(self, "command", command)
        set_(self, "args", args)
        set_(self, "env", dict(env) if env else None)
        set_(self, "headers", dict(headers) if headers else None)
        set_(self, "timeout", float(timeout))
        set_(self, "requires_approval", bool(requires_approval))
        set_(self, "include_tools", include_tools)
        set_(self, "cwd", cwd)

    @property
    def transport(self) -> str:
        return "http" if self.url is not None else "stdio"

    @property
    def target(self) -> str:
        """Where the server is, safe to show in events and logs (no URL credentials, no query)."""
        if self.url is not None:
            return redact_url(self.url)
        return self.command or ""

    def resolved_headers(self) -> dict[str, str]:
        """The headers with `${NAME}` replaced. Raises ConfigError naming a missing variable
        (never a value). Call it when connecting and keep the result no longer."""
        resolved: dict[str, str] = {}
        for key, value in (self.headers or {}).items():

            def substitute(match: re.Match, key: str = key) -> str:
                secret = read_secret(match.group(1))
                if secret is None:
                    raise ConfigError(
                        f"MCP server {self.name!r}: header {key} names ${{{match.group(1)}}}, "
                        f"which is not set (nor {match.group(1)}_FILE)"
                    )
                return secret

            resolved[key] = _VAR_RE.sub(substitute, value)
        return resolved

    def __repr__(self) -> str:
        # Header values and env values may be credentials: only their names are shown.
        bits = [repr(self.name), f"{self.transport}={self.target!r}"]
        if self.headers:
            bits.append(f"headers=[{', '.join(self.headers)}]")
        if self.env:
            bits.append(f"env=[{', '.join(self.env)}]")
        if self.include_tools:
            bits.append(f"include_tools={list(self.include_tools)!r}")
        if self.requires_approval:
            bits.append("requires_approval=True")
        return f"MCPServerConfig({', '.join(bits)})"

    def to_dict(self) -> dict[str, Any]:
        """What may be shown about this server (events, the agent's description)."""
        return {"name": self.name, "transport": self.transport, "target": self.target,
                "requires_approval": self.requires_approval,
                "include_tools": list(self.include_tools) if self.include_tools else None}


def redact_url(url: str) -> str:
    """The URL without user info, query or fragment (where tokens hide)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, "", ""))
    except ValueError:
        return "(invalid URL)"
