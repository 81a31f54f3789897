"""The agent loop (`mash_core.agent`) driven by `ScriptedProvider` and real tools.

Plain pytest, no Django, no pytest-asyncio: each test drives its own event loop.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from mash_core.agent import Agent, AgentHooks, RetryPolicy, TransientToolError
from mash_core.config import AgentConfig
from mash_core.llm.base import LLMError, LLMProvider, LLMRequest, LLMResponse, TokenUsage
from mash_core.llm.scripted import ScriptedProvider
from mash_core.messages import HistoryTurn, TextBlock, ToolCallBlock, ToolResultBlock
from mash_core.tools.ask_user import AskUserTool
from mash_core.tools.base import FunctionTool, Tool, ToolRegistry, ToolResult

NO_DELAY = RetryPolicy(attempts=4, base_delay=0, max_delay=0)


def run(coro):
    return asyncio.run(coro)


def make_agent(provider, tools=(), *, max_steps: int = 10, retry: RetryPolicy = NO_DELAY, **config) -> Agent:
    return Agent(
        AgentConfig(app_id="test-agent", max_steps=max_steps, **config),
        provider,
        ToolRegistry(tools),
        retry=retry,
    )


def tool_results(request: LLMRequest) -> list[ToolResultBlock]:
    """The tool_result blocks of the newest user message of a request."""
    last = request.messages[-1]
    assert last.role == "user"
    assert last.content and all(isinstance(b, ToolResultBlock) for b in last.content), last
    return list(last.content)


class Recorder:
    """Plain functions that record their calls, to build FunctionTools from."""

    def __init__(self):
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def add_tool(self) -> FunctionTool:
        def add(a: int, b: int) -> dict:
            """Add two integers."""
            self.calls.append(("add", {"a": a, "b": b}))
            return {"sum": a + b}

        return FunctionTool(add)

    def delete_tool(self) -> FunctionTool:
        def delete_file(path: str) -> str:
            """Delete a file."""
            self.calls.append(("delete_file", {"path": path}))
            return f"deleted {path}"

        return FunctionTool(delete_file, requires_approval=True)

    def read_tool(self) -> FunctionTool:
        def read_file(path: str) -> str:
            """Read a file."""
            self.calls.append(("read_file", {"path": path}))
            return f"contents of {path}"

        return FunctionTool(read_file)


# -- the basic round trip ------------------------------------------------------------------


def test_it_runs_a_tool_round_trip_and_returns_the_final_text():
    rec = Recorder()
    provider = ScriptedProvider(
        [
            {"text": "Let me add.", "tool_calls": [{"name": "add", "arguments": {"a": 2, "b": 3}}]},
            "The sum is 5.",
        ]
    )
    agent = make_agent(provider, [rec.add_tool()])

    result = run(agent.run("What is 2 + 3?"))

    assert rec.calls == [("add", {"a": 2, "b": 3})]
    assert result.text == "The sum is 5."
    assert result.stop_reason == "completed"
    assert result.steps == 2
    assert result.llm_calls == 2
    assert len(provider.calls) == 2
    assert result.tools_used == ["add"]

    # The tool result went back to the model in the second request, tied to the call id.
    second = provider.calls[1].messages
    assert [m.role for m in second] == ["user", "assistant", "user"]
    assert second[0].text == "What is 2 + 3?"
    call = second[1].tool_calls[0]
    assert call.name == "add" and call.arguments == {"a": 2, "b": 3}
    [block] = tool_results(provider.calls[1])
    assert block.tool_call_id == call.id
    assert block.is_error is False
    assert block.content == '{"sum": 5}'

    # The tool was offered to the model with its inferred schema.
    [definition] = provider.calls[0].tools
    assert definition.name == "add"
    assert definition.parameters["required"] == ["a", "b"]

    # Token usage is summed over both calls (ScriptedProvider charges 10 input tokens per call).
    assert result.usage.input_tokens == 20
    assert result.usage.output_tokens == sum(
        max(1, len(t) // 4)
        for t in ['Let me add.{"name": "add", "arguments": {"a": 2, "b": 3}}', "The sum is 5."]
    )

    # The final messages hold the whole exchange, ending with the answer.
    assert result.messages[-1].role == "assistant"
    assert result.messages[-1].text == "The sum is 5."
    assert [d["name"] for d in result.tool_definitions] == ["add"]


def test_it_sums_token_usage_from_every_llm_call():
    responses = [
        LLMResponse(
            content=[ToolCallBlock("c1", "add", {"a": 1, "b": 1})],
            stop_reason="tool_use",
            usage=TokenUsage(100, 7, cache_read_tokens=50, cache_write_tokens=3),
        ),
        LLMResponse(content=[TextBlock("2")], usage=TokenUsage(120, 2, cache_read_tokens=60)),
    ]
    provider = ScriptedProvider(lambda request: responses[len(provider.calls) - 1])
    result = run(make_agent(provider, [Recorder().add_tool()]).run("1+1?"))

    assert result.text == "2"
    assert (result.usage.input_tokens, result.usage.output_tokens) == (220, 9)
    assert (result.usage.cache_read_tokens, result.usage.cache_write_tokens) == (110, 3)
    assert result.usage.total == 220 + 9 + 110 + 3


def test_it_answers_without_tools_in_one_step():
    provider = ScriptedProvider(["Hello there."])
    result = run(make_agent(provider).run("hi"))
    assert (result.text, result.steps, result.llm_calls, result.stop_reason) == ("Hello there.", 1, 1, "completed")
    assert result.tools_used == []


def test_it_sends_history_config_and_system_prompt_in_the_request():
    provider = ScriptedProvider(["ok"])
    agent = Agent(
        AgentConfig(app_id="a1", system_prompt="Be brief.", max_tokens=123, temperature=0.2,
                    prompt_caching_enabled=False),
        provider,
        system_suffix="Today is Monday.",
    )
    run(agent.run("and now?", history=[HistoryTurn("first question", "first answer")]))

    [request] = provider.calls
    assert [(m.role, m.text) for m in request.messages] == [
        ("user", "first question"),
        ("assistant", "first answer"),
        ("user", "and now?"),
    ]
    assert request.system == "Be brief.\n\nToday is Monday."
    assert request.max_tokens == 123
    assert request.temperature == 0.2
    assert request.prompt_caching is False
    assert request.output_schema is None


def test_it_runs_several_tool_calls_of_one_step_in_order():
    rec = Recorder()
    provider = ScriptedProvider(
        [
            {"tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 2}},
                            {"name": "read_file", "arguments": {"path": "x.txt"}}]},
            "done",
        ]
    )
    result = run(make_agent(provider, [rec.add_tool(), rec.read_tool()]).run("go"))

    assert rec.calls == [("add", {"a": 1, "b": 2}), ("read_file", {"path": "x.txt"})]
    blocks = tool_results(provider.calls[1])
    calls = provider.calls[1].messages[1].tool_calls
    assert [b.tool_call_id for b in blocks] == [c.id for c in calls]
    assert [b.content for b in blocks] == ['{"sum": 3}', "contents of x.txt"]
    assert result.tools_used == ["add", "read_file"]
    assert result.steps == 2


# -- refusals become error results ---------------------------------------------------------


def test_it_turns_an_unknown_tool_into_an_error_result_the_model_sees():
    rec = Recorder()
    provider = ScriptedProvider([{"tool": "does_not_exist", "arguments": {"x": 1}}, "sorry"])
    result = run(make_agent(provider, [rec.add_tool()]).run("go"))

    [block] = tool_results(provider.calls[1])
    assert block.is_error is True
    assert "Unknown tool 'does_not_exist'" in block.content
    assert "add" in block.content  # the available tools are listed
    assert rec.calls == []
    assert result.text == "sorry"
    assert result.tools_used == []


def test_it_turns_missing_required_arguments_into_an_error_and_does_not_call_the_tool():
    rec = Recorder()
    provider = ScriptedProvider([{"tool": "add", "arguments": {"a": 1}}, "oops"])
    result = run(make_agent(provider, [rec.add_tool()]).run("go"))

    [block] = tool_results(provider.calls[1])
    assert block.is_error is True
    assert block.content == "Missing required argument(s) for 'add': b"
    assert rec.calls == []
    assert result.tools_used == []
    assert result.text == "oops"


def test_it_turns_a_crashing_tool_into_an_error_result():
    class Boom(Tool):
        name = "boom"
        description = "always fails"

        async def execute(self, args):
            raise RuntimeError("kaput")

    provider = ScriptedProvider([{"tool": "boom"}, "recovered"])
    result = run(make_agent(provider, [Boom()]).run("go"))

    [block] = tool_results(provider.calls[1])
    assert block.is_error is True
    assert "kaput" in block.content and "RuntimeError" in block.content
    assert result.text == "recovered"


def test_it_turns_an_exception_in_a_function_tool_into_an_error_result():
    def divide(a: int, b: int) -> float:
        return a / b

    provider = ScriptedProvider([{"tool": "divide", "arguments": {"a": 1, "b": 0}}, "cannot"])
    result = run(make_agent(provider, [FunctionTool(divide)]).run("go"))
    [block] = tool_results(provider.calls[1])
    assert block.is_error is True
    assert "ZeroDivisionError" in block.content
    assert result.text == "cannot"


# -- max_steps -----------------------------------------------------------------------------


def test_it_stops_after_max_steps_without_raising():
    rec = Recorder()
    provider = ScriptedProvider(lambda request: {"tool": "add", "arguments": {"a": 1, "b": 1}})
    result = run(make_agent(provider, [rec.add_tool()], max_steps=3).run("loop forever"))

    assert result.stop_reason == "max_steps"
    assert result.text == "Stopped after 3 steps without a final answer."
    assert result.text.startswith("Stopped after 3 steps")
    assert result.steps == 3
    assert result.llm_calls == 3
    assert len(provider.calls) == 3
    assert len(rec.calls) == 3
    assert result.tools_used == ["add", "add", "add"]


# -- approval ------------------------------------------------------------------------------


def test_it_denies_a_tool_that_needs_approval_when_nobody_can_answer():
    rec = Recorder()
    provider = ScriptedProvider([{"tool": "delete_file", "arguments": {"path": "/etc/passwd"}}, "ok, not deleted"])
    result = run(make_agent(provider, [rec.delete_tool()]).run("delete it"))

    [block] = tool_results(provider.calls[1])
    assert block.is_error is True
    assert block.content == "Tool execution denied by user (deny)"
    assert rec.calls == []
    assert result.tools_used == []
    assert result.text == "ok, not deleted"


def test_it_runs_a_tool_that_needs_approval_when_approved():
    rec = Recorder()
    specs: list[dict] = []

    def handler(spec):
        specs.append(spec)
        return "approve"

    provider = ScriptedProvider([{"tool": "delete_file", "arguments": {"path": "a.txt"}}, "deleted"])
    result = run(make_agent(provider, [rec.delete_tool()]).run("delete", hooks=AgentHooks(handler)))

    assert rec.calls == [("delete_file", {"path": "a.txt"})]
    [block] = tool_results(provider.calls[1])
    assert (block.content, block.is_error) == ("deleted a.txt", False)
    assert result.tools_used == ["delete_file"]
    [spec] = specs
    assert spec["type"] == "approval"
    assert spec["default"] == "deny"
    assert spec["schema"]["options"] == ["approve", "deny", "skip"]
    assert "delete_file" in spec["prompt"] and "a.txt" in spec["prompt"]


def test_it_accepts_an_async_interaction_handler():
    rec = Recorder()

    async def handler(spec):
        await asyncio.sleep(0)
        return "approve"

    provider = ScriptedProvider([{"tool": "delete_file", "arguments": {"path": "b"}}, "done"])
    run(make_agent(provider, [rec.delete_tool()]).run("delete", hooks=AgentHooks(handler)))
    assert rec.calls == [("delete_file", {"path": "b"})]


def test_it_reports_a_skipped_approval_as_skip():
    rec = Recorder()
    provider = ScriptedProvider([{"tool": "delete_file", "arguments": {"path": "a.txt"}}, "skipped"])
    run(make_agent(provider, [rec.delete_tool()]).run("delete", hooks=AgentHooks(lambda spec: "skip")))

    [block] = tool_results(provider.calls[1])
    assert (block.content, block.is_error) == ("Tool execution denied by user (skip)", True)
    assert rec.calls == []


def test_it_still_runs_the_other_call_of_a_step_when_one_is_denied():
    rec = Recorder()
    provider = ScriptedProvider(
        [
            {"tool_calls": [{"name": "delete_file", "arguments": {"path": "a.txt"}},
                            {"name": "read_file", "arguments": {"path": "b.txt"}}]},
            "done",
        ]
    )
    asked: list[str] = []

    def handler(spec):
        asked.append(spec["prompt"])
        return "deny"

    result = run(make_agent(provider, [rec.delete_tool(), rec.read_tool()]).run("go", hooks=AgentHooks(handler)))

    assert rec.calls == [("read_file", {"path": "b.txt"})]
    assert len(asked) == 1 and "delete_file" in asked[0]  # only the tool that needs approval asked
    denied, read = tool_results(provider.calls[1])
    assert (denied.content, denied.is_error) == ("Tool execution denied by user (deny)", True)
    assert (read.content, read.is_error) == ("contents of b.txt", False)
    assert result.tools_used == ["read_file"]


# -- AskUser -------------------------------------------------------------------------------


def test_it_routes_ask_user_without_options_to_an_info_interaction():
    specs: list[dict] = []

    def handler(spec):
        specs.append(spec)
        return "blue"

    provider = ScriptedProvider([{"tool": "AskUser", "arguments": {"question": "Favourite colour?"}}, "Nice."])
    result = run(make_agent(provider, [AskUserTool()]).run("ask me", hooks=AgentHooks(handler)))

    [spec] = specs
    assert spec["type"] == "info"
    assert spec["prompt"] == "Favourite colour?"
    assert "options" not in spec["schema"]
    [block] = tool_results(provider.calls[1])
    assert (block.content, block.is_error) == ("blue", False)
    assert result.text == "Nice."
    assert result.tools_used == ["AskUser"]


def test_it_routes_ask_user_with_options_to_a_choice_interaction():
    specs: list[dict] = []

    def handler(spec):
        specs.append(spec)
        return ["red", "green"]

    provider = ScriptedProvider(
        [{"tool": "AskUser", "arguments": {"question": "Pick colours", "options": ["red", "green", "blue"]}}, "ok"]
    )
    run(make_agent(provider, [AskUserTool()]).run("ask", hooks=AgentHooks(handler)))

    [spec] = specs
    assert spec["type"] == "choice"
    assert spec["schema"]["options"] == ["red", "green", "blue"]
    [block] = tool_results(provider.calls[1])
    assert (block.content, block.is_error) == ("red, green", False)


def test_it_tells_the_model_when_nobody_answers_ask_user():
    provider = ScriptedProvider([{"tool": "AskUser", "arguments": {"question": "Anyone?"}}, "ok"])
    run(make_agent(provider, [AskUserTool()]).run("ask"))
    [block] = tool_results(provider.calls[1])
    assert block.is_error is False
    assert "did not answer" in block.content


# -- retries -------------------------------------------------------------------------------


class FlakyProvider(LLMProvider):
    """Fails `failures` times with the given error, then answers."""

    model = "flaky"

    def __init__(self, failures: int, *, transient: bool = True, text: str = "finally"):
        self.failures = failures
        self.transient = transient
        self.text = text
        self.attempts = 0

    async def complete(self, request: LLMRequest) -> LLMResponse:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise LLMError("overloaded", transient=self.transient, status_code=529 if self.transient else 400)
        return LLMResponse(content=[TextBlock(self.text)], usage=TokenUsage(5, 1), model=self.model)


def test_it_retries_transient_llm_errors():
    provider = FlakyProvider(failures=2)
    result = run(make_agent(provider).run("hi"))
    assert result.text == "finally"
    assert provider.attempts == 3
    assert result.llm_calls == 1  # retries are one logical call
    assert result.usage.input_tokens == 5


def test_it_raises_a_permanent_llm_error_at_once():
    provider = FlakyProvider(failures=10, transient=False)
    with pytest.raises(LLMError) as info:
        run(make_agent(provider).run("hi"))
    assert info.value.transient is False
    assert provider.attempts == 1


def test_it_raises_when_transient_llm_errors_exhaust_the_retries():
    provider = FlakyProvider(failures=10)
    with pytest.raises(LLMError) as info:
        run(make_agent(provider, retry=RetryPolicy(attempts=3, base_delay=0, max_delay=0)).run("hi"))
    assert info.value.transient is True
    assert provider.attempts == 3


def test_it_keeps_retry_delays_within_bounds():
    policy = RetryPolicy(attempts=5, base_delay=0.5, max_delay=2.0)
    for attempt in range(6):
        assert 0 <= policy.delay(attempt) <= min(2.0, 0.5 * 2**attempt)


class FlakyTool(Tool):
    name = "flaky"
    description = "fails transiently a few times"

    def __init__(self, failures: int):
        self.failures = failures
        self.attempts = 0

    async def execute(self, args):
        self.attempts += 1
        if self.attempts <= self.failures:
            raise TransientToolError("service busy")
        return ToolResult.success("worked")


def test_it_retries_a_tool_raising_transient_tool_error():
    tool = FlakyTool(failures=2)
    provider = ScriptedProvider([{"tool": "flaky"}, "done"])
    run(make_agent(provider, [tool]).run("go"))

    assert tool.attempts == 3
    [block] = tool_results(provider.calls[1])
    assert (block.content, block.is_error) == ("worked", False)


def test_it_gives_up_on_a_tool_after_the_retry_attempts():
    tool = FlakyTool(failures=100)
    provider = ScriptedProvider([{"tool": "flaky"}, "done"])
    run(make_agent(provider, [tool], retry=RetryPolicy(attempts=3, base_delay=0, max_delay=0)).run("go"))

    assert tool.attempts == 3
    [block] = tool_results(provider.calls[1])
    assert block.is_error is True
    assert "service busy" in block.content and "gave up after 3 attempts" in block.content


def test_it_retries_transient_tool_error_raised_inside_a_function_tool():
    attempts = []

    async def fetch(url: str) -> str:
        attempts.append(url)
        if len(attempts) < 3:
            raise TransientToolError("timeout")
        return "page"

    provider = ScriptedProvider([{"tool": "fetch", "arguments": {"url": "http://x"}}, "done"])
    run(make_agent(provider, [FunctionTool(fetch)]).run("go"))

    assert len(attempts) == 3
    [block] = tool_results(provider.calls[1])
    assert (block.content, block.is_error) == ("page", False)


# -- hooks and events ----------------------------------------------------------------------


class RecordingHooks(AgentHooks):
    def __init__(self, interaction_handler=None):
        super().__init__(interaction_handler)
        self.steps: list[tuple[str, str]] = []
        self.events: list[tuple[str, dict, int | None, str]] = []

    async def run_step(self, key, kind, fn):
        self.steps.append((key, kind))
        return await fn()

    async def emit(self, event_type, payload, *, loop_index=None, step_key=""):
        self.events.append((event_type, payload, loop_index, step_key))

    def of(self, event_type: str) -> list[tuple[dict, int | None, str]]:
        return [(p, i, k) for t, p, i, k in self.events if t == event_type]


def test_it_runs_every_step_through_the_hooks_with_stable_keys():
    rec = Recorder()
    provider = ScriptedProvider(
        [
            {"tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 2}},
                            {"name": "read_file", "arguments": {"path": "f"}}]},
            {"tool": "add", "arguments": {"a": 3, "b": 4}},
            "all done",
        ]
    )
    hooks = RecordingHooks()
    run(make_agent(provider, [rec.add_tool(), rec.read_tool()]).run("go", hooks=hooks))

    assert hooks.steps == [
        ("plan.0", "llm"),
        ("tool.0.0", "tool"),
        ("tool.0.1", "tool"),
        ("plan.1", "llm"),
        ("tool.1.0", "tool"),
        ("plan.2", "llm"),
    ]


def test_it_emits_trace_events_with_the_documented_payloads():
    rec = Recorder()
    provider = ScriptedProvider([{"text": "adding", "tool": "add", "arguments": {"a": 2, "b": 2}}, "4"])
    hooks = RecordingHooks()
    run(make_agent(provider, [rec.add_tool()]).run("2+2", hooks=hooks))

    types = [t for t, *_ in hooks.events]
    assert types == [
        "runtime.context.loaded",
        "llm.request.complete",
        "runtime.llm.think.completed",
        "runtime.tool.call.completed",
        "runtime.step.completed",
        "llm.request.complete",
        "runtime.llm.think.completed",
        "runtime.step.completed",
    ]

    [(context, _, context_key)] = hooks.of("runtime.context.loaded")
    assert context["tools"] == ["add"]
    assert context["max_steps"] == 10
    assert context["history_turns"] == 0 and context["message_count"] == 1
    assert context_key == "context"

    (llm0, i0, k0), (llm1, i1, k1) = hooks.of("llm.request.complete")
    assert (i0, k0, i1, k1) == (0, "plan.0", 1, "plan.1")
    assert llm0["model"] == "scripted" and llm0["stop_reason"] == "tool_use"
    assert llm0["input_tokens"] == 10 and llm0["total_tokens"] == 10 + llm0["output_tokens"]

    (think0, _, _), (think1, _, key1) = hooks.of("runtime.llm.think.completed")
    assert think0["action_type"] == "tool_call"
    assert think0["assistant_text"] == "adding"
    [call] = think0["tool_calls"]
    assert call["type"] == "tool_call" and call["name"] == "add" and call["arguments"] == {"a": 2, "b": 2}
    assert set(think0["token_usage"]) == {"input", "output"}
    assert think0["token_usage"]["input"] == 10 and think0["token_usage"]["output"] > 0
    assert isinstance(think0["duration_ms"], int)
    assert think1["action_type"] == "response" and think1["tool_calls"] == []
    assert think1["assistant_text"] == "4"
    assert key1 == "plan.1"

    [(tool_event, tool_index, tool_key)] = hooks.of("runtime.tool.call.completed")
    assert (tool_index, tool_key) == (0, "tool.0.0")
    assert tool_event["tool_call_id"] == call["id"]
    assert tool_event["tool_name"] == "add"
    assert tool_event["arguments"] == {"a": 2, "b": 2}
    assert isinstance(tool_event["duration_ms"], int) and tool_event["duration_ms"] >= 0
    assert tool_event["result"] == {"content": '{"sum": 4}', "is_error": False, "metadata": {}}

    (step0, s0, sk0), (step1, s1, sk1) = hooks.of("runtime.step.completed")
    assert (s0, sk0, s1, sk1) == (0, "step.0", 1, "step.1")
    assert step0["action_type"] == "tool_call" and step0["tool_calls"] == ["add"]
    assert step1["action_type"] == "response" and step1["tool_calls"] == []


def test_it_emits_a_tool_event_for_refused_calls_too():
    provider = ScriptedProvider([{"tool": "nope"}, "ok"])
    hooks = RecordingHooks()
    run(make_agent(provider, [Recorder().add_tool()]).run("go", hooks=hooks))
    [(event, _, key)] = hooks.of("runtime.tool.call.completed")
    assert key == "tool.0.0"
    assert event["tool_name"] == "nope"
    assert event["result"]["is_error"] is True
    assert ("tool.0.0", "tool") not in hooks.steps  # nothing ran


# -- replay --------------------------------------------------------------------------------


class CheckpointHooks(RecordingHooks):
    """A fake durable runtime: step outputs are stored in a dict and replayed when present."""

    def __init__(self, store: dict[str, dict], interaction_handler=None):
        super().__init__(interaction_handler)
        self.store = store
        self.executed: list[str] = []

    async def run_step(self, key, kind, fn):
        self.steps.append((key, kind))
        if key in self.store:
            return self.store[key]
        output = await fn()
        self.executed.append(key)
        # What a database would hold: plain JSON, not live objects.
        self.store[key] = json.loads(json.dumps(output))
        return self.store[key]


class ExplodingProvider(LLMProvider):
    async def complete(self, request):
        raise AssertionError("the LLM must not be called on a replay")


def without_step_durations(events):
    """Events minus the wall-clock duration of whole steps (the only value a replay may change)."""
    return [
        (t, {k: v for k, v in p.items() if not (t == "runtime.step.completed" and k == "duration_ms")}, i, key)
        for t, p, i, key in events
    ]


def test_it_replays_stored_steps_without_running_them_again():
    calls: list[dict] = []

    async def slow_add(a: int, b: int) -> int:
        calls.append({"a": a, "b": b})
        await asyncio.sleep(0.03)
        return a + b

    script = [
        {"text": "thinking", "tool_calls": [{"name": "slow_add", "arguments": {"a": 1, "b": 2}},
                                            {"name": "slow_add", "arguments": {"a": 3, "b": 4}}]},
        {"tool": "slow_add", "arguments": {"a": 3, "b": 7}},
        "The answers are 3, 7 and 10.",
    ]
    store: dict[str, dict] = {}

    first_hooks = CheckpointHooks(store)
    first_provider = ScriptedProvider(script)
    first = run(make_agent(first_provider, [FunctionTool(slow_add)]).run("go", hooks=first_hooks))
    assert first.text == "The answers are 3, 7 and 10."
    assert first_hooks.executed == ["plan.0", "tool.0.0", "tool.0.1", "plan.1", "tool.1.0", "plan.2"]
    assert len(calls) == 3

    def must_not_run(a: int, b: int) -> int:
        raise AssertionError("the tool must not run on a replay")

    second_hooks = CheckpointHooks(store)
    second = run(
        make_agent(ExplodingProvider(), [FunctionTool(must_not_run, name="slow_add")]).run("go", hooks=second_hooks)
    )

    assert second_hooks.executed == []
    assert len(calls) == 3
    assert second.text == first.text
    assert second.steps == first.steps == 3
    assert second.llm_calls == first.llm_calls
    assert second.usage == first.usage
    assert second.tools_used == first.tools_used
    assert [m.to_dict() for m in second.messages] == [m.to_dict() for m in first.messages]
    # A replay emits the same events, with the same keys and payloads (durations included).
    assert without_step_durations(second_hooks.events) == without_step_durations(first_hooks.events)
    first_tool_durations = [p["duration_ms"] for p, _, _ in first_hooks.of("runtime.tool.call.completed")]
    assert all(d >= 20 for d in first_tool_durations)


def test_it_resumes_a_partly_stored_run_from_where_it_stopped():
    """A worker died after plan.0 and tool.0.0: only the remaining steps run."""
    calls: list[int] = []

    def add(a: int, b: int) -> int:
        calls.append(a + b)
        return a + b

    script = [{"tool": "add", "arguments": {"a": 1, "b": 1}}, "two"]
    store: dict[str, dict] = {}
    full = CheckpointHooks(store)
    run(make_agent(ScriptedProvider(script), [FunctionTool(add)]).run("go", hooks=full))
    partial = {k: v for k, v in store.items() if k in ("plan.0", "tool.0.0")}

    calls.clear()
    provider = ScriptedProvider(script)  # stateless: picks turn 1 from the replayed messages
    hooks = CheckpointHooks(partial)
    result = run(make_agent(provider, [FunctionTool(add)]).run("go", hooks=hooks))

    assert hooks.executed == ["plan.1"]
    assert calls == []
    assert len(provider.calls) == 1
    assert result.text == "two"


def test_it_still_makes_one_attempt_when_the_retry_policy_allows_none():
    provider = FlakyProvider(failures=0)
    tool = FlakyTool(failures=0)
    scripted = ScriptedProvider([{"tool": "flaky"}, "done"])
    no_retries = RetryPolicy(attempts=0, base_delay=0, max_delay=0)

    assert run(make_agent(provider, retry=no_retries).run("hi")).text == "finally"
    assert run(make_agent(scripted, [tool], retry=no_retries).run("go")).text == "done"
    assert tool.attempts == 1
