"""Token deltas on the wire (daphne + qcluster + Redis): a stream that asks for tokens
(`?stream=tokens`) gets the running step's text as `agent.delta` frames before the step
is stored; their concatenation is the stored text; a stream that does not ask (the
upstream CLI) sees exactly the stored events; a reconnect with Last-Event-ID mid-step gets
the stored step."""

from __future__ import annotations

import json
import os

import httpx
import pytest

from .conftest import sse_frames

REDIS_URL = os.environ.get("MASH_E2E_TOKENS_REDIS_URL", "redis://127.0.0.1:6379/12")
TIMEOUT = httpx.Timeout(30.0, read=90.0)
WAIT = {"tool_calls": [{"name": "bash", "arguments": {"command": "sleep 1.5"}}]}
TEXT = "Tokens arrive as the model writes them, one small piece after another, then the step."


@pytest.fixture
def cluster_env(cluster_env):
    return {**cluster_env, "MASH_REDIS_URL": REDIS_URL}


@pytest.fixture
def server(clusters, web_servers):
    clusters.start(MASH_WORKERS="1")
    return web_servers.start()


def submit(server, *turns) -> str:
    body = {"message": json.dumps({"script": list(turns)})}
    response = httpx.post(f"{server.url}/api/v1/agent/primary/request", json=body, timeout=TIMEOUT)
    assert response.status_code == 202, response.text
    return response.json()["data"]["request_id"]


def stream(server, rid, params=None, headers=None) -> list:
    with httpx.stream("GET", f"{server.url}/api/v1/agent/primary/request/{rid}/events", params=params,
                      headers=headers or {}, timeout=TIMEOUT) as response:
        assert response.status_code == 200, response.read()
        return [f for f in sse_frames(response) if f.comment is None]


def test_a_token_stream_gets_deltas_before_the_step_and_they_add_up_to_it(server):
    # A tool runs 1.5 s first: the stream is open (and has said it wants tokens) by the
    # time the worker starts the second model call, whose text streams.
    rid = submit(server, WAIT, TEXT)
    frames = stream(server, rid, params={"stream": "tokens"})
    names = [f.event for f in frames]
    deltas = [f for f in frames if f.event == "agent.delta"]
    assert deltas, names
    assert all(f.id is None for f in deltas), "deltas are not stored events: no id"
    assert {d.data["step_key"] for d in deltas} == {"plan.1"} and {d.data["request_id"] for d in deltas} == {rid}
    assert [d.data["index"] for d in deltas] == list(range(len(deltas)))
    assert "".join(d.data["text"] for d in deltas) == TEXT
    stored = next(i for i, f in enumerate(frames) if f.event != "agent.delta" and f.data.get("step_key") == "plan.1")
    assert names.index("agent.delta") < stored and max(i for i, n in enumerate(names) if n == "agent.delta") < stored
    assert names[-1] == "request.completed" and frames[-1].data["response"]["text"] == TEXT
    # The stored events are exactly what a stream without tokens sees, ids contiguous.
    plain = stream(server, rid)
    assert [(f.id, f.event) for f in plain] == [(f.id, f.event) for f in frames if f.event != "agent.delta"]
    assert [f.id for f in plain] == list(range(1, len(plain) + 1))


def test_a_stream_that_does_not_ask_for_tokens_gets_none(server):
    rid = submit(server, WAIT, TEXT)
    frames = stream(server, rid)
    assert "agent.delta" not in [f.event for f in frames]
    assert frames[-1].event == "request.completed"


def test_a_reconnect_with_last_event_id_mid_step_gets_the_stored_step(server):
    rid = submit(server, WAIT, TEXT)
    with httpx.stream("GET", f"{server.url}/api/v1/agent/primary/request/{rid}/events",
                      params={"stream": "tokens"}, timeout=TIMEOUT) as response:
        first = next(f for f in sse_frames(response) if f.comment is None)  # request.accepted, then drop
    assert first.event == "request.accepted"
    rest = stream(server, rid, params={"stream": "tokens"}, headers={"Last-Event-ID": str(first.id)})
    stored = [f for f in rest if f.event != "agent.delta"]
    assert stored[0].id == first.id + 1 and stored[-1].event == "request.completed"
    assert stored[-1].data["response"]["text"] == TEXT


def test_a_bad_stream_option_is_a_422(server):
    rid = submit(server, "x")
    response = httpx.get(f"{server.url}/api/v1/agent/primary/request/{rid}/events", params={"stream": "bytes"},
                         timeout=TIMEOUT)
    assert response.status_code == 422 and response.json()["error"]["code"] == "VALIDATION_ERROR"
