"""MCP servers' tools in durable runs (tests/apps/mcp_host.py, real MCP servers as child
processes): registration and naming, events, approval, replay, server down, secrets."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from mash_core.errors import ConfigError
from mash_runtime.host import HostBuilder, get_host, set_host
from mash_runtime.models import Interaction, RuntimeEvent, StepCheckpoint
from mash_runtime.services import answer_interaction
from tests.fakes.mcp_server import HTTPServerProcess, calls

TOKEN = "s3cret-bearer-value-for-mcp"


def tool(name, **arguments):
    return {"name": name, "arguments": arguments}


def on_runner_loop(coro):
    from mash_runtime.run.runner import process_runner

    return asyncio.run_coroutine_threadsafe(coro, process_runner().loop).result(60)


@pytest.fixture
def mcp_engine(engine, settings, monkeypatch, tmp_path):
    from mash_runtime.mcp_tools import close_sessions

    log = tmp_path / "mcp-calls.jsonl"
    monkeypatch.setenv("MCP_TEST_LOG", str(log))
    monkeypatch.delenv("MCP_TEST_HTTP_URL", raising=False)
    settings.MASH_HOST_APP = "tests.apps.mcp_host:build_host"
    set_host(None)
    engine.log = log
    yield engine
    on_runner_loop(close_sessions())  # this test's servers stop; the next test's connect afresh


def payloads(engine, rid, event_type):
    return [e.payload for e in engine.events(rid) if e.event_type == event_type]


def test_mcp_tools_are_registered_with_the_servers_descriptions_and_schemas(mcp_engine):
    from mash_runtime.mcp_tools import attach
    from mash_runtime.run.prepare import build_agent

    hosted = get_host().get("primary")
    agent = build_agent(hosted)
    names = on_runner_loop(attach(agent, hosted))
    assert {"mcp_local_echo", "mcp_local_add", "mcp_local_get_weather", "mcp_gated_echo"} <= set(names)
    assert "mcp_gated_add" not in agent.tools  # include_tools
    add = agent.tools.get("mcp_local_add")
    assert add.description == "Add two integers." and add.parameters["required"] == ["a", "b"]
    assert agent.tools.get("mcp_gated_echo").requires_approval and not add.requires_approval
    assert "append_line" in agent.tools  # the spec's own tools stay


def test_an_mcp_call_is_a_durable_tool_step_with_its_events(mcp_engine):
    req = mcp_engine.run({"script": [{"tool_calls": [tool("mcp_local_add", a=20, b=22)]}, "the sum is 42"]})
    assert req.status == "completed", req.error
    done = payloads(mcp_engine, req.pk, "runtime.tool.call.completed")
    assert done[0]["tool_name"] == "mcp_local_add" and done[0]["result"]["content"] == "42"
    assert done[0]["result"]["metadata"] == {"mcp_server": "local", "mcp_tool": "add"}
    assert StepCheckpoint.objects.get(request=req, step_key="tool.0.0").output["content"] == "42"
    connected = payloads(mcp_engine, req.pk, "mcp.client.connected")
    assert {c["server"] for c in connected} == {"local", "gated"}
    assert "add" in next(c for c in connected if c["server"] == "local")["tools"]
    call = payloads(mcp_engine, req.pk, "mcp.tool.call")[0]
    assert call["server"] == "local" and call["tool"] == "add" and call["arguments"] == {"a": 20, "b": 22}
    result = payloads(mcp_engine, req.pk, "mcp.tool.result")[0]
    assert result["server"] == "local" and result["tool"] == "add" and isinstance(result["duration_ms"], int)
    types = mcp_engine.types(req.pk)
    assert types.index("mcp.tool.call") < types.index("mcp.tool.result") < types.index("runtime.tool.call.completed")
    assert [c["tool"] for c in calls(mcp_engine.log)] == ["add"]

    # The trace page shows the call like any tool call, marked with its server.
    from django.contrib.auth.models import User
    from django.test import Client

    client = Client()
    client.force_login(User.objects.create_user("staff", password="pw", is_staff=True))
    page = client.get(f"/telemetry/requests/{req.pk}/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "mcp_local_add" in html and "MCP local" in html and "tool add of the MCP server local" in html

    # A second request of the worker process reuses the sessions: no new connection.
    again = mcp_engine.run({"script": [{"tool_calls": [tool("mcp_local_echo", text="hi")]}, "ok"]})
    assert again.status == "completed"
    assert payloads(mcp_engine, again.pk, "mcp.client.connected") == []
    assert len({c["pid"] for c in calls(mcp_engine.log)}) == 1


def test_approval_gates_an_mcp_tool_and_the_finished_call_is_replayed_not_repeated(mcp_engine):
    rid = mcp_engine.submit({"script": [
        {"tool_calls": [tool("mcp_local_echo", text="first")]},
        {"tool_calls": [tool("mcp_gated_echo", text="gated")]},
        "finished",
    ]})
    assert mcp_engine.drain() == ["parked:input"]
    assert [c["args"]["text"] for c in calls(mcp_engine.log)] == ["first"]
    itr = Interaction.objects.get(request_id=rid, status="pending")
    assert itr.type == "approval" and "mcp_gated_echo" in itr.prompt
    answer_interaction(rid, itr.interaction_id, "approve")
    assert mcp_engine.drain() == ["completed"]
    assert [c["args"]["text"] for c in calls(mcp_engine.log)] == ["first", "gated"], "the finished call ran again"
    results = payloads(mcp_engine, rid, "runtime.tool.call.completed")
    assert [r["result"]["content"] for r in results] == ["first", "gated"]
    assert mcp_engine.types(rid).count("mcp.tool.call") == 2


def test_a_denied_mcp_tool_never_reaches_the_server(mcp_engine):
    rid = mcp_engine.submit({"script": [{"tool_calls": [tool("mcp_gated_echo", text="no")]}, "ok"]})
    mcp_engine.drain()
    answer_interaction(rid, Interaction.objects.get(request_id=rid, status="pending").interaction_id, "deny")
    mcp_engine.drain()
    assert mcp_engine.request(rid).status == "completed"
    assert [c for c in calls(mcp_engine.log) if c["tool"] == "echo"] == []
    assert payloads(mcp_engine, rid, "mcp.tool.call") == []


def test_a_failing_tool_is_an_error_result_with_an_mcp_error_event(mcp_engine):
    req = mcp_engine.run({"script": [{"tool_calls": [tool("mcp_local_fail", message="broken on purpose")]}, "ok"]})
    assert req.status == "completed"
    result = payloads(mcp_engine, req.pk, "runtime.tool.call.completed")[0]["result"]
    assert result["is_error"] and "broken on purpose" in result["content"]
    error = payloads(mcp_engine, req.pk, "mcp.tool.error")[0]
    assert error["server"] == "local" and error["tool"] == "fail" and error["kind"] == "tool"


def test_a_name_another_tool_has_is_a_clear_config_error(mcp_engine, monkeypatch):
    monkeypatch.setenv("MCP_TEST_CLASH", "1")
    set_host(None)
    req = mcp_engine.run({"script": ["never"]})
    assert req.status == "failed"
    assert "ConfigError" in req.error and "mcp_local_echo" in req.error and "include_tools" in req.error
    error = next(e.payload for e in mcp_engine.events(req.pk) if e.event_type == "request.error")
    assert error["error_code"] == "CONFIG_ERROR" and error["retryable"] is False


def test_duplicate_server_names_are_a_config_error():
    from mash_core.mcp import MCPServerConfig
    from mash_runtime.mcp_tools import check_servers
    from tests.apps.mcp_host import MCPSpec

    class Twice(MCPSpec):
        def build_mcp_servers(self):
            return [MCPServerConfig("a", command="x"), MCPServerConfig("a", command="y")]

    with pytest.raises(ConfigError, match="two MCP servers are named 'a'"):
        check_servers(Twice())

    class NotAConfig(MCPSpec):
        def build_mcp_servers(self):
            return [{"name": "a", "command": "x"}]

    with pytest.raises(ConfigError, match="not an MCPServerConfig"):
        check_servers(NotAConfig())
    assert HostBuilder().primary(MCPSpec()).build()  # configs are read when runs need them


def test_server_down_at_start_is_an_event_not_a_failure_and_down_later_an_error_result(
        mcp_engine, monkeypatch, caplog):
    server = HTTPServerProcess(token=TOKEN)  # not started: nobody listens yet
    monkeypatch.setenv("MCP_TEST_HTTP_URL", server.url)
    monkeypatch.setenv("MCP_TEST_TOKEN", TOKEN)
    monkeypatch.setenv("MCP_TEST_TIMEOUT", "5")
    set_host(None)
    caplog.set_level(logging.DEBUG)

    down = mcp_engine.run({"script": [{"tool_calls": [tool("mcp_web_echo", text="x")]}, "carried on"]})
    assert down.status == "completed"
    error = payloads(mcp_engine, down.pk, "mcp.client.error")
    assert [e["server"] for e in error] == ["web"] and "ConnectError" in error[0]["error"]
    unknown = payloads(mcp_engine, down.pk, "runtime.tool.call.completed")[0]["result"]
    assert unknown["is_error"] and "Unknown tool 'mcp_web_echo'" in unknown["content"]
    from django.contrib.auth.models import User
    from django.test import Client

    client = Client()
    client.force_login(User.objects.create_user("staff", password="pw", is_staff=True))
    page = client.get(f"/telemetry/requests/{down.pk}/").content.decode()
    assert "MCP server web unreachable" in page and TOKEN not in page

    server.start()
    try:
        from mash_core.mcp import loop_pool

        # The retry wait after a failed connect is skipped for the test: connect now.
        hosted = get_host().get("primary")
        from mash_runtime.mcp_tools import servers_of

        web = next(c for c in servers_of(hosted) if c.name == "web")
        on_runner_loop(_connect(loop_pool, web))
        up = mcp_engine.run({"script": [{"tool_calls": [tool("mcp_web_echo", text="over http")]}, "ok"]})
        assert payloads(mcp_engine, up.pk, "runtime.tool.call.completed")[0]["result"]["content"] == "over http"
    finally:
        server.stop()
    gone = mcp_engine.run({"script": [{"tool_calls": [tool("mcp_web_echo", text="again")]}, "noted"]})
    assert gone.status == "completed"
    result = payloads(mcp_engine, gone.pk, "runtime.tool.call.completed")[0]["result"]
    assert result["is_error"] and "unreachable" in result["content"]
    assert payloads(mcp_engine, gone.pk, "mcp.tool.error")[0]["kind"] == "unreachable"

    # The bearer token was used, and shows nowhere: not in events, checkpoints or logs.
    stored = json.dumps([e.payload for e in RuntimeEvent.objects.all()])
    stored += json.dumps(list(StepCheckpoint.objects.values_list("output", flat=True)))
    assert TOKEN not in stored and TOKEN not in caplog.text


async def _connect(loop_pool, config):
    await loop_pool().connection(config).connect()


def test_a_worker_whose_agents_have_no_mcp_server_never_imports_the_sdk():
    import os
    import subprocess
    import sys

    probe = (
        "import django, sys; django.setup()\n"
        "from mash_runtime.host import load_host\n"
        "import mash_runtime.run.runner, mash_runtime.run.execute, mash_runtime.mcp_tools as m\n"
        "host = load_host('tests.apps.engine_host:build_host')\n"
        "assert not m.has_servers(host)\n"
        "assert 'mcp' not in sys.modules and 'httpx2' not in sys.modules\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "mash_project.settings"}
    subprocess.run([sys.executable, "-c", probe], check=True, env=env, cwd=str(os.getcwd()))


def test_serve_checks_names_at_start_and_warns_of_a_server_out_of_reach(mcp_engine, monkeypatch):
    """`mash host serve` reaches the servers once before it starts: a clash refuses to start
    (one line naming the tool), an unreachable server is a warning, and nothing stays open."""
    from django.core.management.base import CommandError
    from rich.console import Console

    from mash_api.management.commands.serve import Command
    from mash_runtime.mcp_tools import check_at_start
    from mash_runtime.run.prepare import build_agent

    assert check_at_start(get_host(), build_agent) == []

    server = HTTPServerProcess(token=TOKEN)  # never started: nobody listens
    monkeypatch.setenv("MCP_TEST_HTTP_URL", server.url)
    monkeypatch.setenv("MCP_TEST_TOKEN", TOKEN)
    monkeypatch.setenv("MCP_TEST_TIMEOUT", "5")
    set_host(None)
    (warning,) = check_at_start(get_host(), build_agent)
    assert "'web'" in warning and "not reachable" in warning and TOKEN not in warning

    monkeypatch.setenv("MCP_TEST_CLASH", "1")
    set_host(None)
    with pytest.raises(ConfigError, match="mcp_local_echo"):
        check_at_start(get_host(), build_agent)
    with pytest.raises(CommandError, match="include_tools"):
        Command.check_mcp_servers(get_host(), Console(file=open("/dev/null", "w")))


def test_serve_skips_the_check_for_a_host_without_mcp_servers(engine):
    from rich.console import Console

    from mash_api.management.commands.serve import Command

    Command.check_mcp_servers(get_host(), Console(file=open("/dev/null", "w")))  # nothing to reach: no error
