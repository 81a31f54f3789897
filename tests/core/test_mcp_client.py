"""The MCP client against real MCP servers (the SDK's `MCPServer` in tests/fakes/mcp_server.py),
over stdio and Streamable HTTP. Plain pytest: each test drives its own event loop."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys

import pytest

from mash_core.errors import ConfigError
from mash_core.mcp import MCPServerConfig, MCPTool, close_loop_pool, discover_tools, loop_pool, mcp_tool_name
from mash_core.mcp.listing import check_schema
from mash_core.mcp.tools import MAX_RESULT_CHARS, result_text
from mash_core.tools.base import TOOL_NAME_RE, ToolRegistry
from tests.fakes.mcp_server import HTTPServerProcess, calls, stdio_config


def run(coro):
    async def and_close():
        try:
            return await coro
        finally:
            await close_loop_pool()

    return asyncio.run(and_close())


@pytest.fixture
def call_log(tmp_path):
    return tmp_path / "calls.jsonl"


def by_tool(tools: list[MCPTool]) -> dict[str, MCPTool]:
    return {t.mcp_tool: t for t in tools}


# -- configuration and names ------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    ({}, "exactly one of url="),
    ({"url": "http://x/mcp", "command": "x"}, "exactly one of url="),
    ({"url": "ftp://x/mcp"}, "http:// or https://"),
    ({"command": "x", "headers": {"A": "b"}}, "headers= is for HTTP"),
    ({"url": "http://x/mcp", "env": {"A": "b"}}, "env= is for stdio"),
    ({"command": "x", "args": "a b"}, "not one string"),
    ({"command": "x", "timeout": 0}, "timeout"),
    ({"command": "x", "include_tools": []}, "include_tools"),
    ({"url": "http://x/mcp", "headers": {"Bad Name": "v"}}, "header name"),
    ({"url": "http://x/mcp", "headers": {"X": "a\r\nInjected: 1"}}, "line breaks"),
    ({"command": "x", "env": {"1BAD": "v"}}, "not a valid environment variable"),
])
def test_bad_configurations_are_clear_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        MCPServerConfig("srv", **kwargs)


def test_a_server_name_outside_the_charset_is_refused():
    with pytest.raises(ConfigError, match="MCP server name"):
        MCPServerConfig("my server", command="x")


def test_repr_and_to_dict_show_no_header_or_env_values():
    config = MCPServerConfig("gh", url="https://user:pw@example.com/mcp?token=abc",
                             headers={"Authorization": "Bearer literal-secret"})
    shown = repr(config) + str(config.to_dict())
    assert "literal-secret" not in shown and "pw" not in shown and "abc" not in shown
    assert "Authorization" in shown and config.target == "https://example.com/mcp"
    stdio = MCPServerConfig("s", command="srv", env={"API_TOKEN": "t0ps3cret"})
    assert "t0ps3cret" not in repr(stdio) and "API_TOKEN" in repr(stdio)


def test_header_variables_resolve_at_connect_time_and_name_a_missing_one(monkeypatch, tmp_path):
    config = MCPServerConfig("gh", url="https://example.com/mcp", headers={"Authorization": "Bearer ${GH_TEST_TOKEN}"})
    monkeypatch.delenv("GH_TEST_TOKEN", raising=False)
    with pytest.raises(ConfigError, match=r"\$\{GH_TEST_TOKEN\}, which is not set"):
        config.resolved_headers()
    monkeypatch.setenv("GH_TEST_TOKEN", "abc")
    assert config.resolved_headers() == {"Authorization": "Bearer abc"}
    monkeypatch.delenv("GH_TEST_TOKEN")
    (tmp_path / "tok").write_text("from-file\n")
    monkeypatch.setenv("GH_TEST_TOKEN_FILE", str(tmp_path / "tok"))
    assert config.resolved_headers() == {"Authorization": "Bearer from-file"}
    assert "from-file" not in repr(config)


def test_tool_names_fit_the_models_charset_and_stay_apart():
    assert mcp_tool_name("fake", "echo") == "mcp_fake_echo"
    assert mcp_tool_name("fake", "get.weather") == "mcp_fake_get_weather"
    assert mcp_tool_name("fake", "repo/search é") == "mcp_fake_repo_search__"
    long_a, long_b = mcp_tool_name("srv", "x" * 80 + "a"), mcp_tool_name("srv", "x" * 80 + "b")
    assert long_a != long_b and len(long_a) == 64 and TOOL_NAME_RE.match(long_a)
    assert mcp_tool_name("srv", "x" * 80 + "a") == long_a  # the same on every process


def test_untrusted_schemas_and_results_are_bounded():
    assert check_schema({"type": "object"}) is None
    assert "not a JSON object schema" in check_schema({"type": "string"})
    assert "larger than" in check_schema({"type": "object", "description": "x" * 70_000})
    deep: dict = {"type": "object"}
    node = deep
    for _ in range(40):
        node["properties"] = {"a": {"type": "object"}}
        node = node["properties"]["a"]
    assert "nested deeper" in check_schema(deep)

    from mcp_types import CallToolResult, ImageContent, TextContent

    result = CallToolResult(content=[TextContent(type="text", text="a\x00b\ud800"),
                                     ImageContent(type="image", data="aGk=", mime_type="image/png")])
    assert result_text(result) == "a\ufffdb\ufffd\n[image content (image/png) left out]"
    assert result_text(CallToolResult(content=[], structured_content={"n": 1})) == '{"n": 1}'
    text = result_text(CallToolResult(content=[TextContent(type="text", text="y" * (MAX_RESULT_CHARS + 10))]))
    assert text.startswith("y" * 100) and "[truncated: the result had" in text
    assert len(text) < MAX_RESULT_CHARS + 100


def test_importing_the_package_does_not_load_the_sdk():
    probe = ("import sys, mash_core.mcp, mash_core.tools, mash_core.agent; "
             "assert 'mcp' not in sys.modules and 'httpx2' not in sys.modules, sorted(sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    subprocess.run([sys.executable, "-c", probe], check=True, env=env, cwd=os.getcwd())


# -- stdio -------------------------------------------------------------------------------------


def test_stdio_server_tools_are_listed_named_and_called(call_log):
    async def scenario():
        tools = await discover_tools(stdio_config(log=call_log))
        names = sorted(t.name for t in tools)
        assert "mcp_fake_echo" in names and "mcp_fake_get_weather" in names
        registry = ToolRegistry(tools)  # every adapter is a valid tool
        add = registry.get("mcp_fake_add")
        assert add.description == "Add two integers."
        assert add.parameters["required"] == ["a", "b"] and add.parameters["type"] == "object"
        result = await add.execute({"a": 2, "b": 3})
        assert not result.is_error and result.content == "5"
        assert result.metadata == {"mcp_server": "fake", "mcp_tool": "add"}
        weather = await registry.get("mcp_fake_get_weather").execute({"city": "Oslo"})
        assert weather.content == "sunny in Oslo"
        failed = await registry.get("mcp_fake_fail").execute({"message": "nope"})
        assert failed.is_error and failed.metadata["mcp_error"] == "tool"

    run(scenario())
    # One session: both calls reached the same server process.
    assert len({c["pid"] for c in calls(call_log)}) == 1


def test_include_tools_limits_what_is_exposed():
    async def scenario():
        return await discover_tools(stdio_config(include_tools=["echo", "get.weather", "missing"]))

    assert sorted(t.name for t in run(scenario())) == ["mcp_fake_echo", "mcp_fake_get_weather"]


def test_a_stdio_server_gets_only_the_allow_list_and_its_env(monkeypatch):
    monkeypatch.setenv("MASH_API_KEY", "server-secret")
    monkeypatch.setenv("SOME_SERVICE_TOKEN", "server-token")
    monkeypatch.setenv("UNLISTED_VARIABLE", "x")

    async def scenario():
        env = by_tool(await discover_tools(stdio_config(env={"GIVEN": "yes", "OWN_TOKEN": "its-own"})))["env"]
        return {name: (await env.execute({"name": name})).content
                for name in ("MASH_API_KEY", "SOME_SERVICE_TOKEN", "UNLISTED_VARIABLE", "GIVEN", "OWN_TOKEN", "PATH")}

    seen = run(scenario())
    assert seen["MASH_API_KEY"] == seen["SOME_SERVICE_TOKEN"] == seen["UNLISTED_VARIABLE"] == "(unset)"
    assert seen["GIVEN"] == "yes" and seen["OWN_TOKEN"] == "its-own" and seen["PATH"] != "(unset)"


def test_a_timeout_is_an_error_result_and_the_session_lives_on(call_log):
    async def scenario():
        tools = by_tool(await discover_tools(stdio_config(log=call_log, timeout=1)))
        slow = await tools["slow"].execute({"seconds": 20})
        assert slow.is_error and slow.metadata["mcp_error"] == "timeout" and "did not answer" in slow.content
        assert (await tools["echo"].execute({"text": "still here"})).content == "still here"

    run(scenario())
    assert len({c["pid"] for c in calls(call_log)}) == 1


def test_closing_the_pool_stops_the_stdio_child(call_log):
    async def scenario():
        tools = by_tool(await discover_tools(stdio_config(log=call_log)))
        await tools["echo"].execute({"text": "hi"})
        await close_loop_pool()
        return calls(call_log)[-1]["pid"]

    pid = asyncio.run(scenario())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_stdio_command_that_does_not_exist_is_unreachable():
    from mash_core.mcp import MCPUnavailable

    async def scenario():
        with pytest.raises(MCPUnavailable, match="FileNotFoundError|No such file"):
            await discover_tools(MCPServerConfig("gone", command="/nonexistent/mcp-server"))

    run(scenario())


# -- Streamable HTTP ---------------------------------------------------------------------------


@pytest.fixture
def http_server(call_log):
    server = HTTPServerProcess(token="hunter2-http-token", log=str(call_log)).start()
    yield server
    server.stop()


def test_http_server_with_a_bearer_token_from_the_environment(http_server, monkeypatch, caplog):
    monkeypatch.setenv("FAKE_MCP_TOKEN", "hunter2-http-token")
    config = MCPServerConfig("web", url=http_server.url, headers={"Authorization": "Bearer ${FAKE_MCP_TOKEN}"})
    caplog.set_level(logging.DEBUG)

    async def scenario():
        tools = by_tool(await discover_tools(config))
        assert (await tools["echo"].execute({"text": "over http"})).content == "over http"
        assert (await tools["add"].execute({"a": 1, "b": 1})).content == "2"
        assert len(loop_pool()) == 1

    run(scenario())
    assert "hunter2-http-token" not in caplog.text
    assert "hunter2-http-token" not in repr(config)


def test_http_server_refusing_the_credentials_is_unreachable_without_showing_them(http_server, caplog):
    from mash_core.mcp import MCPUnavailable

    config = MCPServerConfig("web", url=http_server.url, headers={"Authorization": "Bearer wrong-one-secret"})
    caplog.set_level(logging.DEBUG)

    async def scenario():
        with pytest.raises(MCPUnavailable) as raised:
            await discover_tools(config)
        return str(raised.value)

    assert "wrong-one-secret" not in run(scenario()) and "wrong-one-secret" not in caplog.text
    assert "mcp.client.error server=web" in caplog.text


def test_server_down_is_an_error_result_and_it_reconnects_when_back(http_server, monkeypatch):
    monkeypatch.setenv("FAKE_MCP_TOKEN", "hunter2-http-token")
    config = MCPServerConfig("web", url=http_server.url, headers={"Authorization": "Bearer ${FAKE_MCP_TOKEN}"},
                             timeout=5)

    async def scenario():
        echo = by_tool(await discover_tools(config))["echo"]
        assert (await echo.execute({"text": "one"})).content == "one"
        await asyncio.to_thread(http_server.stop)
        down = await echo.execute({"text": "two"})
        assert down.is_error and down.metadata["mcp_error"] == "unreachable" and "unreachable" in down.content
        again = await echo.execute({"text": "three"})
        assert again.is_error and again.metadata["mcp_error"] == "unreachable"
        await asyncio.to_thread(http_server.start)
        back = await echo.execute({"text": "four"})
        assert not back.is_error and back.content == "four"
        # Discovery of a server that failed recently waits RETRY_SECONDS before trying again.
        assert loop_pool().connection(config).connected

    run(scenario())


def test_an_unreachable_server_at_discovery_is_tried_again_only_after_a_while():
    from mash_core.mcp import MCPUnavailable

    server = HTTPServerProcess()  # a free port nobody listens on
    config = MCPServerConfig("down", url=server.url, timeout=5)

    async def scenario():
        with pytest.raises(MCPUnavailable, match="ConnectError"):
            await discover_tools(config)
        conn = loop_pool().connection(config)
        failed_at = conn.failed_at
        with pytest.raises(MCPUnavailable):
            await discover_tools(config)
        assert conn.failed_at == failed_at  # not tried again: the first failure is reported
        with pytest.raises(MCPUnavailable):
            await discover_tools(config, retry_after=None)
        assert conn.failed_at > failed_at

    run(scenario())


def test_runs_share_the_session_concurrently_and_a_cancelled_call_leaves_it_usable(call_log):
    async def scenario():
        tools = by_tool(await discover_tools(stdio_config(log=call_log)))
        results = await asyncio.gather(*(tools["slow"].execute({"seconds": 0.3}) for _ in range(5)))
        assert [r.content for r in results] == ["done waiting"] * 5
        stuck = asyncio.ensure_future(tools["slow"].execute({"seconds": 60}))
        await asyncio.sleep(0.5)
        stuck.cancel()  # a cancelled run: its call ends with it
        with pytest.raises(asyncio.CancelledError):
            await stuck
        assert (await tools["echo"].execute({"text": "after the cancel"})).content == "after the cancel"

    run(scenario())
    assert len({c["pid"] for c in calls(call_log)}) == 1


def test_a_token_in_the_url_stays_out_of_errors_and_warnings(caplog):
    from mash_core.mcp import MCPUnavailable

    server = HTTPServerProcess()  # nobody listens
    config = MCPServerConfig("down", url=f"http://user:pw-secret@127.0.0.1:{server.port}/mcp?token=qs-secret")
    caplog.set_level(logging.WARNING)

    async def scenario():
        with pytest.raises(MCPUnavailable) as raised:
            await discover_tools(config)
        return str(raised.value)

    message = run(scenario())
    for text in (message, caplog.text, repr(config), str(config.to_dict())):
        assert "qs-secret" not in text and "pw-secret" not in text
    assert f"127.0.0.1:{server.port}/mcp" in caplog.text
