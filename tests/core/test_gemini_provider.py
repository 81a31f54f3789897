"""GeminiProvider through the real `google-genai` SDK over real HTTP, against the loopback
Gemini API fake (tests/fakes/gemini_api.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from typing import Any

import pytest

from mash_core.agent import Agent, RetryPolicy
from mash_core.config import AgentConfig
from mash_core.llm import GeminiProvider, LLMError, LLMNotConfiguredError, LLMRequest, ToolDefinition
from mash_core.llm.gemini import DEFAULT_MODEL, SKIP_SIGNATURE, gemini_schema
from mash_core.messages import Message, ToolCallBlock, ToolResultBlock
from mash_core.structured import normalize_schema, validate_structured
from mash_core.tools import FunctionTool, ToolRegistry
from tests.fakes.gemini_api import KEY, FakeGemini

try:
    from tests.core.provider_calls import ask, complete, failure, streamed
except ImportError:  # tests/core run on its own, without the repository root on the path
    from provider_calls import ask, complete, failure, streamed  # type: ignore[no-redef]

MODEL = "gemini-3-flash-fake"  # a Gemini 3 model: the fake checks thought signatures
WEATHER = ToolDefinition(
    name="get_weather",
    description="Current weather for a city.",
    parameters=normalize_schema({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
)


@pytest.fixture(scope="module")
def running() -> Any:
    with FakeGemini().running() as fake:
        yield fake


@pytest.fixture
def fake(running: FakeGemini) -> FakeGemini:
    running.reset()
    return running


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GEMINI_API_KEY", "GEMINI_API_KEY_FILE", "GOOGLE_API_KEY", "GOOGLE_API_KEY_FILE", "GEMINI_BASE_URL",
                 "GOOGLE_GEMINI_BASE_URL", "GEMINI_MODEL", "GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_CLOUD_PROJECT"):
        monkeypatch.delenv(name, raising=False)


def provider(fake: FakeGemini, **kwargs: Any) -> GeminiProvider:
    kwargs.setdefault("model", MODEL)
    kwargs.setdefault("api_key", KEY)
    return GeminiProvider("demo", base_url=fake.url, **kwargs)


def test_it_answers_plain_text_with_the_system_instruction(fake: FakeGemini) -> None:
    response = complete(provider(fake), ask("say hello plainly", temperature=0.4, max_tokens=222))

    assert response.text == "Hello from the Gemini fake. You said: say hello plainly"
    assert (response.stop_reason, response.model) == ("end_turn", f"{MODEL}-001")
    [seen] = fake.requests
    assert seen.path.endswith(f"/models/{MODEL}:generateContent") and seen.headers["x-goog-api-key"] == KEY
    assert seen.body["systemInstruction"]["parts"] == [{"text": "Be brief."}]
    assert seen.body["contents"] == [{"role": "user", "parts": [{"text": "say hello plainly"}]}]
    assert seen.body["generationConfig"] == {"maxOutputTokens": 222, "temperature": 0.4}


def test_it_round_trips_a_function_call_with_a_stable_id_and_its_signature(fake: FakeGemini) -> None:
    p = provider(fake)
    question = Message.user("What is the weather in Paris?")

    async def conversation() -> Any:
        try:
            first = await p.complete(LLMRequest(system="s", messages=[question], tools=[WEATHER]))
            [call] = first.tool_calls
            results = Message("user", [ToolResultBlock(call.id, "18C and sunny")])
            second = await p.complete(LLMRequest(system="s", messages=[question, first.to_message(), results],
                                                 tools=[WEATHER]))
            return first, second
        finally:
            await p.aclose()

    first, second = asyncio.run(conversation())

    assert first.stop_reason == "tool_use"
    assert first.content == [ToolCallBlock("mash_call_1_0", "get_weather", {"city": "yes"})]  # the thought is dropped
    assert (second.text, second.stop_reason) == ('The tool said: {"output": "18C and sunny"}', "end_turn")
    declared = fake.bodies()[0]["tools"][0]["functionDeclarations"][0]
    assert declared["parameters"] == {"type": "OBJECT", "properties": {"city": {"type": "STRING"}},
                                      "required": ["city"]}  # no additionalProperties: Gemini rejects it
    model_turn, answer_turn = fake.bodies()[1]["contents"][1:]
    [call_part] = model_turn["parts"]
    assert call_part["functionCall"] == {"name": "get_weather", "args": {"city": "yes"}}  # our made-up id stays ours
    assert "thoughtSignature" in call_part  # the one the fake issued: it answered 200
    assert answer_turn == {"role": "user", "parts": [
        {"functionResponse": {"name": "get_weather", "response": {"output": "18C and sunny"}}}]}


def test_a_run_resumed_elsewhere_sends_the_placeholder_signature(fake: FakeGemini) -> None:
    # A fresh provider (another worker process replaying checkpoints) never saw the signature.
    history = [Message.user("weather?"), Message("assistant", [ToolCallBlock("mash_call_1_0", "get_weather", {"city": "Rome"})]),
               Message("user", [ToolResultBlock("mash_call_1_0", "failed", is_error=True)])]
    response = complete(provider(fake), LLMRequest(system="s", messages=history, tools=[WEATHER]))

    assert response.text == 'The tool said: {"error": "failed"}'
    call_part = fake.bodies()[0]["contents"][1]["parts"][0]
    assert base64.b64decode(call_part["thoughtSignature"]) == SKIP_SIGNATURE
    # Gemini 2.x has no signatures to validate: nothing is invented for it.
    complete(provider(fake, model="gemini-2.5-flash"), LLMRequest(system="s", messages=history, tools=[WEATHER]))
    assert "thoughtSignature" not in fake.bodies()[-1]["contents"][1]["parts"][0]


def test_it_keeps_gemini_s_own_call_ids(fake: FakeGemini) -> None:
    fake.push(200, {"candidates": [{"content": {"role": "model", "parts": [
        {"functionCall": {"id": "fc-gemini-7", "name": "get_weather", "args": {"city": "Oslo"}}}]},
        "finishReason": "STOP"}], "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2}})
    first = complete(provider(fake, model="gemini-2.5-flash"), ask("Oslo?", tools=[WEATHER]))
    [call] = first.tool_calls
    assert call.id == "fc-gemini-7"

    messages = [Message.user("Oslo?"), first.to_message(), Message("user", [ToolResultBlock(call.id, "cold")])]
    complete(provider(fake, model="gemini-2.5-flash"), LLMRequest(system="s", messages=messages, tools=[WEATHER]))
    model_turn, answer_turn = fake.bodies()[-1]["contents"][1:]
    assert model_turn["parts"][0]["functionCall"]["id"] == "fc-gemini-7"
    assert answer_turn["parts"][0]["functionResponse"]["id"] == "fc-gemini-7"


def test_it_asks_for_structured_output_through_response_schema_in_gemini_s_dialect(fake: FakeGemini) -> None:
    schema = normalize_schema({
        "type": "object",
        "properties": {"answer": {"type": "string"}, "level": {"$ref": "#/$defs/Level"},
                       "tags": {"type": "array", "items": {"type": "string"}}},
        "required": ["answer", "level"],
        "$defs": {"Level": {"type": "string", "enum": ["low", "high"]}},
    })
    request = LLMRequest(system="s", messages=[Message.user("give me json")], tools=[WEATHER], output_schema=schema)
    response = complete(provider(fake), request)

    value = json.loads(response.text)
    assert validate_structured(schema, value) == {"answer": "yes", "level": "low"}
    config = fake.bodies()[0]["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["responseSchema"]["properties"]["level"] == {"type": "STRING", "enum": ["low", "high"]}
    assert "tools" not in fake.bodies()[0]  # Gemini 2.x refuses tools with a JSON response type


def test_it_rewrites_json_schema_into_gemini_s_dialect() -> None:
    adapted = gemini_schema({
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "maybe": {"type": ["integer", "null"], "default": 3, "format": "int64"},
            "either": {"anyOf": [{"type": "string"}, {"type": "null"}], "description": "text or nothing"},
            "mixed": {"oneOf": [{"type": "string"}, {"type": "number"}]},
            "kind": {"const": "fixed"},
            "size": {"type": "integer", "enum": [1, 2]},
            "when": {"type": "string", "format": "email"},
            "both": {"allOf": [{"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
                               {"properties": {"b": {"type": "number"}}}]},
        },
        "required": ["maybe", "gone"],
    })

    assert adapted == {
        "type": "OBJECT",
        "properties": {
            "maybe": {"type": "INTEGER", "format": "int64", "nullable": True},
            "either": {"type": "STRING", "description": "text or nothing", "nullable": True},
            "mixed": {"anyOf": [{"type": "STRING"}, {"type": "NUMBER"}]},
            "kind": {"type": "STRING", "enum": ["fixed"]},
            "size": {"type": "INTEGER", "description": "One of: 1, 2."},
            "when": {"type": "STRING"},
            "both": {"type": "OBJECT", "properties": {"a": {"type": "STRING"}, "b": {"type": "NUMBER"}}, "required": ["a"]},
        },
        "required": ["maybe"],
    }
    with pytest.raises(LLMError, match="recursive"):
        gemini_schema({"type": "object", "properties": {"next": {"$ref": "#"}}})


def test_a_tool_without_arguments_declares_no_parameters(fake: FakeGemini) -> None:
    clock = ToolDefinition("get_time", "Current time.", {"type": "object", "properties": {}, "additionalProperties": False})
    response = complete(provider(fake), ask("what time is it?", tools=[clock]))

    assert response.tool_calls[0].name == "get_time" and response.tool_calls[0].arguments == {}
    assert fake.bodies()[0]["tools"][0]["functionDeclarations"] == [{"name": "get_time", "description": "Current time."}]


def test_it_takes_usage_from_usage_metadata_with_cached_and_thinking_tokens(fake: FakeGemini) -> None:
    first, second = complete(provider(fake), ask("cache me"), ask("cache me"))

    assert first.usage.cache_read_tokens == 0
    assert second.usage.cache_read_tokens > 0
    # promptTokenCount includes the cached part; ours keeps it apart. Thinking counts as output.
    assert second.usage.input_tokens + second.usage.cache_read_tokens == first.usage.input_tokens
    assert first.usage.output_tokens > 4


def test_it_reports_max_tokens(fake: FakeGemini) -> None:
    response = complete(provider(fake), ask("trigger-max-tokens please"))

    assert (response.stop_reason, response.text) == ("max_tokens", "Once upon a")


def test_it_reports_safety_and_blocked_prompts_as_refusals(fake: FakeGemini) -> None:
    fake.push(200, {"candidates": [{"content": {"role": "model", "parts": []}, "finishReason": "SAFETY"}]})
    fake.push(200, {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 5}})
    unsafe, blocked = complete(provider(fake), ask("bad"), ask("worse"))

    assert (unsafe.stop_reason, unsafe.content) == ("refusal", [])
    assert (blocked.stop_reason, blocked.usage.input_tokens) == ("refusal", 5)


@pytest.mark.parametrize(("status", "transient", "code"), [
    (429, True, "LLM_RATE_LIMITED"),
    (500, True, "LLM_UNAVAILABLE"),
    (503, True, "LLM_UNAVAILABLE"),
    (400, False, "LLM_BAD_REQUEST"),
    (403, False, "LLM_AUTH_FAILED"),
    (404, False, "LLM_NOT_FOUND"),
])
def test_it_classifies_http_errors(fake: FakeGemini, status: int, transient: bool, code: str) -> None:
    error = failure(provider(fake), ask(f"trigger-status-{status}"))

    assert (error.transient, error.status_code, error.code) == (transient, status, code)
    assert str(error).startswith(f"Gemini API error {status} (") and f"mock failure {status}" in str(error)


def test_it_treats_an_invalid_key_as_an_auth_failure_and_never_shows_it(fake: FakeGemini) -> None:
    wrong = "wrong-gemini-key-0123456789"
    error = failure(provider(fake, api_key=wrong), ask("hello"))
    assert (error.transient, error.status_code, error.code) == (False, 400, "LLM_AUTH_FAILED")

    fake.push(400, {"error": {"code": 400, "message": f"API key {wrong} not valid.", "status": "INVALID_ARGUMENT"}})
    echoed = failure(provider(fake, api_key=wrong), ask("hello"))
    assert wrong not in str(echoed) and "***" in str(echoed)
    assert wrong not in repr(provider(fake, api_key=wrong))


def test_it_treats_an_unreachable_server_as_transient() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    error = failure(GeminiProvider("demo", api_key=KEY, base_url=f"http://127.0.0.1:{port}"), ask("anyone?"))

    assert (error.transient, error.code, error.status_code) == (True, "LLM_UNAVAILABLE", None)
    assert "unreachable" in str(error)


def test_it_treats_a_timeout_as_transient() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        p = GeminiProvider("demo", api_key=KEY, base_url=f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.3)
        error = failure(p, ask("hello?"))

    assert (error.transient, error.code) == (True, "LLM_UNAVAILABLE") and "timed out" in str(error)


@pytest.mark.parametrize("key_variable", ["GEMINI_API_KEY", "GOOGLE_API_KEY"])
def test_it_honours_gemini_base_url_model_and_either_key_variable(
        fake: FakeGemini, monkeypatch: pytest.MonkeyPatch, key_variable: str) -> None:
    monkeypatch.setenv("GEMINI_BASE_URL", fake.url)
    monkeypatch.setenv("GEMINI_MODEL", "gemini-2.5-flash-from-env")
    monkeypatch.setenv(key_variable, KEY)
    response = complete(GeminiProvider("demo"), ask("routed by env"))

    assert response.model == "gemini-2.5-flash-from-env-001" and "routed by env" in response.text


def test_it_needs_a_key_only_when_called() -> None:
    p = GeminiProvider("weather-bot")  # constructing must not fail

    with pytest.raises(LLMNotConfiguredError) as info:
        complete(p, ask("hi"))
    assert "GEMINI_API_KEY or GOOGLE_API_KEY" in str(info.value) and "weather-bot" in str(info.value)
    assert (info.value.code, info.value.transient) == ("LLM_NOT_CONFIGURED", False)


def test_it_picks_the_model_from_arg_then_env_then_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert GeminiProvider("a").model == DEFAULT_MODEL
    monkeypatch.setenv("GEMINI_MODEL", "gemini-env")
    assert GeminiProvider("a").model == "gemini-env"
    assert GeminiProvider("a", model="gemini-explicit").model == "gemini-explicit"


def test_runs_on_one_loop_share_one_client_per_configuration(fake: FakeGemini) -> None:
    async def go() -> tuple[Any, Any, Any]:
        a, b, other = provider(fake), provider(fake), provider(fake, api_key="another-key-0123456")
        first = a._get_client()
        await a.complete(ask("one"))
        return first, b._get_client(), other._get_client()

    first, same_config, other = asyncio.run(go())
    assert first is same_config and other is not first


def test_the_agent_retries_a_server_error_and_finishes_a_tool_loop_with_structured_output(fake: FakeGemini) -> None:
    def lookup(key: str) -> str:
        """Return a canned value."""
        return f"value of {key}"

    fake.push(503, {"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}})
    agent = Agent(AgentConfig(app_id="demo", system_prompt="You answer."), provider(fake),
                  ToolRegistry([FunctionTool(lookup)]), retry=RetryPolicy(attempts=3, base_delay=0.01))
    result = asyncio.run(agent.run("look something up", structured_output={
        "type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}))

    assert result.text == 'The tool said: {"output": "value of yes"}'
    assert result.tools_used == ["lookup"] and result.structured_output == {"answer": "yes"}
    assert len(fake.requests) == 4  # the 503, the call, the answer, the structured call
    assert result.usage.cache_read_tokens > 0
    assert result.messages[1].content == [ToolCallBlock("mash_call_1_0", "lookup", {"key": "yes"})]
    # The structured call declares no tools, so its history tells the tool call in words.
    structured = fake.bodies()[-1]
    assert "tools" not in structured and "functionCall" not in json.dumps(structured)
    assert [p["text"] for c in structured["contents"] for p in c["parts"]][1:3] == [
        '(called lookup with {"key": "yes"})', "(lookup returned: value of yes)"]


def test_it_streams_text_as_it_is_written_and_answers_as_complete_does(fake: FakeGemini) -> None:
    whole = complete(provider(fake), ask("say hello plainly"))
    response, pieces = streamed(provider(fake), ask("say hello plainly"))
    assert len(pieces) > 1 and "".join(pieces) == response.text == whole.text
    assert response.stop_reason == "end_turn"
    # The fake's cache is warm for the second call: the prompt is the same size in all.
    total = response.usage.input_tokens + response.usage.cache_read_tokens
    assert total == whole.usage.input_tokens + whole.usage.cache_read_tokens > 0
    assert any(":streamGenerateContent" in r.path for r in fake.requests)


def test_a_streamed_tool_call_comes_back_whole(fake: FakeGemini) -> None:
    response, _ = streamed(provider(fake), LLMRequest(system="s", messages=[Message.user("What is the weather?")],
                                                      tools=[WEATHER]))
    [call] = response.tool_calls
    assert response.stop_reason == "tool_use" and call.name == WEATHER.name and call.id


def test_a_streamed_call_classifies_errors_like_complete(fake: FakeGemini) -> None:
    with pytest.raises(LLMError) as info:
        streamed(provider(fake), ask("trigger-status-503"))
    assert info.value.transient
