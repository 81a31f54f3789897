"""The tool contract: `ToolResult`, `FunctionTool`, `ToolRegistry`, `AskUserTool` (no Django)."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any, Literal, Optional

import pytest

from mash_core.agent import TransientToolError as AgentTransientToolError
from mash_core.errors import ConfigError
from mash_core.llm.base import ToolDefinition
from mash_core.tools import AskUserTool, FunctionTool, Tool, ToolRegistry, ToolResult
from mash_core.tools.ask_user import interaction_for_approval, interaction_for_ask_user
from mash_core.tools.base import TransientToolError, missing_required_args, schema_from_signature


def run(coro):
    return asyncio.run(coro)


# -- ToolResult ----------------------------------------------------------------------------


def test_it_serialises_non_string_success_values_as_json():
    result = ToolResult.success({"name": "café", "n": [1, 2]})
    assert result.is_error is False
    assert json.loads(result.content) == {"name": "café", "n": [1, 2]}
    assert "café" in result.content  # not \u-escaped
    assert ToolResult.success([1, "a"]).content == '[1, "a"]'
    assert ToolResult.success(42).content == "42"
    assert ToolResult.success("plain text").content == "plain text"


def test_it_falls_back_to_str_for_values_json_cannot_handle():
    class Thing:
        def __str__(self):
            return "a thing"

    assert ToolResult.success({"x": Thing()}).content == '{"x": "a thing"}'


def test_it_round_trips_a_tool_result_through_a_dict():
    result = ToolResult.error("bad", retryable=True)
    data = result.to_dict()
    assert data == {"content": "bad", "is_error": True, "metadata": {"retryable": True}}
    assert ToolResult.from_dict(json.loads(json.dumps(data))) == result
    assert ToolResult.success("ok", rows=3).metadata == {"rows": 3}


# -- schema inference ----------------------------------------------------------------------


def search(query: str, limit: int = 10, exact: bool = False, ratio: float = 0.5,
           tags: list[str] | None = None, mode: Literal["fast", "slow"] = "fast",
           extra: Optional[dict] = None, note: str | None = None, anything=None, **rest: Any) -> str:
    """Search the index."""
    return query


def test_it_infers_a_closed_schema_from_a_signature():
    schema = schema_from_signature(search)
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["query"]
    props = schema["properties"]
    assert props["query"] == {"type": "string"}
    assert props["limit"] == {"type": "integer"}
    assert props["exact"] == {"type": "boolean"}
    assert props["ratio"] == {"type": "number"}
    assert props["tags"] == {"type": "array", "items": {"type": "string"}}
    assert props["mode"] == {"enum": ["fast", "slow"]}
    assert props["extra"] == {"type": "object"}
    assert props["note"] == {"type": "string"}  # `X | None` unwraps like Optional[X]
    assert props["anything"] == {}
    assert "rest" not in props


def test_it_omits_required_when_every_parameter_has_a_default():
    def ping(host: str = "localhost") -> str:
        return host

    assert "required" not in schema_from_signature(ping)


def test_it_builds_a_function_tool_from_a_docstring_and_signature():
    tool = FunctionTool(search)
    assert tool.name == "search"
    assert tool.description == "Search the index."
    assert tool.parameters["required"] == ["query"]
    assert tool.requires_approval is False
    assert tool.definition() == ToolDefinition("search", "Search the index.", tool.parameters)


def test_it_uses_an_explicit_name_description_and_schema():
    params = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
    tool = FunctionTool(lambda q: q, name="find", description="Find it.", parameters=params, requires_approval=True)
    assert (tool.name, tool.description, tool.parameters, tool.requires_approval) == ("find", "Find it.", params, True)


def test_it_runs_a_sync_function_off_the_event_loop_thread():
    threads: list[int] = []

    def add(a: int, b: int) -> int:
        threads.append(threading.get_ident())
        return a + b

    async def main():
        result = await FunctionTool(add).execute({"a": 2, "b": 5})
        return result, threading.get_ident()

    result, loop_thread = run(main())
    assert (result.content, result.is_error) == ("7", False)
    assert threads and threads[0] != loop_thread


def test_it_awaits_an_async_function():
    async def greet(name: str) -> str:
        await asyncio.sleep(0)
        return f"hello {name}"

    result = run(FunctionTool(greet).execute({"name": "ada"}))
    assert (result.content, result.is_error) == ("hello ada", False)


def test_it_passes_a_returned_tool_result_through():
    def check(x: int) -> ToolResult:
        return ToolResult.error("too big", limit=3) if x > 3 else ToolResult.success("fine")

    bad = run(FunctionTool(check).execute({"x": 5}))
    assert (bad.content, bad.is_error, bad.metadata) == ("too big", True, {"limit": 3})


def test_it_turns_an_exception_into_an_error_result():
    def fail(x: int) -> int:
        raise KeyError("missing")

    result = run(FunctionTool(fail).execute({"x": 1}))
    assert result.is_error is True
    assert result.content == "KeyError: 'missing'"


def test_it_lets_transient_tool_error_escape_a_function_tool_for_the_loop_to_retry():
    assert AgentTransientToolError is TransientToolError

    async def flaky() -> str:
        raise TransientToolError("busy")

    with pytest.raises(TransientToolError):
        run(FunctionTool(flaky).execute({}))


def test_it_lists_missing_required_arguments():
    tool = FunctionTool(search)
    assert missing_required_args(tool, {}) == ["query"]
    assert missing_required_args(tool, {"query": None}) == ["query"]
    assert missing_required_args(tool, {"query": ""}) == []
    assert missing_required_args(AskUserTool(), {"options": ["a"]}) == ["question"]


# -- registry ------------------------------------------------------------------------------


def test_it_rejects_a_duplicate_tool_name():
    registry = ToolRegistry([FunctionTool(search)])
    with pytest.raises(ConfigError, match="'search' is already registered"):
        registry.register(FunctionTool(lambda q: q, name="search"))
    assert len(registry) == 1


@pytest.mark.parametrize("name", ["", "has space", "a" * 65, "dots.not.ok", "ünïcode", None, 3])
def test_it_rejects_invalid_tool_names(name):
    class Bad(Tool):
        description = "x"

        async def execute(self, args):
            return ToolResult.success("")

    tool = Bad()
    tool.name = name
    with pytest.raises(ConfigError, match="invalid"):
        ToolRegistry().register(tool)


def test_it_accepts_names_with_letters_digits_underscores_and_dashes():
    registry = ToolRegistry()
    for name in ["a", "A_b-9", "x" * 64]:
        registry.register(FunctionTool(lambda: "", name=name))
    assert registry.names == ["a", "A_b-9", "x" * 64]


def test_it_rejects_tools_with_a_sync_execute_or_a_bad_schema():
    class SyncExecute:
        name = "sync"
        description = ""
        parameters = {"type": "object", "properties": {}}

        def execute(self, args):
            return ToolResult.success("")

    with pytest.raises(ConfigError, match="async def execute"):
        ToolRegistry().register(SyncExecute())

    class BadParams(Tool):
        name = "bad_params"
        parameters = {"type": "array"}

        async def execute(self, args):
            return ToolResult.success("")

    with pytest.raises(ConfigError, match="type 'object'"):
        ToolRegistry().register(BadParams())


def test_it_accepts_a_duck_typed_tool():
    class Duck:
        name = "duck"
        description = "quacks"
        parameters = {"type": "object", "properties": {}}
        requires_approval = False

        async def execute(self, args):
            return ToolResult.success("quack")

    registry = ToolRegistry([Duck()])
    assert "duck" in registry
    assert registry.definitions() == [ToolDefinition("duck", "quacks", {"type": "object", "properties": {}})]


def test_it_registers_functions_with_the_decorator():
    registry = ToolRegistry()

    @registry.function
    def one(x: int) -> int:
        """First."""
        return x

    @registry.function(name="two_renamed", requires_approval=True)
    def two(y: str) -> str:
        return y

    assert one(1) == 1  # the decorator returns the function itself
    assert registry.names == ["one", "two_renamed"]
    assert registry.get("two_renamed").requires_approval is True
    assert registry.get("missing") is None
    assert [d.name for d in registry.definitions()] == ["one", "two_renamed"]
    assert [t.name for t in registry] == ["one", "two_renamed"]


def test_it_closes_every_tool():
    closed: list[str] = []

    class Closable(Tool):
        description = ""

        def __init__(self, name):
            self.name = name

        async def execute(self, args):
            return ToolResult.success("")

        async def aclose(self):
            closed.append(self.name)

    run(ToolRegistry([Closable("a"), Closable("b")]).aclose())
    assert closed == ["a", "b"]


# -- AskUser and approval specs ------------------------------------------------------------


def test_it_describes_ask_user_interactions():
    info = interaction_for_ask_user({"question": "  Name?  "})
    assert info["type"] == "info" and info["prompt"] == "Name?" and info["schema"] == {"type": "text"}
    assert info["default"] == ""

    choice = interaction_for_ask_user({"question": "Pick", "options": ["a", " ", 2]})
    assert choice["type"] == "choice"
    assert choice["schema"] == {"type": "multi_select", "options": ["a", "2"]}
    assert choice["default"] == []


def test_it_refuses_to_answer_ask_user_itself():
    result = run(AskUserTool().execute({"question": "hi"}))
    assert result.is_error is True


def test_it_truncates_long_arguments_in_approval_prompts():
    spec = interaction_for_approval("write", {"text": "x" * 2000})
    assert spec["type"] == "approval" and spec["default"] == "deny"
    assert spec["prompt"].endswith("...?")
    assert len(spec["prompt"]) < 600
