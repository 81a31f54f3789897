"""Each non-Anthropic provider end to end: a request submitted over HTTP to daphne, run by a
qcluster worker through the provider's real SDK against a loopback fake of its API (the
Responses fake, fakellm's Chat Completions, the Gemini fake), with a tool call and structured
output, streamed back over SSE and stored as durable events."""

from __future__ import annotations

import contextlib
import json
import uuid
from typing import Any, Iterator

import httpx
import pytest

from mash_runtime.host import set_host
from mash_runtime.models import Request, RuntimeEvent
from tests.core.fakellm_server import run_fakellm
from tests.e2e.conftest import TERMINAL_EVENTS, sse_frames
from tests.fakes.gemini_api import FakeGemini
from tests.fakes.openai_responses import FakeResponses

pytestmark = pytest.mark.e2e

PROVIDER_HOST = "tests.apps.provider_host:build_host"
TIMEOUT = httpx.Timeout(30.0, read=60.0)
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
MODELS = {"openai": "gpt-4.1-e2e", "openai-chat": "llama3.2-e2e", "gemini": "gemini-3-flash-e2e",
          "anthropic": "claude-e2e"}
# Each fake quotes the tool result it got back, in its API's shape.
ANSWERS = {"openai": "The tool said: value of yes", "openai-chat": "The tool said: value of yes",
           "anthropic": "The tool said: value of yes",
           "gemini": 'The tool said: {"output": "value of yes"}'}


@contextlib.contextmanager
def fake_api(provider: str, marker: str) -> Iterator[tuple[dict[str, str], Any]]:
    """The environment pointing `provider` at a fresh fake, and a callable counting its calls."""
    if provider == "openai":
        with FakeResponses().running() as fake:
            yield {**fake.env, "OPENAI_MODEL": MODELS[provider]}, lambda: len(fake.requests)
    elif provider == "gemini":
        with FakeGemini().running() as fake:
            yield {**fake.env, "GEMINI_MODEL": MODELS[provider]}, lambda: len(fake.requests)
    else:
        rules = [
            # The structured call repeats the conversation: its instruction is matched first.
            {"name": "structured", "when": {"messages_contain": "single JSON object"},
             "respond": {"content": '{"answer": "yes"}'}},
            {"name": "final", "when": {"tool_result_contains": "value of"},
             "respond": {"content": "The tool said: value of yes"}},
            {"name": "call", "when": {"messages_contain": marker},
             "respond": {"content": "", "tool_calls": [{"name": "lookup", "arguments": {"key": "yes"}}]}},
        ]
        with run_fakellm(rules) as server:
            if provider == "anthropic":  # fakellm speaks the Messages API too
                env = {"ANTHROPIC_BASE_URL": server.url, "ANTHROPIC_API_KEY": "sk-ant-e2e", "ANTHROPIC_MODEL": MODELS[provider]}
            else:
                env = {"OPENAI_CHAT_BASE_URL": f"{server.url}/v1", "OPENAI_CHAT_MODEL": MODELS[provider]}
            yield env, lambda: server.stats()["total_requests"]


@pytest.mark.parametrize("provider", ["openai", "openai-chat", "gemini"])
def test_a_durable_run_through_daphne_and_qcluster_calls_a_tool_on_the_provider(
        provider, clusters, web_servers, settings):
    settings.MASH_HOST_APP = PROVIDER_HOST
    set_host(None)
    marker = f"e2e-{provider}-{uuid.uuid4().hex[:8]}"  # fakellm keys its conversations by the first message
    with fake_api(provider, marker) as (env, calls):
        extra = {"MASH_HOST_APP": PROVIDER_HOST, "MASH_LLM": provider, **env}
        clusters.start(MASH_WORKERS="1", **extra)
        server = web_servers.start(**extra)
        health = httpx.get(f"{server.url}/api/v1/health", timeout=TIMEOUT).json()
        response = httpx.post(f"{server.url}/api/v1/agent/primary/request", timeout=TIMEOUT,
                              json={"message": f"Look up the key, please ({marker})", "structured_output": SCHEMA})
        assert response.status_code == 202, response.text
        rid = response.json()["data"]["request_id"]
        with httpx.stream("GET", f"{server.url}/api/v1/agent/primary/request/{rid}/events", timeout=TIMEOUT) as stream:
            frames = [f for f in sse_frames(stream) if f.event]
        model_calls = calls()

    assert frames[-1].event in TERMINAL_EVENTS
    assert frames[-1].event == "request.completed", frames[-1].data
    answer = frames[-1].data["response"]
    assert answer["text"] == ANSWERS[provider]
    assert answer["structured_output"] == {"answer": "yes"}
    assert model_calls == 3  # the tool call, the answer, the structured call

    req = Request.objects.get(pk=rid)
    assert req.status == "completed"
    events = RuntimeEvent.objects.filter(request_id=rid).order_by("seq")
    [tool] = [e.payload for e in events if e.event_type == "runtime.tool.call.completed"]
    assert tool["tool_name"] == "lookup" and tool["arguments"] == {"key": "yes"}
    assert tool["result"]["content"] == "value of yes" and not tool["result"]["is_error"]
    llm = [e.payload for e in events if e.event_type == "llm.request.complete"]
    assert len(llm) == 3
    assert all(p["model"].startswith(MODELS[provider]) and p["input_tokens"] > 0 for p in llm)
    assert sum(p["output_tokens"] for p in llm) > 0
    streamed = [f.data["event_type"] for f in frames if f.event == "agent.trace"]
    assert streamed.count("llm.request.complete") == 3 and "runtime.tool.call.completed" in streamed
    stored = json.dumps([e.payload for e in events]) + json.dumps(req.response)
    assert not [v for k, v in env.items() if k.endswith("_API_KEY") and v in stored]  # keys never reach events
    assert health["data"]["primary_agent"]["model"] == MODELS[provider]  # the host built the chosen provider


TOKENS_REDIS_URL = "redis://127.0.0.1:6379/12"


@pytest.mark.parametrize("provider", ["anthropic", "openai", "openai-chat", "gemini"])
def test_each_provider_streams_the_answer_as_token_deltas(provider, clusters, web_servers, settings):
    """With Redis, a submit and a stream that ask for tokens get the answer's text as
    `agent.delta` frames from the provider's streaming API, before the stored step."""
    settings.MASH_HOST_APP = PROVIDER_HOST
    set_host(None)
    marker = f"e2e-tokens-{provider}-{uuid.uuid4().hex[:8]}"
    with fake_api(provider, marker) as (env, _calls):
        extra = {"MASH_HOST_APP": PROVIDER_HOST, "MASH_LLM": provider, "MASH_REDIS_URL": TOKENS_REDIS_URL, **env}
        clusters.start(MASH_WORKERS="1", **extra)
        server = web_servers.start(**extra)
        response = httpx.post(f"{server.url}/api/v1/agent/primary/request", params={"stream": "tokens"},
                              timeout=TIMEOUT, json={"message": f"Look up the key, please ({marker})"})
        assert response.status_code == 202, response.text
        rid = response.json()["data"]["request_id"]
        with httpx.stream("GET", f"{server.url}/api/v1/agent/primary/request/{rid}/events",
                          params={"stream": "tokens"}, timeout=TIMEOUT) as stream:
            frames = [f for f in sse_frames(stream) if f.event]
    names = [f.event for f in frames]
    assert names[-1] == "request.completed", names
    answer = frames[-1].data["response"]["text"]
    assert answer == ANSWERS[provider]
    deltas = [f.data for f in frames if f.event == "agent.delta"]
    final_step = {d["step_key"] for d in deltas if d["text"]} - {"plan.0"}
    assert final_step == {"plan.1"}, deltas
    assert "".join(d["text"] for d in deltas if d["step_key"] == "plan.1") == answer
    stored = next(i for i, f in enumerate(frames) if f.event == "agent.trace" and f.data.get("step_key") == "plan.1")
    assert max(i for i, n in enumerate(names) if n == "agent.delta") < stored
