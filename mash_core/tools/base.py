"""The tool contract, `ToolResult`, `FunctionTool` and `ToolRegistry`."""

from __future__ import annotations

import asyncio
import inspect
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable

from mash_core.errors import ConfigError, MashError
from mash_core.llm.base import ToolDefinition

TOOL_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


class TransientToolError(MashError):
    """Raised by a tool when a retry may succeed (a flaky network call, a busy resource).

    The agent loop retries it with backoff. Also importable as `mash_core.agent.TransientToolError`.
    """


@dataclass
class ToolResult:
    content: str
    is_error: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def success(cls, content: Any, **metadata: Any) -> "ToolResult":
        return cls(content=content if isinstance(content, str) else _to_text(content), metadata=metadata)

    @classmethod
    def error(cls, message: str, **metadata: Any) -> "ToolResult":
        return cls(content=str(message), is_error=True, metadata=metadata)

    def to_dict(self) -> dict[str, Any]:
        return {"content": self.content, "is_error": self.is_error, "metadata": self.metadata}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ToolResult":
        return cls(content=data["content"], is_error=bool(data.get("is_error")), metadata=dict(data.get("metadata") or {}))


def _to_text(value: Any) -> str:
    import json

    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)


class Tool:
    """Base class for tools. Subclasses set the class attributes and implement `execute`.

    Any object with these attributes and an async `execute(args)` is accepted by the
    registry; inheriting is a convenience, not a requirement.
    """

    name: str = ""
    description: str = ""
    parameters: dict[str, Any] = {"type": "object", "properties": {}}
    requires_approval: bool = False

    async def execute(self, args: dict[str, Any]) -> ToolResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def definition(self) -> ToolDefinition:
        return ToolDefinition(name=self.name, description=self.description, parameters=self.parameters)

    async def aclose(self) -> None:
        """Release what the tool holds (a shell, a connection). Called when a request run ends."""
        return None


def tool_definition(tool: Any) -> ToolDefinition:
    return ToolDefinition(name=tool.name, description=tool.description, parameters=tool.parameters)


def missing_required_args(tool: Any, args: dict[str, Any]) -> list[str]:
    required = (tool.parameters or {}).get("required") or []
    return [name for name in required if name not in args or args[name] is None]


_PY_TO_JSON = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object", list: "array"}


def _schema_for_annotation(annotation: Any) -> dict[str, Any]:
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:  # Optional[X] and `X | None`
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _schema_for_annotation(args[0])
        return {}
    if origin in (list, tuple):
        inner = typing.get_args(annotation)
        return {"type": "array", "items": _schema_for_annotation(inner[0]) if inner else {}}
    if origin is dict:
        return {"type": "object"}
    if origin is typing.Literal:
        return {"enum": list(typing.get_args(annotation))}
    json_type = _PY_TO_JSON.get(annotation)
    return {"type": json_type} if json_type else {}


def object_schema(properties: dict[str, Any], required: Iterable[str] = ()) -> dict[str, Any]:
    """A closed JSON object schema (a tool's parameters, a structured answer): these properties,
    `required` ones among them, and no others."""
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    schema["additionalProperties"] = False
    return schema


def schema_from_signature(fn: Callable[..., Any]) -> dict[str, Any]:
    """A closed JSON schema for a function's keyword parameters (used when none is given)."""
    sig = inspect.signature(fn)
    hints = typing.get_type_hints(fn)
    props: dict[str, Any] = {}
    required: list[str] = []
    for name, param in sig.parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        props[name] = _schema_for_annotation(hints.get(name, Any))
        if param.default is inspect.Parameter.empty:
            required.append(name)
    schema: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


class FunctionTool(Tool):
    """A tool made from a plain function (sync or async).

    The function is called with the arguments as keywords. Its return value becomes a
    successful result (strings as they are, other values as JSON) unless it already is
    a `ToolResult`; an exception becomes an error result the model can read.
    """

    def __init__(
        self,
        fn: Callable[..., Any | Awaitable[Any]],
        *,
        name: str | None = None,
        description: str | None = None,
        parameters: dict[str, Any] | None = None,
        requires_approval: bool = False,
    ):
        self.fn = fn
        self.name = name or fn.__name__
        self.description = description or inspect.getdoc(fn) or self.name
        self.parameters = parameters or schema_from_signature(fn)
        self.requires_approval = requires_approval

    async def execute(self, args: dict[str, Any]) -> ToolResult:
        try:
            if inspect.iscoroutinefunction(self.fn):
                value = await self.fn(**args)
            else:
                value = await asyncio.to_thread(self.fn, **args)
        except (asyncio.CancelledError, TransientToolError):
            raise  # the agent loop retries a transient failure with backoff
        except Exception as exc:  # the model sees the failure and may recover
            return ToolResult.error(f"{type(exc).__name__}: {exc}")
        if isinstance(value, ToolResult):
            return value
        return ToolResult.success(value)


def validate_tool(tool: Any) -> None:
    name = getattr(tool, "name", None)
    if not isinstance(name, str) or not TOOL_NAME_RE.match(name):
        raise ConfigError(f"tool name {name!r} is invalid: use 1-64 letters, digits, '_' or '-'")
    if not callable(getattr(tool, "execute", None)) or not inspect.iscoroutinefunction(tool.execute):
        raise ConfigError(f"tool {name!r} must define 'async def execute(self, args)'")
    params = getattr(tool, "parameters", None)
    if not isinstance(params, dict) or params.get("type") != "object":
        raise ConfigError(f"tool {name!r}: parameters must be a JSON schema with type 'object'")
    if not isinstance(getattr(tool, "description", None), str):
        raise ConfigError(f"tool {name!r}: description must be a string")


class ToolRegistry:
    """An ordered set of tools with unique names."""

    def __init__(self, tools: Iterable[Any] = ()):
        self._tools: dict[str, Any] = {}
        for tool in tools:
            self.register(tool)

    def register(self, tool: Any) -> Any:
        validate_tool(tool)
        if tool.name in self._tools:
            raise ConfigError(f"a tool named {tool.name!r} is already registered")
        self._tools[tool.name] = tool
        return tool

    def function(self, fn: Callable[..., Any] | None = None, **kwargs: Any) -> Any:
        """Decorator: `@registry.function` or `@registry.function(requires_approval=True)`."""

        def wrap(f: Callable[..., Any]) -> Callable[..., Any]:
            self.register(FunctionTool(f, **kwargs))
            return f

        return wrap(fn) if fn is not None else wrap

    def get(self, name: str) -> Any | None:
        return self._tools.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self):
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    def definitions(self) -> list[ToolDefinition]:
        return [tool_definition(t) for t in self._tools.values()]

    async def aclose(self) -> None:
        for tool in self._tools.values():
            close = getattr(tool, "aclose", None)
            if close is not None:
                await close()
