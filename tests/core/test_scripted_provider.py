"""`ScriptedProvider` (stateless turn selection) and the serialisable LLM contract it speaks."""

from __future__ import annotations

import asyncio
import json

import pytest

from mash_core.agent import Agent, RetryPolicy
from mash_core.config import AgentConfig
from mash_core.llm import LLMError, LLMRequest, LLMResponse, ScriptedProvider, ScriptedTurn, TokenUsage
from mash_core.llm.scripted import loop_position
from mash_core.messages import HistoryTurn, Message, TextBlock, ToolCallBlock, ToolResultBlock, block_from_dict
from mash_core.tools.base import FunctionTool, ToolRegistry


def run(coro):
    return asyncio.run(coro)


def request(*messages: Message, **kwargs) -> LLMRequest:
    return LLMRequest(system="s", messages=list(messages), **kwargs)


def tool_round(position: int) -> list[Message]:
    """One assistant tool call plus its result message."""
    call = ToolCallBlock(f"c{position}", "t", {})
    return [Message("assistant", [call]), Message("user", [ToolResultBlock(call.id, "r")])]


# -- turn selection ------------------------------------------------------------------------


def test_it_counts_the_assistant_turns_after_the_newest_user_text():
    assert loop_position(request(Message.user("hi"))) == 0
    assert loop_position(request(Message.user("hi"), *tool_round(0))) == 1
    assert loop_position(request(Message.user("hi"), *tool_round(0), *tool_round(1))) == 2
    # History turns before the newest user text do not count.
    history = HistoryTurn("old q", "old a").to_messages()
    assert loop_position(request(*history, Message.user("new"))) == 0
    assert loop_position(request(*history, Message.user("new"), *tool_round(0))) == 1
    # A finished answer followed by the structured-output instruction starts over.
    assert loop_position(request(Message.user("q"), Message.assistant("a"), Message.user("now JSON"))) == 0


def test_it_plays_the_turn_the_request_asks_for_regardless_of_call_order():
    provider = ScriptedProvider([{"tool": "t"}, "second", "third"])
    later = run(provider.complete(request(Message.user("hi"), *tool_round(0), *tool_round(1))))
    first = run(provider.complete(request(Message.user("hi"))))
    again = run(provider.complete(request(Message.user("hi"))))

    assert later.text == "third" and later.stop_reason == "end_turn"
    assert first.tool_calls[0].name == "t" and first.stop_reason == "tool_use"
    assert again.tool_calls == first.tool_calls  # same request, same answer: no hidden counter
    assert len(provider.calls) == 3


def test_it_gives_each_concurrent_run_its_own_turns():
    seen: list[str] = []

    async def lookup(key: str) -> str:
        seen.append(key)
        await asyncio.sleep(0.01)
        return f"value of {key}"

    def script(req: LLMRequest):
        # The answer depends on the run's own question and on its position in the loop.
        question = next(m.text for m in reversed(req.messages) if m.role == "user" and m.text)
        if loop_position(req) == 0:
            return {"tool": "lookup", "arguments": {"key": question}, "delay": 0.02}
        return f"answer for {question}: {req.messages[-1].content[0].content}"

    provider = ScriptedProvider(script)
    agent = Agent(AgentConfig(app_id="c"), provider, ToolRegistry([FunctionTool(lookup)]))

    async def both():
        return await asyncio.gather(agent.run("alpha"), agent.run("beta"))

    alpha, beta = run(both())
    assert alpha.text == "answer for alpha: value of alpha"
    assert beta.text == "answer for beta: value of beta"
    assert sorted(seen) == ["alpha", "beta"]
    assert alpha.steps == beta.steps == 2
    assert len(provider.calls) == 4


def test_it_serves_a_list_script_to_concurrent_runs_without_skipping_turns():
    calls: list[str] = []

    def ping(who: str) -> str:
        calls.append(who)
        return "pong"

    provider = ScriptedProvider([{"tool": "ping", "arguments": {"who": "x"}, "delay": 0.02}, "finished"])
    agent = Agent(AgentConfig(app_id="c"), provider, ToolRegistry([FunctionTool(ping)]))

    async def many():
        return await asyncio.gather(*(agent.run(f"run {i}") for i in range(3)))

    results = run(many())
    # A counter-based script would hand "finished" to the second run's first call and then run dry.
    assert [r.text for r in results] == ["finished"] * 3
    assert [r.steps for r in results] == [2, 2, 2]
    assert calls == ["x", "x", "x"]


def test_it_raises_a_permanent_error_when_the_script_runs_out():
    provider = ScriptedProvider([{"tool": "t"}])
    with pytest.raises(LLMError) as info:
        run(provider.complete(request(Message.user("hi"), *tool_round(0))))
    assert info.value.transient is False
    assert info.value.code == "SCRIPT_EXHAUSTED"
    assert "1 turn(s)" in str(info.value) and "turn 2" in str(info.value)


def test_it_fails_an_agent_run_at_once_when_the_script_runs_out():
    def t() -> str:
        return "r"

    provider = ScriptedProvider([{"tool": "t"}])
    agent = Agent(AgentConfig(app_id="x"), provider, ToolRegistry([FunctionTool(t)]), retry=RetryPolicy(attempts=4))
    with pytest.raises(LLMError) as info:
        run(agent.run("hi"))
    assert info.value.code == "SCRIPT_EXHAUSTED"
    assert len(provider.calls) == 2  # not retried: exhaustion is permanent


# -- turn formats --------------------------------------------------------------------------


def test_it_accepts_strings_dicts_turns_and_responses():
    canned = LLMResponse([TextBlock("canned")], usage=TokenUsage(1, 2), model="m")
    provider = ScriptedProvider(lambda req: canned)
    assert run(provider.complete(request(Message.user("x")))) is canned

    provider = ScriptedProvider(
        [
            ScriptedTurn(text="a", tool_calls=[{"name": "t", "arguments": {"k": 1}, "id": "my-id"}]),
            {"tool_calls": [{"name": "u"}, {"name": "v", "arguments": {"z": 2}}]},
            {"tool": "w", "args": {"y": 3}},
        ]
    )
    first = run(provider.complete(request(Message.user("x"))))
    assert first.text == "a"
    assert first.tool_calls == [ToolCallBlock("my-id", "t", {"k": 1})]
    second = run(provider.complete(request(Message.user("x"), *tool_round(0))))
    assert second.tool_calls == [
        ToolCallBlock("toolu_scripted_1_0", "u", {}),
        ToolCallBlock("toolu_scripted_1_1", "v", {"z": 2}),
    ]
    third = run(provider.complete(request(Message.user("x"), *tool_round(0), *tool_round(1))))
    assert third.tool_calls == [ToolCallBlock("toolu_scripted_2_0", "w", {"y": 3})]
    assert third.model == "scripted"
    assert third.usage.input_tokens == 10


def test_it_awaits_an_async_script():
    async def script(req):
        await asyncio.sleep(0)
        return "from async"

    assert run(ScriptedProvider(script).complete(request(Message.user("x")))).text == "from async"


def test_it_rejects_a_turn_of_an_unknown_type():
    with pytest.raises(TypeError, match="cannot make a scripted turn from int"):
        ScriptedTurn.coerce(3)


def test_it_waits_for_a_delayed_turn_and_can_be_cancelled():
    provider = ScriptedProvider([{"text": "slow", "delay": 5}])

    async def main():
        task = asyncio.create_task(provider.complete(request(Message.user("x"))))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(asyncio.wait_for(main(), timeout=2))


def test_it_answers_structured_requests_from_the_structured_source():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    provider = ScriptedProvider(["ignored"], structured={"a": 1})
    response = run(provider.complete(request(Message.user("x"), output_schema=schema)))
    assert json.loads(response.text) == {"a": 1}

    echo = ScriptedProvider(["x"], structured=lambda req: {"a": len(req.messages)})
    assert json.loads(run(echo.complete(request(Message.user("x"), output_schema=schema))).text) == {"a": 1}

    fallback = ScriptedProvider(["x"])
    convo = request(Message.user("q"), Message.assistant('{"a": 7}'), Message.user("json"), output_schema=schema)
    assert run(fallback.complete(convo)).text == '{"a": 7}'
    assert run(fallback.complete(request(Message.user("q"), output_schema=schema))).text == "{}"


# -- the serialisable contract -------------------------------------------------------------


def test_it_round_trips_responses_and_messages_through_json():
    response = LLMResponse(
        content=[TextBlock("hi"), ToolCallBlock("c1", "t", {"nested": {"a": [1, 2]}})],
        stop_reason="tool_use",
        usage=TokenUsage(1, 2, 3, 4),
        model="m",
    )
    data = json.loads(json.dumps(response.to_dict()))
    assert data["usage"]["total_tokens"] == 10
    assert LLMResponse.from_dict(data) == response

    message = Message("user", [ToolResultBlock("c1", "out", is_error=True), TextBlock("and text")])
    assert Message.from_dict(json.loads(json.dumps(message.to_dict()))) == message
    assert response.to_message() == Message("assistant", response.content)
    with pytest.raises(ValueError, match="unknown content block type"):
        block_from_dict({"type": "image"})


def test_it_adds_token_usage():
    total = TokenUsage(1, 2, 3, 4) + TokenUsage(10, 20, 30, 40)
    assert total == TokenUsage(11, 22, 33, 44)
    assert total.total == 110
    assert TokenUsage.from_dict(None) == TokenUsage()


def test_it_joins_system_prompt_blocks_as_text():
    req = LLMRequest(system=[{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], messages=[])
    assert req.system_text == "a\n\nb"
    assert LLMRequest(system="plain", messages=[]).system_text == "plain"
