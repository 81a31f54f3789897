"""`/mcp` over real sockets: the host's agents as MCP tools, driven by the `mcp` SDK's own
client (`mcp.Client` over Streamable HTTP) against daphne + a django-q2 cluster.

Each call is a durable request run by the cluster, as a submit over the HTTP API would be.
Calls go through both protocol eras the SDK speaks: `auto` (the 2026 per-request protocol,
found by its discover probe) and `legacy` (the initialize handshake).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from contextlib import asynccontextmanager

import httpx
import httpx2
import pytest
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client

from mash_api.models import ApiKey
from mash_runtime.host import set_host
from mash_runtime.models import Request
from tests.e2e.conftest import wait_for

pytestmark = pytest.mark.e2e

HOST_APP = "tests.apps.mcp_serving_host:build_host"
KEY = "mcp-endpoint-test-key"
MODES = ("auto", "legacy")


@pytest.fixture
def cluster_env(cluster_env, settings):
    settings.MASH_HOST_APP = HOST_APP
    set_host(None)
    return {**cluster_env, "MASH_HOST_APP": HOST_APP}


@pytest.fixture
def server(clusters, web_servers):
    clusters.start(MASH_WORKERS="1")
    return web_servers.start(MASH_API_KEY=KEY)


@asynccontextmanager
async def connect(server, headers=None, mode="auto", transport=None):
    headers = {"Authorization": f"Bearer {KEY}"} if headers is None else headers
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=120.0), transport=transport)
    async with http, Client(streamable_http_client(f"{server.url}/mcp", http_client=http), mode=mode) as client:
        yield client


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 180))


def plan(*turns) -> str:
    return json.dumps({"script": list(turns)})


def tool_call(name, **arguments) -> dict:
    return {"tool_calls": [{"name": name, "arguments": arguments}]}


def test_the_tools_are_the_listed_agents_with_their_schemas(server):
    async def listing(mode):
        async with connect(server, mode=mode) as client:
            return (await client.list_tools()).tools

    for mode in MODES:
        tools = {tool.name: tool for tool in run(listing(mode))}
        assert set(tools) == {"primary", "helper"}, mode
        for tool in tools.values():
            schema = tool.input_schema
            assert schema["type"] == "object" and schema["required"] == ["message"]
            assert set(schema["properties"]) == {"message", "session_id"}
            assert schema["properties"]["message"]["type"] == "string"
            assert schema["properties"]["message"]["maxLength"] == 200_000
            assert schema["properties"]["session_id"]["maxLength"] == 200
            assert schema["additionalProperties"] is False
            assert set(tool.output_schema["required"]) == {"agent_id", "request_id", "session_id", "status"}
        assert tools["helper"].title == "Helper"
        assert "Runs helper scripts" in tools["helper"].description and "scripts" in tools["helper"].description
        assert "'primary'" in tools["primary"].description


def test_a_call_answers_the_final_text_and_a_session_id_carries_the_history(server):
    async def calls():
        async with connect(server) as client:
            first = await client.call_tool("primary", {"message": "first words", "session_id": "mcp-history"})
        async with connect(server, mode="legacy") as client:
            second = await client.call_tool("primary", {"message": "what came before?", "session_id": "mcp-history"})
            elsewhere = await client.call_tool("primary", {"message": "what came before?"})
        return first, second, elsewhere

    first, second, elsewhere = run(calls())
    assert not first.is_error and [block.text for block in first.content] == ["echo: first words"]
    assert first.structured_content["status"] == "completed"
    assert first.structured_content["text"] == "echo: first words"
    assert first.structured_content["session_id"] == "mcp-history"
    assert first.structured_content["agent_id"] == "primary"
    assert second.content[0].text == "before: first words"
    assert second.structured_content["session_id"] == "mcp-history"
    assert elsewhere.content[0].text == "before: " and elsewhere.structured_content["session_id"] == "primary:default"
    # Durable requests, run by the cluster like any submit.
    for result in (first, second, elsewhere):
        row = Request.objects.select_related("session").get(pk=result.structured_content["request_id"])
        assert row.status == Request.Status.COMPLETED
        assert row.session.session_id == result.structured_content["session_id"]


def test_without_the_key_the_endpoint_refuses_with_the_api_envelope(server):
    url = f"{server.url}/mcp"
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    accept = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"},
                    {"Authorization": "Bearer wrong", "X-API-Key": KEY}):
        response = httpx.post(url, json=body, headers={**accept, **headers}, timeout=30)
        assert response.status_code == 401, (headers, response.text)
        assert response.json()["error"]["code"] == "UNAUTHORIZED" and response.json()["error"]["details"] == {}
        assert response.headers["www-authenticate"] == "Bearer"
    foreign = httpx.post(url, json=body, headers={**accept, **server.headers, "Origin": "https://elsewhere.example"},
                         timeout=30)
    assert foreign.status_code == 403 and foreign.json()["error"]["code"] == "FORBIDDEN"
    stray_host = httpx.post(url, json=body, headers={**accept, **server.headers, "Host": "rebound.example"}, timeout=30)
    assert stray_host.status_code == 400 and stray_host.json()["error"]["code"] == "DISALLOWED_HOST"
    stream = httpx.get(url, headers={**server.headers, "Accept": "text/event-stream"}, timeout=30)
    assert stream.status_code == 405 and stream.json()["error"]["code"] == "METHOD_NOT_ALLOWED"

    async def listing(headers):
        async with connect(server, headers=headers) as client:
            return [tool.name for tool in (await client.list_tools()).tools]

    with pytest.raises(BaseExceptionGroup) as refused:
        run(listing({}))
    assert refused.group_contains(MCPError)
    assert sorted(run(listing({"X-API-Key": KEY}))) == ["helper", "primary"]
    stored, secret = ApiKey.issue("mcp-editor")  # a stored key works as on /api/v1, until revoked
    assert sorted(run(listing({"Authorization": f"Bearer {secret}"}))) == ["helper", "primary"]
    stored.revoke()
    revoked = httpx.post(url, json=body, headers={**accept, "Authorization": f"Bearer {secret}"}, timeout=30)
    assert revoked.status_code == 401
    assert Request.objects.count() == 0


def test_bad_input_is_an_error_result_and_submits_nothing(server):
    bad = [
        ({"message": ""}, "INVALID_REQUEST", "message: This field may not be blank."),
        ({"message": "   "}, "INVALID_REQUEST", "message"),
        ({}, "INVALID_REQUEST", "message: This field is required."),
        ({"message": 7}, "VALIDATION_ERROR", "message: Not a valid string."),
        ({"message": "a\x00b"}, "VALIDATION_ERROR", "message: Null characters are not allowed."),
        ({"message": "x" * 200_001}, "VALIDATION_ERROR", "message: Ensure this field has no more than 200000"),
        ({"message": "hi", "session_id": "s" * 201}, "VALIDATION_ERROR", "session_id: Ensure this field"),
        ({"message": "hi", "session_id": ["a"]}, "VALIDATION_ERROR", "session_id: Not a valid string."),
        ({"message": "hi", "sessionId": "a"}, "VALIDATION_ERROR", "unknown argument(s) sessionId"),
    ]

    async def calls():
        results = []
        async with connect(server) as client:
            for arguments, _code, _text in bad:
                results.append(await client.call_tool("primary", arguments))
            with pytest.raises(MCPError) as unknown:
                await client.call_tool("nobody", {"message": "hi"})
        async with connect(server, mode="legacy") as client:
            legacy = await client.call_tool("helper", {"message": ""})
        return results, unknown.value, legacy

    results, unknown, legacy = run(calls())
    for (arguments, code, text), result in zip(bad, results):
        assert result.is_error, arguments
        assert result.content[0].text.startswith(f"{code}: ") and text in result.content[0].text, result.content
        assert result.structured_content["error_code"] == code
    assert "nobody" in unknown.message
    assert legacy.is_error and legacy.content[0].text.startswith("INVALID_REQUEST: ")
    assert Request.objects.count() == 0


def test_a_failed_request_is_an_error_result_and_a_question_answers_at_once(server, tmp_path):
    failing = json.dumps({"script": ["never"],
                          "llm_error": {"marker": str(tmp_path / "marker"), "times": 1, "transient": False}})
    asking = plan(tool_call("AskUser", question="Which colour?", options=["red", "blue"]), "after the answer")

    async def calls():
        async with connect(server) as client:
            return (await client.call_tool("primary", {"message": failing, "session_id": "mcp-fail"}),
                    await client.call_tool("helper", {"message": asking, "session_id": "mcp-ask"}))

    failed, asked = run(calls())
    assert failed.is_error and failed.content[0].text == "LLM_UNAVAILABLE: scripted failure"
    assert failed.structured_content["status"] == "failed" and failed.structured_content["retryable"] is False
    assert Request.objects.get(pk=failed.structured_content["request_id"]).status == Request.Status.FAILED

    assert not asked.is_error and asked.structured_content["status"] == "awaiting_input"
    rid = asked.structured_content["request_id"]
    [question] = asked.structured_content["interactions"]
    assert question["type"] == "choice" and question["prompt"] == "Which colour?"
    assert question["schema"]["options"] == ["red", "blue"]
    text = asked.content[0].text
    assert rid in text and question["interaction_id"] in text and "Which colour?" in text
    assert f"/api/v1/agent/helper/request/{rid}/interaction" in text
    assert Request.objects.get(pk=rid).status == Request.Status.AWAITING_INPUT


def test_a_slow_step_reports_progress(server, tmp_path):
    out = tmp_path / "slow.txt"
    slow = plan(tool_call("wait_and_append", path=str(out), line="done", sleep=7), "slow but done")

    async def call(mode):
        reports = []

        async def progress(value, total, message):
            reports.append((value, message))

        async with connect(server, mode=mode) as client:
            result = await client.call_tool("primary", {"message": slow}, progress_callback=progress)
        return result, reports

    for mode in MODES:
        result, reports = run(call(mode))
        assert result.content[0].text == "slow but done", mode
        values = [value for value, _message in reports]
        assert values == sorted(set(values)) and len(values) >= 4, reports
        messages = [message for _value, message in reports]
        assert messages[0].startswith(f"request {result.structured_content['request_id']} accepted"), messages
        assert "step 1: calling wait_and_append" in messages and "step 1: wait_and_append done" in messages
        # Nothing is stored while the tool sleeps: the heartbeat says the call is alive.
        between = messages[messages.index("step 1: calling wait_and_append"):messages.index("step 1: wait_and_append done")]
        assert any(message.startswith("still running") for message in between), messages
    assert out.read_text() == "done\ndone\n"


def test_a_call_given_up_leaves_its_request_running(server, tmp_path):
    out = tmp_path / "abandoned.txt"
    slow = plan(tool_call("wait_and_append", path=str(out), line="kept", sleep=4), "finished alone")

    async def abandon(mode):
        accepted = asyncio.Event()
        ids = []

        async def progress(value, total, message):
            if message.startswith("request "):
                ids.append(message.split()[1])
                accepted.set()

        async with connect(server, mode=mode) as client:
            call = asyncio.create_task(client.call_tool("primary", {"message": slow}, progress_callback=progress))
            await accepted.wait()
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await call
        return ids[0]

    for mode in MODES:
        rid = run(abandon(mode))
        wait_for(lambda rid=rid: Request.objects.get(pk=rid).status == Request.Status.COMPLETED, timeout=90,
                 what=f"the abandoned request ({mode}) to complete")
        assert Request.objects.get(pk=rid).response["text"] == "finished alone"
    assert out.read_text() == "kept\nkept\n"


class RoundRobin(httpx2.AsyncBaseTransport):
    """Each HTTP request to the next server, as a load balancer without session affinity sends them."""

    def __init__(self, servers):
        self.ports = itertools.cycle([server.port for server in servers])
        self.inner = httpx2.AsyncHTTPTransport()
        self.sent: list[tuple[str, int]] = []

    async def handle_async_request(self, request):
        request.url = request.url.copy_with(port=next(self.ports))
        self.sent.append((request.method, request.url.port))
        return await self.inner.handle_async_request(request)

    async def aclose(self):
        await self.inner.aclose()


def test_one_client_is_served_by_several_web_processes_in_turn(clusters, web_servers):
    """With no key configured (the loopback default) the endpoint is open, as the API is."""
    clusters.start(MASH_WORKERS="1")
    servers = web_servers.start_many(2)

    async def calls(mode):
        transport = RoundRobin(servers)
        async with connect(servers[0], headers={}, mode=mode, transport=transport) as client:
            names = sorted(tool.name for tool in (await client.list_tools()).tools)
            first = await client.call_tool("primary", {"message": f"hello {mode}", "session_id": f"rr-{mode}"})
            second = await client.call_tool("primary", {"message": "what came before?", "session_id": f"rr-{mode}"})
        return names, first, second, transport.sent

    for mode in MODES:
        names, first, second, sent = run(calls(mode))
        assert names == ["helper", "primary"]
        assert first.content[0].text == f"echo: hello {mode}" and second.content[0].text == f"before: hello {mode}"
        assert {port for method, port in sent if method == "POST"} == {servers[0].port, servers[1].port}, sent


def test_calls_are_in_the_api_request_log_and_a_body_over_the_limit_is_413(web_servers):
    from mash_telemetry.models import REDACTED, ApiRequestLog

    server = web_servers.start(MASH_API_KEY=KEY, MASH_MAX_BODY_BYTES="10000")

    async def listing():
        async with connect(server, mode="legacy") as client:
            return [tool.name for tool in (await client.list_tools()).tools]

    assert sorted(run(listing())) == ["helper", "primary"]
    url = f"{server.url}/mcp"
    accept = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25",
              "Content-Type": "application/json", **server.headers}
    big = json.dumps({"jsonrpc": "2.0", "id": 9, "method": "tools/list", "params": {"pad": "x" * 20_000}}).encode()

    def chunked():
        for start in range(0, len(big), 4096):
            yield big[start:start + 4096]

    for content in (big, chunked()):
        response = httpx.post(url, content=content, headers=accept, timeout=30)
        assert response.status_code == 413, response.text[:300]
        error = response.json()["error"]
        assert error["code"] == "PAYLOAD_TOO_LARGE" and "MASH_MAX_BODY_BYTES" in error["message"]
        assert error["details"] == {}
    assert httpx.post(url, json={}, headers={**accept, "Authorization": "Bearer wrong"}, timeout=30).status_code == 401

    def rows():
        return list(ApiRequestLog.objects.filter(path="/mcp").order_by("id"))

    # The legacy handshake (initialize, initialized, tools/list), two 413s and a 401.
    wait_for(lambda: len(rows()) >= 6, timeout=30, what="the /mcp exchanges in the API request log")
    logged = rows()
    assert all(row.method == "POST" and row.client == "127.0.0.1" for row in logged)
    assert [row.status_code for row in logged[-3:]] == [413, 413, 401]
    assert {row.status_code for row in logged[:-3]} <= {200, 202} and 200 in {row.status_code for row in logged}
    assert any('"tools/list"' in row.request_body for row in logged[:-3])
    assert all(row.request_headers.get("Authorization") == REDACTED for row in logged)
    assert logged[-3].request_body_truncated and "not captured" in logged[-3].request_body
    assert json.loads(logged[-1].response_body)["error"]["code"] == "UNAUTHORIZED"
