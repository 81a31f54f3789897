"""OpenAIProvider through the real `openai` SDK over real HTTP, against the loopback
Responses API fake (tests/fakes/openai_responses.py)."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest

from mash_core.agent import Agent, RetryPolicy
from mash_core.config import AgentConfig
from mash_core.llm import LLMError, LLMNotConfiguredError, LLMRequest, OpenAIProvider, ToolDefinition
from mash_core.llm.openai import DEFAULT_MODEL, strict_schema
from mash_core.messages import Message, TextBlock, ToolCallBlock, ToolResultBlock
from mash_core.structured import normalize_schema, validate_structured
from mash_core.tools import FunctionTool, ToolRegistry
from tests.fakes.openai_responses import KEY, FakeResponses

try:
    from tests.core.provider_calls import ask, complete, failure, streamed
except ImportError:  # tests/core run on its own, without the repository root on the path
    from provider_calls import ask, complete, failure, streamed  # type: ignore[no-redef]

MODEL = "gpt-4.1-test"
WEATHER = ToolDefinition(
    name="get_weather",
    description="Current weather for a city.",
    parameters={"type": "object", "properties": {"city": {"type": "string"}, "units": {"type": "string"}},
                "required": ["city"]},
)


@pytest.fixture(scope="module")
def running() -> Any:
    with FakeResponses().running() as fake:
        yield fake


@pytest.fixture
def fake(running: FakeResponses) -> FakeResponses:
    running.reset()
    return running


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_API_KEY_FILE", "OPENAI_BASE_URL", "OPENAI_MODEL", "OPENAI_CUSTOM_HEADERS",
                 "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
        monkeypatch.delenv(name, raising=False)


def provider(fake: FakeResponses, **kwargs: Any) -> OpenAIProvider:
    kwargs.setdefault("model", MODEL)
    kwargs.setdefault("api_key", KEY)
    return OpenAIProvider("demo", base_url=f"{fake.url}/v1", **kwargs)


def test_it_answers_plain_text_with_the_system_prompt_as_instructions(fake: FakeResponses) -> None:
    response = complete(provider(fake), ask("say hello plainly", temperature=0.3, max_tokens=321))

    assert response.text == "Hello from the Responses fake. You said: say hello plainly"
    assert response.content == [TextBlock(response.text)]  # the reasoning item is dropped
    assert (response.stop_reason, response.model) == ("end_turn", MODEL)
    [body] = fake.bodies("/v1/responses")
    assert body["instructions"] == "Be brief."
    assert body["input"] == [{"role": "user", "content": "say hello plainly"}]
    assert (body["max_output_tokens"], body["temperature"], body["store"]) == (321, 0.3, False)
    assert "text" not in body and "tools" not in body


def test_it_leaves_temperature_out_for_reasoning_models(fake: FakeResponses) -> None:
    # gpt-5 answers 400 to any temperature (the fake too); AgentConfig always sets one.
    response = complete(provider(fake, model="gpt-5-mini"), ask("hello", temperature=1.0))

    assert response.stop_reason == "end_turn"
    assert "temperature" not in fake.bodies()[-1]
    error = failure(provider(fake, model="gpt-5-mini", send_temperature=True), ask("hi", temperature=1.0))
    assert (error.code, error.transient) == ("LLM_BAD_REQUEST", False)


def test_it_round_trips_a_tool_call_with_matching_call_ids(fake: FakeResponses) -> None:
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

    assert first.stop_reason == "tool_use" and first.text == ""
    [call] = first.tool_calls
    assert (call.name, call.arguments) == ("get_weather", {"city": "yes"})
    assert call.id.startswith("call_")  # the call_id, not the item id (fc_...)
    assert (second.text, second.stop_reason) == ("The tool said: 18C and sunny", "end_turn")
    sent = fake.bodies()[-1]
    assert sent["input"][1:] == [
        {"type": "function_call", "call_id": call.id, "name": "get_weather", "arguments": '{"city": "yes"}'},
        {"type": "function_call_output", "call_id": call.id, "output": "18C and sunny"},
    ]
    # Sent non-strict: strict tools would make the optional `units` required.
    assert sent["tools"] == [{"type": "function", "name": "get_weather", "description": "Current weather for a city.",
                              "parameters": WEATHER.parameters, "strict": False}]


def test_it_tells_the_model_a_tool_failed_in_words(fake: FakeResponses) -> None:
    call_message = Message("assistant", [ToolCallBlock("call_9", "get_weather", {"city": "Oslo"})])
    failed = Message("user", [ToolResultBlock("call_9", "tool 'get_weather' failed: timeout", is_error=True)])
    response = complete(provider(fake), LLMRequest(system="s", messages=[Message.user("Oslo?"), call_message, failed]))

    assert response.text == "The tool said: Error: tool 'get_weather' failed: timeout"


def test_it_asks_for_strict_structured_output_and_drops_nulls_of_optional_fields(fake: FakeResponses) -> None:
    schema = normalize_schema({
        "type": "object",
        "title": "Verdict",
        "properties": {"answer": {"type": "string"}, "confidence": {"type": "number"},
                       "notes": {"type": "object", "properties": {"text": {"type": "string"}}}},
        "required": ["answer"],
    })
    response = complete(provider(fake), ask("give me json", output_schema=schema))

    fmt = fake.bodies()[-1]["text"]["format"]
    assert (fmt["type"], fmt["name"], fmt["strict"]) == ("json_schema", "Verdict", True)
    assert fmt["schema"]["required"] == ["answer", "confidence", "notes"]
    assert fmt["schema"]["properties"]["confidence"] == {"anyOf": [{"type": "number"}, {"type": "null"}]}
    # The model wrote nulls for the optional fields (strict mode makes it); they are gone.
    value = json.loads(response.text)
    assert value == {"answer": "yes"}
    assert validate_structured(schema, value) == value


def test_it_sends_a_schema_strict_mode_cannot_express_as_non_strict(fake: FakeResponses) -> None:
    schema = {"type": "object", "properties": {"scores": {"type": "object", "additionalProperties": {"type": "number"}}},
              "required": ["scores"], "additionalProperties": False}
    assert strict_schema(schema) is None
    complete(provider(fake), ask("give me json", output_schema=schema))

    fmt = fake.bodies()[-1]["text"]["format"]
    assert (fmt["strict"], fmt["schema"]) == (False, schema)


def test_it_counts_cached_input_tokens_apart_under_one_prompt_cache_key(fake: FakeResponses) -> None:
    first, second = complete(provider(fake), ask("cache me"), ask("cache me"))

    assert [b["prompt_cache_key"] for b in fake.bodies()] == ["mash-demo", "mash-demo"]
    assert first.usage.cache_read_tokens == 0 and first.usage.input_tokens > 0
    # The fake reports input_tokens including the cached half, as OpenAI does; ours keeps them apart.
    assert second.usage.cache_read_tokens > 0
    assert second.usage.input_tokens + second.usage.cache_read_tokens == first.usage.input_tokens
    assert second.usage.output_tokens > 0
    assert second.usage.total == second.usage.input_tokens + second.usage.output_tokens + second.usage.cache_read_tokens

    uncached = complete(provider(fake), ask("cache me", prompt_caching=False))
    assert "prompt_cache_key" not in fake.bodies()[-1] and uncached.usage.cache_read_tokens == 0


def test_it_reports_an_incomplete_response_as_max_tokens(fake: FakeResponses) -> None:
    response = complete(provider(fake), ask("trigger-max-tokens please"))

    assert (response.stop_reason, response.text) == ("max_tokens", "Once upon a")


def test_it_reports_a_refusal(fake: FakeResponses) -> None:
    fake.push(200, {"id": "resp_1", "object": "response", "created_at": 1, "model": MODEL, "status": "completed",
                    "output": [{"type": "message", "id": "m", "role": "assistant", "status": "completed",
                                "content": [{"type": "refusal", "refusal": "I can't help with that."}]}],
                    "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
                    "usage": {"input_tokens": 5, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 6,
                              "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 11}})
    response = complete(provider(fake), ask("something bad"))

    assert (response.stop_reason, response.text) == ("refusal", "I can't help with that.")


@pytest.mark.parametrize(("status", "transient", "code"), [
    (429, True, "LLM_RATE_LIMITED"),
    (500, True, "LLM_UNAVAILABLE"),
    (503, True, "LLM_UNAVAILABLE"),
    (400, False, "LLM_BAD_REQUEST"),
    (404, False, "LLM_NOT_FOUND"),
])
def test_it_classifies_http_errors(fake: FakeResponses, status: int, transient: bool, code: str) -> None:
    error = failure(provider(fake), ask(f"trigger-status-{status}"))

    assert (error.transient, error.status_code, error.code) == (transient, status, code)
    assert str(error).startswith(f"OpenAI API error {status} (") and f"mock failure {status}" in str(error)


def test_it_treats_a_wrong_key_as_permanent_and_never_shows_it(fake: FakeResponses) -> None:
    wrong = "sk-wrong-key-0123456789"
    error = failure(provider(fake, api_key=wrong), ask("hello"))
    assert (error.transient, error.status_code, error.code) == (False, 401, "LLM_AUTH_FAILED")

    fake.push(401, {"error": {"message": f"Incorrect API key provided: {wrong}.", "type": "invalid_request_error"}})
    echoed = failure(provider(fake, api_key=wrong), ask("hello"))
    assert wrong not in str(echoed) and "***" in str(echoed)
    assert wrong not in repr(provider(fake, api_key=wrong))


def test_it_treats_an_unreachable_server_as_transient() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    p = OpenAIProvider("demo", model=MODEL, api_key=KEY, base_url=f"http://127.0.0.1:{port}/v1")
    error = failure(p, ask("anyone there?"))

    assert (error.transient, error.code, error.status_code) == (True, "LLM_UNAVAILABLE", None)
    assert "unreachable" in str(error)


def test_it_treats_a_timeout_as_transient() -> None:
    with socket.socket() as silent:  # accepts connections (via the backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        p = OpenAIProvider("demo", model=MODEL, api_key=KEY, base_url=f"http://127.0.0.1:{silent.getsockname()[1]}/v1",
                           timeout=0.3)
        error = failure(p, ask("hello?"))

    assert (error.transient, error.code) == (True, "LLM_UNAVAILABLE") and "timed out" in str(error)


def test_it_honours_openai_base_url_model_and_key_variables(fake: FakeResponses, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in fake.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("OPENAI_MODEL", "gpt-from-env")
    p = OpenAIProvider("demo")  # everything from the environment
    response = complete(p, ask("routed by env"))

    assert response.model == "gpt-from-env" and "routed by env" in response.text
    assert fake.requests[-1].headers["authorization"] == f"Bearer {KEY}"


def test_it_reads_the_key_from_a_file_named_by_openai_api_key_file(
        fake: FakeResponses, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    (tmp_path / "key").write_text(KEY + "\n")
    monkeypatch.setenv("OPENAI_API_KEY_FILE", str(tmp_path / "key"))
    p = OpenAIProvider("demo", model=MODEL, base_url=f"{fake.url}/v1")

    assert complete(p, ask("key from a file")).text


def test_it_needs_a_key_only_when_called() -> None:
    p = OpenAIProvider("weather-bot")  # constructing must not fail

    with pytest.raises(LLMNotConfiguredError) as info:
        complete(p, ask("hi"))
    assert "OPENAI_API_KEY" in str(info.value) and "weather-bot" in str(info.value)
    assert (info.value.code, info.value.transient) == ("LLM_NOT_CONFIGURED", False)


def test_it_picks_the_model_from_arg_then_env_then_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert OpenAIProvider("a").model == DEFAULT_MODEL
    monkeypatch.setenv("OPENAI_MODEL", "gpt-env")
    assert OpenAIProvider("a").model == "gpt-env"
    assert OpenAIProvider("a", model="gpt-explicit").model == "gpt-explicit"


def test_runs_on_one_loop_share_one_client_per_configuration(fake: FakeResponses) -> None:
    async def go() -> tuple[Any, Any, Any, Any]:
        a, b, other = provider(fake), provider(fake), provider(fake, api_key="sk-another-key-123")
        first = a._get_client()
        await a.complete(ask("one"))
        return first, a._get_client(), b._get_client(), other._get_client()

    first, again, same_config, other = asyncio.run(go())
    assert first is again is same_config
    assert other is not first


def test_the_agent_retries_a_rate_limit_and_finishes_a_tool_loop_with_structured_output(fake: FakeResponses) -> None:
    def lookup(key: str) -> str:
        """Return a canned value."""
        return f"value of {key}"

    fake.push(429, {"error": {"message": "slow down", "type": "rate_limit_error"}})
    agent = Agent(AgentConfig(app_id="demo", system_prompt="You answer."), provider(fake),
                  ToolRegistry([FunctionTool(lookup)]), retry=RetryPolicy(attempts=3, base_delay=0.01))
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    result = asyncio.run(agent.run("look something up", structured_output=schema))

    assert result.text == "The tool said: value of yes"
    assert result.tools_used == ["lookup"] and result.structured_output == {"answer": "yes"}
    assert len(fake.requests) == 4  # the 429, the tool call, the answer, the structured call
    assert result.usage.input_tokens > 0 and result.usage.cache_read_tokens > 0


def test_it_streams_text_as_it_is_written_and_answers_as_complete_does(fake: FakeResponses) -> None:
    whole = complete(provider(fake), ask("say hello plainly"))
    response, pieces = streamed(provider(fake), ask("say hello plainly"))
    assert len(pieces) > 1 and "".join(pieces) == response.text == whole.text
    assert response.stop_reason == "end_turn" and response.usage.output_tokens == whole.usage.output_tokens
    assert fake.bodies("/v1/responses")[-1]["stream"] is True


def test_a_streamed_tool_call_comes_back_whole(fake: FakeResponses) -> None:
    response, _ = streamed(provider(fake), LLMRequest(system="s", messages=[Message.user("What is the weather?")],
                                                      tools=[WEATHER]))
    [call] = response.tool_calls
    assert response.stop_reason == "tool_use" and call.name == WEATHER.name and call.id


def test_a_streamed_call_classifies_errors_like_complete(fake: FakeResponses) -> None:
    with pytest.raises(LLMError) as info:
        streamed(provider(fake), ask("trigger-status-503"))
    assert info.value.transient
