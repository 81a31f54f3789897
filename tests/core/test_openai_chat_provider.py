"""OpenAIChatProvider through the real `openai` SDK over real HTTP, against fakellm's
OpenAI-compatible `/v1/chat/completions` (what vLLM, Ollama, llama.cpp and LM Studio serve)."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import openai
import pytest

from mash_core.llm import LLMNotConfiguredError, LLMRequest, OpenAIChatProvider, ToolDefinition
from mash_core.llm.openai_chat import UNSUPPORTED, to_response
from mash_core.messages import Message, TextBlock, ToolCallBlock, ToolResultBlock
from mash_core.structured import normalize_schema

try:
    from tests.core.fakellm_server import FakeLLM, free_port, run_fakellm
except ImportError:  # tests/ is not a package: pytest put this directory on sys.path
    from fakellm_server import FakeLLM, free_port, run_fakellm  # type: ignore[no-redef]
try:
    from tests.core.provider_calls import ask, complete, failure, streamed
except ImportError:  # tests/core run on its own, without the repository root on the path
    from provider_calls import ask, complete, failure, streamed  # type: ignore[no-redef]

MODEL = "llama3.2:3b"
WEATHER = ToolDefinition(
    name="get_weather",
    description="Current weather for a city.",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)

RULES = [
    {"name": "weather-final", "when": {"tool_result_contains": "18C and sunny"},
     "respond": {"content": "Paris is 18C and sunny."}},
    {"name": "weather-call", "when": {"messages_contain": "weather in paris"},
     "respond": {"content": "", "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}},
    {"name": "plain", "when": {"messages_contain": "say hello plainly"}, "respond": {"content": "Hello from fakellm."}},
    {"name": "no-json-schema", "when": {"messages_contain": "old server"},
     "respond": {"status": 400, "error": "response_format type json_schema is not supported"}},
    {"name": "structured", "when": {"messages_contain": "give me json"}, "respond": {"content": '{"answer": "yes"}'}},
    *[{"name": f"status-{s}", "when": {"messages_contain": f"trigger-status-{s}"},
       "respond": {"status": s, "error": f"mock failure {s}"}} for s in (400, 401, 404, 429, 500, 503)],
]


@pytest.fixture(scope="module")
def fakellm() -> Any:
    with run_fakellm(RULES) as server:
        yield server


@pytest.fixture
def server(fakellm: FakeLLM) -> FakeLLM:
    fakellm.reset()  # tool_result_contains also matches results remembered from earlier turns
    return fakellm


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_CHAT_BASE_URL", "OPENAI_CHAT_MODEL", "OPENAI_CHAT_API_KEY", "OPENAI_CHAT_API_KEY_FILE",
                 "OPENAI_BASE_URL", "OPENAI_CUSTOM_HEADERS", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
        monkeypatch.delenv(name, raising=False)


class Wire:
    """Records what the SDK really sends (fakellm keeps no request bodies)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []

    def client(self) -> Any:
        async def on_request(request: Any) -> None:
            self.requests.append(json.loads(request.content))
            self.headers.append(dict(request.headers))

        return openai.DefaultAsyncHttpxClient(event_hooks={"request": [on_request]})


def provider(server: FakeLLM, wire: Wire | None = None, **kwargs: Any) -> OpenAIChatProvider:
    if wire is not None:
        kwargs["http_client"] = wire.client()
    return OpenAIChatProvider("demo", kwargs.pop("model", MODEL), f"{server.url}/v1", **kwargs)


def test_it_answers_plain_text_with_usage(server: FakeLLM) -> None:
    wire = Wire()
    response = complete(provider(server, wire), ask("Please say hello plainly", temperature=0.2, max_tokens=99))

    assert (response.text, response.stop_reason, response.model) == ("Hello from fakellm.", "end_turn", MODEL)
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    assert wire.requests[0] == {
        "model": MODEL, "max_tokens": 99, "temperature": 0.2,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Please say hello plainly"}],
    }


def test_it_round_trips_a_tool_call_as_tool_calls_and_tool_messages(server: FakeLLM) -> None:
    wire = Wire()
    p = provider(server, wire)
    question = Message.user("What is the weather in Paris?")

    async def conversation() -> Any:
        try:
            first = await p.complete(LLMRequest(system="s", messages=[question], tools=[WEATHER]))
            [call] = first.tool_calls
            result = Message("user", [ToolResultBlock(call.id, "18C and sunny")])
            return first, await p.complete(LLMRequest(system="s", messages=[question, first.to_message(), result],
                                                      tools=[WEATHER]))
        finally:
            await p.aclose()

    first, second = asyncio.run(conversation())

    assert first.stop_reason == "tool_use"
    [call] = first.tool_calls
    assert (call.name, call.arguments) == ("get_weather", {"city": "Paris"}) and call.id.startswith("call_")
    assert (second.text, second.stop_reason) == ("Paris is 18C and sunny.", "end_turn")
    assert wire.requests[0]["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Current weather for a city.", "parameters": WEATHER.parameters}}]
    assert wire.requests[1]["messages"][2:] == [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"},
    ]


def test_it_asks_for_structured_output_through_response_format(server: FakeLLM) -> None:
    wire = Wire()
    schema = normalize_schema({"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]})
    response = complete(provider(server, wire), ask("give me json", output_schema=schema))

    assert json.loads(response.text) == {"answer": "yes"}
    assert wire.requests[0]["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "structured_output", "schema": schema, "strict": True}}


def test_a_server_without_json_schema_output_gives_a_clear_error_code(server: FakeLLM) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    rejected = failure(provider(server), ask("old server: give me json", output_schema=schema))
    assert (rejected.code, rejected.transient, rejected.status_code) == (UNSUPPORTED, False, 400)
    assert "structured_output=False" in str(rejected)

    wire = Wire()
    off = failure(provider(server, wire, structured_output=False), ask("give me json", output_schema=schema))
    assert (off.code, off.transient) == (UNSUPPORTED, False)
    assert wire.requests == []  # failed before calling
    # Without a schema that server is fine.
    assert complete(provider(server, structured_output=False), ask("say hello plainly")).text


@pytest.mark.parametrize(("status", "transient", "code"), [
    (429, True, "LLM_RATE_LIMITED"),
    (500, True, "LLM_UNAVAILABLE"),
    (503, True, "LLM_UNAVAILABLE"),
    (400, False, "LLM_BAD_REQUEST"),
    (401, False, "LLM_AUTH_FAILED"),
    (404, False, "LLM_NOT_FOUND"),
])
def test_it_classifies_http_errors(server: FakeLLM, status: int, transient: bool, code: str) -> None:
    error = failure(provider(server), ask(f"trigger-status-{status}"))

    assert (error.transient, error.status_code, error.code) == (transient, status, code)
    assert str(error) == f"OpenAI-compatible API error {status} (mock_error): mock failure {status}"


def test_it_treats_an_unreachable_server_as_transient() -> None:
    p = OpenAIChatProvider("demo", MODEL, f"http://127.0.0.1:{free_port()}/v1")
    error = failure(p, ask("anyone there?"))

    assert (error.transient, error.code) == (True, "LLM_UNAVAILABLE") and "unreachable" in str(error)


def test_it_treats_a_timeout_as_transient() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        p = OpenAIChatProvider("demo", MODEL, f"http://127.0.0.1:{silent.getsockname()[1]}/v1", timeout=0.3)
        error = failure(p, ask("hello?"))

    assert (error.transient, error.code) == (True, "LLM_UNAVAILABLE") and "timed out" in str(error)


def test_it_honours_the_openai_chat_variables_and_never_sends_the_openai_key(
        server: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_CHAT_BASE_URL", f"{server.url}/v1")
    monkeypatch.setenv("OPENAI_CHAT_MODEL", "qwen-from-env")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-real-openai-key-do-not-leak")
    wire = Wire()
    response = complete(OpenAIChatProvider("demo", http_client=wire.client()), ask("say hello plainly via env"))

    assert response.text == "Hello from fakellm." and wire.requests[0]["model"] == "qwen-from-env"
    assert server.stats()["recent"][0]["model"] == "qwen-from-env"
    assert "sk-real-openai-key" not in wire.headers[0]["authorization"]  # a placeholder: the key is optional

    monkeypatch.setenv("OPENAI_CHAT_API_KEY", "local-server-key-123")
    keyed = Wire()
    complete(OpenAIChatProvider("demo", http_client=keyed.client()), ask("say hello plainly with a key"))
    assert keyed.headers[0]["authorization"] == "Bearer local-server-key-123"


def test_it_needs_a_base_url_and_a_model_only_when_called(server: FakeLLM) -> None:
    with pytest.raises(LLMNotConfiguredError) as no_url:
        complete(OpenAIChatProvider("local-bot", MODEL), ask("hi"))
    assert "OPENAI_CHAT_BASE_URL" in str(no_url.value) and "local-bot" in str(no_url.value)
    assert no_url.value.code == "LLM_NOT_CONFIGURED"

    with pytest.raises(LLMNotConfiguredError) as no_model:
        complete(OpenAIChatProvider("local-bot", base_url=f"{server.url}/v1"), ask("hi"))
    assert "OPENAI_CHAT_MODEL" in str(no_model.value)


def test_it_normalizes_cached_tokens_length_and_refusals() -> None:
    from openai.types.chat import ChatCompletion

    def completion(message: dict[str, Any], finish: str, usage: dict[str, Any] | None) -> ChatCompletion:
        return ChatCompletion.model_validate({
            "id": "c", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}],
            **({"usage": usage} if usage else {})})

    cut = to_response(completion({"content": "Once upon"}, "length", {
        "prompt_tokens": 100, "completion_tokens": 7, "total_tokens": 107, "prompt_tokens_details": {"cached_tokens": 64}}))
    assert (cut.stop_reason, cut.text) == ("max_tokens", "Once upon")
    assert cut.usage.to_dict() == {"input_tokens": 36, "output_tokens": 7, "cache_read_tokens": 64,
                                   "cache_write_tokens": 0, "total_tokens": 107}

    refused = to_response(completion({"content": None, "refusal": "No."}, "stop", None))
    assert (refused.stop_reason, refused.content, refused.usage.total) == ("refusal", [TextBlock("No.")], 0)

    # Some servers say "stop" after tool calls; bad JSON arguments become no arguments.
    called = to_response(completion({"content": None, "tool_calls": [
        {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}, "stop", None))
    assert (called.stop_reason, called.content) == ("tool_use", [ToolCallBlock("t1", "f", {})])


def test_it_streams_text_as_it_is_written_and_answers_as_complete_does(server: FakeLLM) -> None:
    response, pieces = streamed(provider(server), ask("Please say hello plainly"))
    assert len(pieces) > 1, pieces
    assert "".join(pieces) == response.text == "Hello from fakellm."
    assert response.stop_reason == "end_turn"


def test_a_streamed_tool_call_comes_back_whole(server: FakeLLM) -> None:
    response, _ = streamed(provider(server), LLMRequest(system="s", messages=[Message.user("What is the weather in Paris?")],
                                                        tools=[WEATHER]))
    assert response.stop_reason == "tool_use"
    assert [c.name for c in response.tool_calls] == ["get_weather"] and response.tool_calls[0].arguments
