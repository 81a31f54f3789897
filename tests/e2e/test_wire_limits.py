"""Bodies a client can send to crash a naive server, on the wire (a real daphne): each gets
a 4xx envelope, the server keeps answering, and nothing is stored."""

from __future__ import annotations

import json

import httpx
from websockets.sync.client import connect as ws_connect

from mash_runtime.models import Request

DEEP = "[" * 100_000 + "]" * 100_000


def post(server, path, content: bytes):
    return httpx.post(f"{server.url}{path}", content=content, timeout=60,
                      headers={**server.headers, "Content-Type": "application/json"})


def test_deep_json_gets_400_on_both_bindings(web_servers):
    server = web_servers.start()
    for path in ("/api/v1/agent/primary/request", "/h2a/agent/primary/request"):
        response = post(server, path, DEEP.encode())
        assert response.status_code == 400, (path, response.status_code, response.text[:300])
        assert response.json()["error"]["code"] == "INVALID_JSON"
    assert httpx.get(f"{server.url}/api/v1/health", timeout=30).status_code == 200
    assert not Request.objects.exists()


def test_a_body_over_the_limit_gets_413(web_servers):
    server = web_servers.start(MASH_MAX_BODY_BYTES="10000")
    body = json.dumps({"message": "x" * 20_000}).encode()
    for path in ("/api/v1/agent/primary/request", "/h2a/agent/primary/request"):
        response = post(server, path, body)
        assert response.status_code == 413, (path, response.status_code, response.text[:300])
        assert response.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
        assert "MASH_MAX_BODY_BYTES" in response.json()["error"]["message"]
    assert post(server, "/api/v1/agent/primary/request", b'{"message": "small"}').status_code == 202


def test_deep_json_on_a_websocket_is_an_error_message_not_a_crash(web_servers):
    server = web_servers.start()
    rid = post(server, "/api/v1/agent/primary/request", b'{"message": "hi"}').json()["data"]["request_id"]
    with ws_connect(f"{server.ws_url}/ws/v1/agent/primary/request/{rid}/", open_timeout=30,
                    max_size=None) as ws:
        ws.send(DEEP)
        while True:  # the stream's own frames may come first
            message = json.loads(ws.recv(timeout=30))
            if message.get("type") == "error":
                break
        assert message["error"]["code"] == "INVALID_JSON"
    assert httpx.get(f"{server.url}/api/v1/health", timeout=30).status_code == 200
