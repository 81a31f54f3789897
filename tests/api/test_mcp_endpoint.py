"""`/mcp` in-process: a tool call's argument checks (the submit route's rules), the Host and
Origin checks, the off switch, and the SDK loaded only when `/mcp` is served."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from django.db import connections

from mash_api.mcp_endpoint import host_refusal, origin_refusal, with_mcp_endpoint
from mash_telemetry.asgi_log import LoggedExchange
from mash_api.mcp_server import InvalidArguments, clean_arguments

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("arguments, expected", [
    ({"message": "hello"}, ("hello", None)),
    ({"message": "  hello \n"}, ("hello", None)),
    ({"message": "hello", "session_id": "  mine  "}, ("hello", "mine")),
    ({"message": "hello", "session_id": ""}, ("hello", None)),
    ({"message": "hello", "session_id": "   "}, ("hello", None)),
    ({"message": "hello", "session_id": None}, ("hello", None)),
    ({"message": "x" * 200_000, "session_id": "s" * 200}, ("x" * 200_000, "s" * 200)),
    ({"message": "déjà vu ✓"}, ("déjà vu ✓", None)),
])
def test_good_arguments_are_read_as_the_submit_route_reads_them(arguments, expected):
    assert clean_arguments(arguments) == expected


@pytest.mark.parametrize("arguments, code, loc, fragment", [
    (None, "INVALID_REQUEST", ["arguments", "message"], "required"),
    ({}, "INVALID_REQUEST", ["arguments", "message"], "required"),
    ({"message": ""}, "INVALID_REQUEST", ["arguments", "message"], "blank"),
    ({"message": " \t\n"}, "INVALID_REQUEST", ["arguments", "message"], "blank"),
    ({"message": None}, "VALIDATION_ERROR", ["arguments", "message"], "null"),
    ({"message": 12}, "VALIDATION_ERROR", ["arguments", "message"], "valid string"),
    ({"message": ["hi"]}, "VALIDATION_ERROR", ["arguments", "message"], "valid string"),
    ({"message": {"text": "hi"}}, "VALIDATION_ERROR", ["arguments", "message"], "valid string"),
    ({"message": "a\x00b"}, "VALIDATION_ERROR", ["arguments", "message"], "Null characters"),
    ({"message": "a\ud800b"}, "VALIDATION_ERROR", ["arguments", "message"], "Surrogate"),
    ({"message": "x" * 200_001}, "VALIDATION_ERROR", ["arguments", "message"], "200000"),
    ({"message": "hi", "session_id": "s" * 201}, "VALIDATION_ERROR", ["arguments", "session_id"], "200"),
    ({"message": "hi", "session_id": 3}, "VALIDATION_ERROR", ["arguments", "session_id"], "valid string"),
    ({"message": "hi", "session_id": "a\x00"}, "VALIDATION_ERROR", ["arguments", "session_id"], "Null characters"),
    ({"message": "hi", "sessionId": "a"}, "VALIDATION_ERROR", ["arguments", "sessionId"], "unknown"),
    ({"message": "hi", "structured_output": {}}, "VALIDATION_ERROR", ["arguments", "structured_output"], "unknown"),
    (["hi"], "VALIDATION_ERROR", ["arguments"], "object"),
    ("hi", "VALIDATION_ERROR", ["arguments"], "object"),
])
def test_bad_arguments_are_refused_with_the_api_code_and_where(arguments, code, loc, fragment):
    with pytest.raises(InvalidArguments) as refused:
        clean_arguments(arguments)
    assert refused.value.code == code
    assert loc in [error["loc"] for error in refused.value.errors]
    assert fragment.lower() in (refused.value.message + json.dumps(refused.value.errors)).lower()


def test_both_bad_fields_are_named():
    with pytest.raises(InvalidArguments) as refused:
        clean_arguments({"message": "", "session_id": "s" * 201})
    assert refused.value.code == "VALIDATION_ERROR"  # not only blank: the shape is wrong too
    assert [e["loc"][-1] for e in refused.value.errors] == ["message", "session_id"]
    assert "message: " in refused.value.message and "session_id: " in refused.value.message


@pytest.mark.parametrize("host, served", [
    ("127.0.0.1:8000", True), ("localhost", True), ("[::1]:8000", True), ("agents.localhost:80", True),
    ("rebound.example", False), ("rebound.example:8000", False), ("", False), ("bad host", False),
])
def test_the_host_must_be_one_this_server_answers_to(host, served):
    refused = host_refusal({"host": host})
    assert (refused is None) == served
    if refused is not None:
        assert refused.status_code == 400 and json.loads(refused.content)["error"]["code"] == "DISALLOWED_HOST"


@pytest.mark.parametrize("origin, allowed", [
    (None, True),
    ("http://127.0.0.1:8000", True),
    ("http://localhost:6274", True),  # a local MCP inspector
    ("http://[::1]:3000", True),
    ("https://trusted.example", True),
    ("http://agents.example:8000", True),  # the Host itself
    ("https://elsewhere.example", False),
    ("http://agents.example:9000", False),
    ("null", False),
    ("file://", False),
    ("http://127.0.0.1.evil.example", False),
])
def test_an_origin_must_be_this_host_loopback_or_trusted(settings, origin, allowed):
    settings.CSRF_TRUSTED_ORIGINS = ["https://trusted.example"]
    headers = {"host": "agents.example:8000"} | ({"origin": origin} if origin is not None else {})
    refused = origin_refusal(headers)
    assert (refused is None) == allowed
    if refused is not None:
        assert refused.status_code == 403 and json.loads(refused.content)["error"]["code"] == "FORBIDDEN"


def asgi_call(app, path: str, method: str = "POST") -> tuple[list[dict], list[str]]:
    sent, reached = [], []

    async def downstream(scope, receive, send):
        reached.append(scope["path"])

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": [(b"host", b"127.0.0.1:8000")]}
    asyncio.run(with_mcp_endpoint(downstream, LoggedExchange)(scope, receive, send))
    return sent, reached


def test_switched_off_mcp_is_a_404_envelope_and_other_paths_go_to_django(settings):
    settings.MASH_MCP_ENDPOINT = False
    settings.MASH_API_LOG = False  # the 404 is an exchange too, but this test has no database
    sent, reached = asgi_call(None, "/mcp")
    assert reached == [] and sent[0]["status"] == 404
    error = json.loads(sent[1]["body"])["error"]
    assert error["code"] == "ROUTE_NOT_FOUND" and "MASH_MCP_ENDPOINT" in error["message"]
    for path in ("/api/v1/health", "/mcpx", "/mcp/tools", "/"):
        sent, reached = asgi_call(None, path)
        assert reached == [path] and sent == []


def test_the_sdk_is_imported_only_to_serve_mcp(tmp_path):
    probe = ("import sys, mash_project.asgi\n"
             "from mash_runtime.host import get_host\n"
             "get_host()\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mcp', 'mcp_types')))\n")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "mash_project.settings", "MASH_DATA_DIR": str(tmp_path),
           "MASH_HOST_APP": "tests.apps.mcp_serving_host:build_host", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def event(event_type, payload=None, loop_index=None):
    from mash_runtime.models import RuntimeEvent

    return RuntimeEvent(event_type=event_type, payload=payload or {}, loop_index=loop_index)


@pytest.mark.parametrize("stored, said", [
    (event("request.started"), "started"),
    (event("request.waiting", {"reason": "session_busy"}), "waiting for an earlier request of its session to finish"),
    (event("runtime.llm.think.completed", {"tool_calls": [{"name": "bash"}, {"name": "AskUser"}]}, 0),
     "step 1: calling bash, AskUser"),
    (event("runtime.llm.think.completed", {"action_type": "response", "tool_calls": []}, 2), "step 3: answering"),
    (event("runtime.tool.call.completed", {"tool_name": "bash", "result": {"is_error": False}}, 1), "step 2: bash done"),
    (event("runtime.tool.call.completed", {"tool_name": "bash", "result": {"is_error": True}}, 1),
     "step 2: bash failed"),
    (event("runtime.subagent.call.completed", {"tool_name": "InvokeSubagent", "result": {}}, 0),
     "step 1: InvokeSubagent done"),
    (event("runtime.tool.call.completed", {"tool_name": "x", "result": "odd"}), "step: x done"),
    (event("runtime.context.loaded"), None),
    (event("llm.request.complete"), None),
    (event("subagent.runtime.tool.call.completed", {"tool_name": "bash"}, 0), None),
])
def test_each_step_is_said_in_a_progress_message(stored, said):
    from mash_api.mcp_server import step_message

    assert step_message(stored) == said


KEY = "mcp-in-process-key"


def mcp_exchange(monkeypatch, messages, headers=(), answer=None, query=b""):
    """One POST to /mcp with `messages` as what the client sends, the SDK's handler replaced by
    `answer` (default: a 200 JSON reply); returns (sent, what the handler received, receives asked)."""
    import mash_api.mcp_server

    sent, handled, asked = [], [], []
    incoming = list(messages) + [{"type": "http.disconnect"}]

    async def receive():
        asked.append(True)
        return incoming.pop(0)

    async def send(message):
        sent.append(message)

    async def default_answer(scope, receive, send):
        handled.append(await receive())
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"jsonrpc": "2.0", "id": 1, "result": {}}'})

    monkeypatch.setattr(mash_api.mcp_server, "handle", answer or default_answer)
    scope = {"type": "http", "method": "POST", "path": "/mcp", "query_string": query, "client": ("10.1.2.3", 5151),
             "headers": [(b"host", b"127.0.0.1:8000"), (b"authorization", f"Bearer {KEY}".encode()),
                         *headers]}
    async def exchange():
        try:
            await with_mcp_endpoint(None, LoggedExchange)(scope, receive, send)
        finally:
            # The inline log write ran on asgiref's shared thread: its connection would outlive
            # the test and keep PostgreSQL from dropping the test database.
            await sync_to_async(connections.close_all)()

    asyncio.run(exchange())
    return sent, handled, len(asked)


def chunks(*parts: bytes) -> list[dict]:
    return [{"type": "http.request", "body": part, "more_body": index < len(parts) - 1}
            for index, part in enumerate(parts)]


@pytest.fixture
def keyed(settings):
    settings.MASH_API_KEY = KEY
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 100


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("headers, parts, reads", [
    ([(b"content-length", b"101")], [b"x" * 101], 0),  # refused on its Content-Length: never read
    ([], [b"x" * 60, b"x" * 41, b"never read"], 2),  # chunked: cut off where it passes the limit
])
def test_a_body_over_the_limit_is_413_in_the_api_envelope_before_the_sdk(monkeypatch, keyed, headers, parts, reads):
    from mash_telemetry.models import ApiRequestLog

    sent, handled, asked = mcp_exchange(monkeypatch, chunks(*parts), headers)
    assert handled == [] and asked == reads
    assert sent[0]["status"] == 413
    error = json.loads(sent[1]["body"])["error"]
    assert error["code"] == "PAYLOAD_TOO_LARGE" and "MASH_MAX_BODY_BYTES" in error["message"]
    assert error["details"] == {}
    [row] = ApiRequestLog.objects.all()
    assert (row.method, row.path, row.status_code) == ("POST", "/mcp", 413)
    assert json.loads(row.response_body)["error"]["code"] == "PAYLOAD_TOO_LARGE"


@pytest.mark.django_db(transaction=True)
def test_a_body_within_the_limit_reaches_the_sdk_whole_then_the_client_s_own_messages(monkeypatch, keyed):
    async def answer(scope, receive, send):
        handled.extend([await receive(), await receive()])
        await send({"type": "http.response.start", "status": 202, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    handled = []
    sent, _handled, _asked = mcp_exchange(monkeypatch, chunks(b"x" * 50, b"y" * 50), answer=answer)
    assert sent[0]["status"] == 202
    assert handled == [{"type": "http.request", "body": b"x" * 50 + b"y" * 50, "more_body": False},
                       {"type": "http.disconnect"}]


@pytest.mark.django_db(transaction=True)
def test_each_exchange_is_in_the_api_request_log_as_the_middleware_writes_it(monkeypatch, keyed, settings):
    from mash_telemetry.models import REDACTED, ApiRequestLog

    body = b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}'
    mcp_exchange(monkeypatch, chunks(body), [(b"content-length", str(len(body)).encode()),
                                              (b"content-type", b"application/json")], query=b"token=abc&x=1")
    row = ApiRequestLog.objects.get()
    assert (row.method, row.path, row.status_code, row.client) == ("POST", "/mcp", 200, "10.1.2.3")
    assert row.query_string == f"token={REDACTED}&x=1"
    assert row.request_headers["Authorization"] == REDACTED and KEY not in json.dumps(row.request_headers)
    assert (row.request_body, row.request_body_truncated) == (body.decode(), False)
    assert row.response_headers == {"content-type": "application/json"}
    assert json.loads(row.response_body)["result"] == {} and not row.streaming
    assert row.duration_ms >= 0

    async def streamed(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b"event: message\ndata: {}\n\n"})

    mcp_exchange(monkeypatch, chunks(body), [(b"content-length", str(len(body)).encode())], answer=streamed)
    stream = ApiRequestLog.objects.order_by("-id").first()
    assert stream.streaming and stream.response_body == "" and stream.status_code == 200

    settings.MASH_API_KEY = "another key"  # refusals are exchanges too
    mcp_exchange(monkeypatch, chunks(body), [(b"content-length", str(len(body)).encode())])
    refused = ApiRequestLog.objects.order_by("-id").first()
    assert refused.status_code == 401 and json.loads(refused.response_body)["error"]["code"] == "UNAUTHORIZED"
    assert refused.request_body == body.decode()

    settings.MASH_API_LOG = False
    mcp_exchange(monkeypatch, chunks(body))
    assert ApiRequestLog.objects.count() == 3


@pytest.mark.django_db(transaction=True)
def test_an_sdk_failure_is_logged_as_the_500_daphne_answers(monkeypatch, keyed):
    from mash_telemetry.models import ApiRequestLog

    async def broken(scope, receive, send):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        mcp_exchange(monkeypatch, chunks(b"{}"), answer=broken)
    assert ApiRequestLog.objects.get().status_code == 500
