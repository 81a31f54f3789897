"""AnthropicProvider against the real SDK over real HTTP, served by fakellm."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import anthropic
import pytest

from mash_core.llm.anthropic import DEFAULT_MODEL, AnthropicProvider, to_response
from mash_core.llm.base import LLMError, LLMNotConfiguredError, LLMRequest, ToolDefinition
from mash_core.messages import Message, TextBlock, ToolCallBlock, ToolResultBlock

try:
    from tests.core.fakellm_server import FakeLLM, free_port, run_fakellm
except ImportError:  # tests/ is not a package: pytest put this directory on sys.path
    from fakellm_server import FakeLLM, free_port, run_fakellm  # type: ignore[no-redef]

KEY = "sk-ant-test-secret-key"
MODEL = "claude-test-model"

WEATHER_TOOL = ToolDefinition(
    name="get_weather",
    description="Current weather for a city.",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
CLOCK_TOOL = ToolDefinition(name="get_time", description="Current time.", parameters={"type": "object", "properties": {}})


def _error_rule(status: int) -> dict[str, Any]:
    return {
        "name": f"status-{status}",
        "when": {"messages_contain": f"trigger-status-{status}"},
        "respond": {"status": status, "error": f"mock failure {status}"},
    }


RULES = [
    # Listed before the tool-call rule: the second turn still contains the question.
    {"name": "weather-final", "when": {"tool_result_contains": "18C and sunny"}, "respond": {"content": "Paris is 18C and sunny."}},
    {
        "name": "weather-call",
        "when": {"messages_contain": "weather in paris"},
        "respond": {"content": "", "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]},
    },
    {"name": "plain", "when": {"messages_contain": "say hello plainly"}, "respond": {"content": "Hello from fakellm, friend."}},
    {"name": "structured", "when": {"messages_contain": "give me json"}, "respond": {"content": '{"answer": "yes"}'}},
    *[_error_rule(s) for s in (400, 401, 404, 429, 500, 503, 529)],
]


@pytest.fixture(scope="module")
def fakellm() -> Any:
    with run_fakellm(RULES) as server:
        yield server


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ANTHROPIC_BASE_URL", "ANTHROPIC_MODEL", "ANTHROPIC_CUSTOM_HEADERS", "ANTHROPIC_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server(fakellm: FakeLLM) -> FakeLLM:
    fakellm.reset()  # tool_result_contains also matches results remembered from earlier turns
    return fakellm


class Wire:
    """Records every JSON body the SDK really sends and receives."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.responses: list[dict[str, Any]] = []

    def client(self) -> Any:
        async def on_request(request: Any) -> None:
            self.requests.append(json.loads(request.content))

        async def on_response(response: Any) -> None:
            await response.aread()
            self.responses.append(response.json())

        return anthropic.DefaultAsyncHttpxClient(event_hooks={"request": [on_request], "response": [on_response]})


def _complete(provider: AnthropicProvider, request: LLMRequest) -> Any:
    async def go() -> Any:
        try:
            return await provider.complete(request)
        finally:
            await provider.aclose()

    return asyncio.run(go())


def _error(provider: AnthropicProvider, request: LLMRequest) -> LLMError:
    with pytest.raises(LLMError) as info:
        _complete(provider, request)
    return info.value


def test_it_answers_plain_text_with_usage(server: FakeLLM) -> None:
    wire = Wire()
    provider = AnthropicProvider("demo", model=MODEL, api_key=KEY, base_url=server.url, http_client=wire.client())
    response = _complete(provider, LLMRequest(system="Be brief.", messages=[Message.user("Please say hello plainly")]))

    assert response.text == "Hello from fakellm, friend."
    assert response.content == [TextBlock("Hello from fakellm, friend.")]
    assert response.stop_reason == "end_turn"
    assert response.model == MODEL
    sent_usage = wire.responses[-1]["usage"]
    assert response.usage.input_tokens == sent_usage["input_tokens"] > 0
    assert response.usage.output_tokens == sent_usage["output_tokens"] > 0
    assert (response.usage.cache_read_tokens, response.usage.cache_write_tokens) == (0, 0)


def test_it_round_trips_a_tool_call(server: FakeLLM) -> None:
    wire = Wire()
    provider = AnthropicProvider("demo", model=MODEL, api_key=KEY, base_url=server.url, http_client=wire.client())
    question = Message.user("What is the weather in Paris?")

    async def conversation() -> Any:
        try:
            first = await provider.complete(LLMRequest(system="s", messages=[question], tools=[WEATHER_TOOL]))
            [call] = first.tool_calls
            result = Message(role="user", content=[ToolResultBlock(tool_call_id=call.id, content="18C and sunny")])
            messages = [question, first.to_message(), result]
            return first, await provider.complete(LLMRequest(system="s", messages=messages, tools=[WEATHER_TOOL]))
        finally:
            await provider.aclose()

    first, second = asyncio.run(conversation())

    assert first.stop_reason == "tool_use"
    assert first.text == ""
    [call] = first.tool_calls
    assert call.name == "get_weather" and call.arguments == {"city": "Paris"}
    assert call.id.startswith("toolu_")
    assert second.text == "Paris is 18C and sunny."
    assert second.stop_reason == "end_turn"
    assert wire.requests[-1]["messages"][1:] == [
        {"role": "assistant", "content": [{"type": "tool_use", "id": call.id, "name": "get_weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18C and sunny", "is_error": False}]},
    ]


@pytest.mark.parametrize(
    ("status", "transient", "code"),
    [
        (429, True, "LLM_RATE_LIMITED"),
        (500, True, "LLM_UNAVAILABLE"),
        (503, True, "LLM_UNAVAILABLE"),
        (529, True, "LLM_UNAVAILABLE"),
        (400, False, "LLM_BAD_REQUEST"),
        (401, False, "LLM_AUTH_FAILED"),
        (404, False, "LLM_NOT_FOUND"),
    ],
)
def test_it_classifies_http_errors(server: FakeLLM, status: int, transient: bool, code: str) -> None:
    provider = AnthropicProvider("demo", model=MODEL, api_key=KEY, base_url=server.url)
    error = _error(provider, LLMRequest(system="s", messages=[Message.user(f"trigger-status-{status}")]))

    assert (error.transient, error.status_code, error.code) == (transient, status, code)
    assert str(error) == f"Anthropic API error {status} (mock_error): mock failure {status}"
    assert "\n" not in str(error) and KEY not in str(error)


def test_it_treats_an_unreachable_server_as_transient() -> None:
    provider = AnthropicProvider("demo", model=MODEL, api_key=KEY, base_url=f"http://127.0.0.1:{free_port()}")
    error = _error(provider, LLMRequest(system="s", messages=[Message.user("anyone there?")]))

    assert (error.transient, error.code, error.status_code) == (True, "LLM_UNAVAILABLE", None)
    assert "unreachable" in str(error)


def test_it_treats_a_timeout_as_transient() -> None:
    with socket.socket() as silent:  # accepts connections (via the backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        provider = AnthropicProvider("demo", model=MODEL, api_key=KEY, base_url=url, timeout=0.3)
        error = _error(provider, LLMRequest(system="s", messages=[Message.user("hello?")]))

    assert (error.transient, error.code) == (True, "LLM_UNAVAILABLE")
    assert "timed out" in str(error)


def test_it_honours_anthropic_base_url_env(server: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
    provider = AnthropicProvider("demo", model="claude-env-routed", api_key=KEY)
    response = _complete(provider, LLMRequest(system="s", messages=[Message.user("say hello plainly via env")]))

    assert response.text == "Hello from fakellm, friend."
    recent = server.stats()["recent"][0]
    assert (recent["model"], recent["matched_rule"]) == ("claude-env-routed", "plain")


def test_it_needs_a_key_only_when_called(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    provider = AnthropicProvider("weather-bot")  # constructing must not fail

    with pytest.raises(LLMNotConfiguredError) as info:
        _complete(provider, LLMRequest(system="s", messages=[Message.user("hi")]))
    assert "ANTHROPIC_API_KEY" in str(info.value) and "weather-bot" in str(info.value)
    assert info.value.transient is False and info.value.code == "LLM_NOT_CONFIGURED"


def test_it_reads_the_key_from_the_env_at_call_time(server: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    wire = Wire()
    provider = AnthropicProvider("demo", model=MODEL, base_url=server.url, http_client=wire.client())
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)

    assert _complete(provider, LLMRequest(system="s", messages=[Message.user("say hello plainly")])).text
    assert KEY not in repr(provider)


def test_it_sends_cache_control_output_config_and_temperature(server: FakeLLM) -> None:
    wire = Wire()
    provider = AnthropicProvider("demo", model=MODEL, api_key=KEY, base_url=server.url, http_client=wire.client())
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    request = LLMRequest(
        system=[{"type": "text", "text": "Rules."}, {"type": "text", "text": "Persona."}],
        messages=[Message.user("give me json")],
        tools=[WEATHER_TOOL, CLOCK_TOOL],
        max_tokens=321,
        temperature=0.25,
        output_schema=schema,
    )
    response = _complete(provider, request)

    assert json.loads(response.text) == {"answer": "yes"}
    body = wire.requests[-1]
    assert body["model"] == MODEL and body["max_tokens"] == 321
    assert body["system"] == [
        {"type": "text", "text": "Rules."},
        {"type": "text", "text": "Persona.", "cache_control": {"type": "ephemeral"}},
    ]
    assert [t["name"] for t in body["tools"]] == ["get_weather", "get_time"]
    assert "cache_control" not in body["tools"][0]
    assert body["tools"][1] == {
        "name": "get_time",
        "description": "Current time.",
        "input_schema": {"type": "object", "properties": {}},
        "cache_control": {"type": "ephemeral"},
    }
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    assert body["temperature"] == 0.25
    assert request.system[1] == {"type": "text", "text": "Persona."}  # the caller's blocks are not mutated


def test_it_omits_cache_control_and_optional_fields_when_not_asked(server: FakeLLM) -> None:
    wire = Wire()
    provider = AnthropicProvider("demo", model=MODEL, api_key=KEY, base_url=server.url, http_client=wire.client())
    request = LLMRequest(system="Plain system.", messages=[Message.user("say hello plainly")], tools=[CLOCK_TOOL], prompt_caching=False)
    _complete(provider, request)

    body = wire.requests[-1]
    assert body["system"] == [{"type": "text", "text": "Plain system."}]
    assert "cache_control" not in body["tools"][0]
    assert not {"temperature", "output_config"} & body.keys()


def test_it_parses_cache_usage_and_skips_thinking() -> None:
    message = anthropic.types.Message.model_validate(
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-haiku-4-5-20251001",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_9", "name": "get_time", "input": {}},
            ],
            "stop_reason": "tool_use",
            "stop_sequence": None,
            "usage": {"input_tokens": 12, "output_tokens": 7, "cache_read_input_tokens": 900, "cache_creation_input_tokens": 40},
        }
    )
    response = to_response(message)

    assert response.content == [TextBlock("Checking."), ToolCallBlock(id="toolu_9", name="get_time", arguments={})]
    assert response.usage.to_dict() == {
        "input_tokens": 12,
        "output_tokens": 7,
        "cache_read_tokens": 900,
        "cache_write_tokens": 40,
        "total_tokens": 959,
    }
    assert response.model == "claude-haiku-4-5-20251001"

    for raw, normalized in [("pause_turn", "other"), ("model_context_window_exceeded", "max_tokens"), ("refusal", "refusal")]:
        assert to_response(message.model_copy(update={"stop_reason": raw})).stop_reason == normalized


def test_it_picks_the_model_from_arg_then_env_then_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert AnthropicProvider("a").model == DEFAULT_MODEL == "claude-haiku-4-5"
    monkeypatch.setenv("ANTHROPIC_MODEL", "claude-from-env")
    assert AnthropicProvider("a").model == "claude-from-env"
    assert AnthropicProvider("a", model="claude-explicit").model == "claude-explicit"


def _stream(provider: AnthropicProvider, request: LLMRequest) -> tuple[Any, list[str]]:
    pieces: list[str] = []

    async def on_text(text: str) -> None:
        pieces.append(text)

    async def go() -> Any:
        try:
            return await provider.stream(request, on_text)
        finally:
            await provider.aclose()

    return asyncio.run(go()), pieces


def test_it_streams_text_as_it_is_written_and_answers_as_complete_does(server: FakeLLM) -> None:
    provider = AnthropicProvider("demo", model=MODEL, api_key=KEY, base_url=server.url)
    request = LLMRequest(system="Be brief.", messages=[Message.user("Please say hello plainly")])
    response, pieces = _stream(provider, request)
    assert len(pieces) > 1, pieces  # fakellm sends the text in several deltas
    assert "".join(pieces) == response.text == "Hello from fakellm, friend."
    assert response.stop_reason == "end_turn" and response.usage.output_tokens > 0


def test_a_streamed_tool_call_comes_back_whole(server: FakeLLM) -> None:
    provider = AnthropicProvider("demo", model=MODEL, api_key=KEY, base_url=server.url)
    request = LLMRequest(system="", messages=[Message.user("What is the weather in Paris?")], tools=[WEATHER_TOOL])
    response, _pieces = _stream(provider, request)
    assert [c.name for c in response.tool_calls] == ["get_weather"]
    assert response.tool_calls[0].arguments == {"city": "Paris"}


def test_a_streamed_call_classifies_errors_like_complete() -> None:
    # fakellm streams every answer (it does not fail a streamed call): an unreachable server does.
    provider = AnthropicProvider("demo", model=MODEL, api_key=KEY, base_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(LLMError) as info:
        _stream(provider, LLMRequest(system="", messages=[Message.user("hello")]))
    assert info.value.transient and info.value.code == "LLM_UNAVAILABLE"
