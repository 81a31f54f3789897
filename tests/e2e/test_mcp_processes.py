"""MCP tools end to end: daphne + qcluster running an agent whose tools come from real MCP
servers (tests/fakes/mcp_server.py) over stdio and Streamable HTTP (tests/apps/mcp_host.py)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import httpx
import pytest

from mash_runtime.host import set_host
from mash_runtime.models import Request, RuntimeEvent, StepCheckpoint
from mash_runtime.services import submit_request
from tests.e2e.conftest import TERMINAL_EVENTS, process_alive, sse_frames, wait_for
from tests.fakes.mcp_server import HTTPServerProcess, calls

pytestmark = pytest.mark.e2e

MCP_HOST = "tests.apps.mcp_host:build_host"
TOKEN = "e2e-mcp-bearer-9f3c1a"
TIMEOUT = httpx.Timeout(30.0, read=90.0)


def tool(name, **arguments):
    return {"name": name, "arguments": arguments}


@pytest.fixture
def mcp_env(settings, tmp_path, monkeypatch):
    log = tmp_path / "mcp-calls.jsonl"
    env = {"MASH_HOST_APP": MCP_HOST, "MCP_TEST_LOG": str(log)}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings.MASH_HOST_APP = MCP_HOST
    set_host(None)
    yield env
    set_host(None)


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_mcp_calls_over_stdio_and_http_with_approval_through_daphne_and_qcluster(
        clusters, web_servers, mcp_env, tmp_path):
    http = HTTPServerProcess(token=TOKEN, log=mcp_env["MCP_TEST_LOG"]).start()
    try:
        env = {**mcp_env, "MCP_TEST_HTTP_URL": http.url, "MCP_TEST_TOKEN": TOKEN}
        cluster = clusters.start(**env)
        web = web_servers.start(**env)
        plan = {"script": [
            {"tool_calls": [tool("mcp_local_add", a=2, b=40), tool("mcp_web_echo", text="over http")]},
            {"tool_calls": [tool("mcp_gated_echo", text="approved call")]},
            "all done",
        ]}
        response = httpx.post(f"{web.url}/api/v1/agent/primary/request", json={"message": json.dumps(plan)},
                              timeout=TIMEOUT)
        assert response.status_code == 202, response.text
        rid = response.json()["data"]["request_id"]

        seen = []
        with httpx.stream("GET", f"{web.url}/api/v1/agent/primary/request/{rid}/events", timeout=TIMEOUT) as stream:
            frames = sse_frames(stream)
            for frame in frames:
                seen.append(frame)
                if frame.event == "request.interaction.create":
                    break
            create = seen[-1].data
            assert seen[-1].event == "request.interaction.create", [f.event for f in seen]
            assert create["type"] == "approval" and "mcp_gated_echo" in create["prompt"]
            assert [c["tool"] for c in calls(mcp_env["MCP_TEST_LOG"])].count("echo") == 1  # the web one only
            answer = httpx.post(f"{web.url}/api/v1/agent/primary/request/{rid}/interaction",
                                json={"interaction_id": create["interaction_id"], "response": "approve"},
                                timeout=TIMEOUT)
            assert answer.status_code == 200, answer.text
            seen.extend(frames)
        assert seen[-1].event in TERMINAL_EVENTS
        assert seen[-1].event == "request.completed", cluster.log()[-3000:]
        assert seen[-1].data["response"]["text"] == "all done"

        trace = [f.data for f in seen if f.event == "agent.trace"]
        results = {t["payload"]["tool_name"]: t["payload"]["result"] for t in trace
                   if t["event_type"] == "runtime.tool.call.completed"}
        assert results["mcp_local_add"]["content"] == "42"
        assert results["mcp_web_echo"]["content"] == "over http"
        assert results["mcp_gated_echo"]["content"] == "approved call"
        mcp_results = [(t["payload"]["server"], t["payload"]["tool"]) for t in trace
                       if t["event_type"] == "mcp.tool.result"]
        assert sorted(mcp_results) == [("gated", "echo"), ("local", "add"), ("web", "echo")]
        assert all(isinstance(t["payload"]["duration_ms"], int) for t in trace if t["event_type"] == "mcp.tool.result")

        # The bearer token went to the server and nowhere else: not in events, checkpoints or any log.
        stored = json.dumps([e.payload for e in RuntimeEvent.objects.filter(request_id=rid)])
        stored += json.dumps(list(StepCheckpoint.objects.filter(request_id=rid).values_list("output", flat=True)))
        assert TOKEN not in stored
        for log in tmp_path.glob("*.log"):
            assert TOKEN not in log.read_text(errors="replace"), log.name
        assert "mcp.client.connected server=web" in cluster.log()

        # A worker that stops (SIGTERM: it drains) stops its stdio servers; none outlives it.
        stdio_pids = {c["pid"] for c in calls(mcp_env["MCP_TEST_LOG"])} - {http.proc.pid}
        assert len(stdio_pids) == 2  # the local and the gated server of the worker that ran it
        cluster.stop()
        wait_for(lambda: not any(process_alive(pid) for pid in stdio_pids), timeout=30,
                 what="the stopped worker's MCP servers to exit")
    finally:
        http.stop()


def test_a_worker_killed_during_an_mcp_call_replays_without_calling_a_finished_tool_twice(
        clusters, mcp_env, tmp_path):
    # The HTTP server is down all along: a warning at worker start and an event, not a crash.
    down = HTTPServerProcess()
    cluster = clusters.start(**mcp_env, MCP_TEST_HTTP_URL=down.url, MCP_TEST_TOKEN=TOKEN)
    release = tmp_path / "release"
    log = mcp_env["MCP_TEST_LOG"]
    rid = submit_request("primary", json.dumps({"script": [
        {"tool_calls": [tool("mcp_local_echo", text="finished before the crash")]},
        {"tool_calls": [tool("mcp_local_slow", seconds=120, until=str(release))]},
        "survived",
    ]}))["request_id"]
    slow = wait_for(lambda: next((c for c in calls(log) if c["tool"] == "slow"), None), timeout=90,
                    what="the MCP call to start")
    server_pid = slow["pid"]
    worker_pid = parent_of(server_pid)
    os.kill(worker_pid, signal.SIGKILL)
    release.touch()  # the call made again after recovery answers at once
    # The killed worker's stdio server ends with it (its stdin closes): no orphan.
    wait_for(lambda: not process_alive(server_pid), timeout=30, what="the dead worker's MCP server to exit")
    req = wait_for(lambda: (r := Request.objects.get(pk=rid)).is_terminal and r, timeout=120,
                   what="the recovered request to finish")
    assert req.status == "completed", cluster.log()[-3000:]
    made = [c["tool"] for c in calls(log)]
    assert made.count("echo") == 1, f"a finished MCP call ran again: {made}"
    assert made.count("slow") == 2  # the interrupted call is made again, by another worker's session
    assert req.recovery_attempts == 1
    done = [e.payload["result"]["content"] for e in RuntimeEvent.objects.filter(
        request_id=rid, event_type="runtime.tool.call.completed").order_by("seq")]
    assert done == ["finished before the crash", "done waiting"]
    errors = [e.payload for e in RuntimeEvent.objects.filter(request_id=rid, event_type="mcp.client.error")]
    assert errors and {e["server"] for e in errors} == {"web"}
    log_text = cluster.log()
    assert "mcp.client.error server=web" in log_text and TOKEN not in log_text
