"""The agent loop: think (one LLM call) -> act (tool calls) -> observe, as step functions.

Every side effect goes through an `AgentHooks` object:

- `run_step(key, kind, fn)` runs one named step (`plan.<i>`, `tool.<i>.<j>`,
  `structured`) and returns its JSON-able output. The plain hooks just call `fn`;
  the durable runtime stores the output as a checkpoint and, on a re-run, returns
  the stored output without calling `fn`, so a finished LLM or tool call never runs
  twice.
- `interaction(key, spec)` asks a person (approval, AskUser). The runtime parks
  the request there until someone answers.
- `emit(event_type, payload, loop_index, step_key)` reports trace events; a re-run
  emits the same events with the same step keys, which is how the runtime dedupes.

`Agent.run()` is the plain, non-durable way to run the loop in-process.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Protocol

from mash_core.config import AgentConfig
from mash_core.llm.base import LLMError, LLMProvider, LLMRequest, LLMResponse, TokenUsage
from mash_core.messages import HistoryTurn, Message, ToolCallBlock, ToolResultBlock
from mash_core.skills import SkillRegistry, SkillTool
from mash_core.structured import StructuredOutputError, normalize_schema, parse_json_object, validate_structured
from mash_core.tools.ask_user import ASK_USER_TOOL_NAME, interaction_for_approval, interaction_for_ask_user
from mash_core.tools.base import (
    ToolRegistry,
    ToolResult,
    TransientToolError,
    missing_required_args,
    tool_definition,
)

StepFn = Callable[[], Awaitable[dict[str, Any]]]

STRUCTURED_OUTPUT_INSTRUCTION = (
    "Return your final answer above as a single JSON object that matches the required schema. "
    "Output only the JSON object."
)


@dataclass
class RetryPolicy:
    attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 8.0

    def delay(self, attempt: int) -> float:
        # Full jitter keeps many workers from retrying a rate-limited provider in lockstep.
        return random.uniform(0, min(self.max_delay, self.base_delay * (2**attempt)))


class TextDeltas(Protocol):
    """A step's text on its way out while the model writes it: called with each piece,
    closed when the call ends (successfully or not)."""

    async def __call__(self, text: str) -> None: ...

    async def aclose(self) -> None: ...


class AgentHooks:
    """Plain hooks: run steps directly, no events, interactions answered by a callback."""

    def __init__(self, interaction_handler: Callable[[dict[str, Any]], Any] | None = None):
        self.interaction_handler = interaction_handler

    async def run_step(self, key: str, kind: str, fn: StepFn) -> dict[str, Any]:
        return await fn()

    async def interaction(self, key: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Return `{"response": ..., "timed_out": bool}`.

        Without a handler nobody can answer, so the spec's default applies (for an
        approval that is "deny": a tool that needs approval never runs unattended).
        """
        if self.interaction_handler is None:
            return {"response": spec["default"], "timed_out": True}
        answer = self.interaction_handler(spec)
        if asyncio.iscoroutine(answer):
            answer = await answer
        return {"response": answer, "timed_out": False}

    async def emit(
        self, event_type: str, payload: dict[str, Any], *, loop_index: int | None = None, step_key: str = ""
    ) -> None:
        return None

    async def text_sink(self, step_key: str, attempt: int) -> "TextDeltas | None":
        """Where the text of the LLM step `step_key` goes while the model writes it, or None
        (then the step is asked for whole). Plain hooks have nowhere to send it."""
        return None

    async def call_tool(self, key: str, tool: Any, call: ToolCallBlock, run: "AgentRun") -> ToolResult:
        """Run one tool call as a durable step. The runtime overrides this for subagent calls."""
        output = await self.run_step(key, "tool", lambda: run.execute_tool(tool, call))
        result = ToolResult.from_dict(output)
        if "duration_ms" in output:
            # The stored duration, so a replay reports the same duration as the first run.
            result.metadata["duration_ms"] = output["duration_ms"]
        return result


@dataclass
class AgentResult:
    text: str
    usage: TokenUsage
    steps: int
    messages: list[Message]
    stop_reason: str  # "completed" | "max_steps"
    tools_used: list[str] = field(default_factory=list)
    tool_definitions: list[dict[str, Any]] = field(default_factory=list)
    llm_calls: int = 0
    structured_output: dict[str, Any] | None = None


class Agent:
    """An agent: config + LLM + tools + skills. Stateless between runs."""

    def __init__(
        self,
        config: AgentConfig,
        llm: LLMProvider,
        tools: ToolRegistry | None = None,
        skills: SkillRegistry | None = None,
        *,
        retry: RetryPolicy | None = None,
        system_suffix: str = "",
    ):
        self.config = config
        self.llm = llm
        self.tools = tools if tools is not None else ToolRegistry()
        self.skills = skills if skills is not None else SkillRegistry()
        self.retry = retry or RetryPolicy()
        self.system_suffix = system_suffix
        if self.config.skills_enabled and len(self.skills) and SkillTool.name not in self.tools:
            self.tools.register(SkillTool(self.skills))

    def system_prompt(self) -> str | list[dict[str, Any]]:
        prompt = self.config.system_prompt
        if not self.system_suffix:
            return prompt
        if isinstance(prompt, str):
            return f"{prompt}\n\n{self.system_suffix}"
        return [*prompt, {"type": "text", "text": self.system_suffix}]

    async def run(
        self,
        message: str,
        *,
        history: list[HistoryTurn] | None = None,
        structured_output: Any = None,
        hooks: AgentHooks | None = None,
    ) -> AgentResult:
        run = AgentRun(self, message, history or [], hooks or AgentHooks(), structured_output)
        return await run.execute()


class AgentRun:
    """One execution of the loop for one user message."""

    def __init__(
        self, agent: Agent, message: str, history: list[HistoryTurn], hooks: AgentHooks, structured_output: Any
    ):
        self.agent = agent
        self.hooks = hooks
        self.schema = normalize_schema(structured_output) if structured_output is not None else None
        self.messages: list[Message] = [m for turn in history for m in turn.to_messages()]
        self.messages.append(Message.user(message))
        self.history_turns = len(history)
        self.usage = TokenUsage()
        self.tools_used: list[str] = []
        self.llm_calls = 0

    # -- steps -------------------------------------------------------------------------

    def build_request(self, *, output_schema: dict[str, Any] | None = None) -> LLMRequest:
        config = self.agent.config
        return LLMRequest(
            system=self.agent.system_prompt(),
            messages=list(self.messages),
            tools=self.agent.tools.definitions(),
            max_tokens=config.max_tokens,
            temperature=config.temperature,
            output_schema=output_schema,
            prompt_caching=config.prompt_caching_enabled,
        )

    @property
    def provider_name(self) -> str:
        llm = self.agent.llm
        return getattr(llm, "provider", "") or type(llm).__name__.removesuffix("Provider").lower()

    async def complete(self, request: LLMRequest, key: str | None = None) -> dict[str, Any]:
        """One LLM call with bounded backoff on transient errors; the output a plan step stores.
        With `key`, its text may stream to the hooks' sink as it is written (`text_sink`)."""
        started = time.monotonic()
        policy = self.agent.retry
        attempts = max(1, policy.attempts)  # attempts=0 still makes the call once
        for attempt in range(attempts):
            sink = await self.hooks.text_sink(key, attempt) if key else None
            try:
                if sink is None:
                    response = await self.agent.llm.complete(request)
                else:
                    try:
                        response = await self.agent.llm.stream(request, sink)
                    finally:
                        await sink.aclose()  # its last text goes out before the step is stored
                break
            except LLMError as exc:
                if not exc.transient or attempt == attempts - 1:
                    raise
                await asyncio.sleep(policy.delay(attempt))
        return {"response": response.to_dict(), "duration_ms": _ms_since(started), "provider": self.provider_name}

    async def execute_tool(self, tool: Any, call: ToolCallBlock) -> dict[str, Any]:
        """Run a tool with bounded backoff on `TransientToolError`; the output a tool step stores."""
        started = time.monotonic()
        policy = self.agent.retry
        result: ToolResult
        attempts = max(1, policy.attempts)  # attempts=0 still runs the tool once
        for attempt in range(attempts):
            try:
                result = await tool.execute(dict(call.arguments))
                if not isinstance(result, ToolResult):
                    result = ToolResult.success(result)
                break
            except asyncio.CancelledError:
                raise
            except TransientToolError as exc:
                if attempt == attempts - 1:
                    result = ToolResult.error(f"{exc} (gave up after {attempts} attempts)", retryable=True)
                    break
                await asyncio.sleep(policy.delay(attempt))
            except Exception as exc:  # a crashing tool is a result the model can react to
                result = ToolResult.error(f"tool '{call.name}' failed: {type(exc).__name__}: {exc}")
                break
        out = result.to_dict()
        out["duration_ms"] = _ms_since(started)
        return out

    async def think(self, index: int) -> LLMResponse:
        key = f"plan.{index}"
        output = await self.hooks.run_step(key, "llm", lambda: self.complete(self.build_request(), key))
        response = LLMResponse.from_dict(output["response"])
        self.llm_calls += 1
        self.usage = self.usage + response.usage
        calls = response.tool_calls
        action = "tool_call" if calls else "response"
        await self.hooks.emit(
            "llm.request.complete",
            {"provider": output.get("provider"), "model": response.model, "stop_reason": response.stop_reason,
             "duration_ms": output.get("duration_ms"), **response.usage.to_dict()},
            loop_index=index,
            step_key=key,
        )
        await self.hooks.emit(
            "runtime.llm.think.completed",
            {
                "action_type": action,
                "assistant_text": response.text,
                "tool_calls": [c.to_dict() | {"type": "tool_call"} for c in calls],
                "token_usage": {"input": response.usage.input_tokens, "output": response.usage.output_tokens},
                "stop_reason": response.stop_reason,
                "duration_ms": output.get("duration_ms", 0),
            },
            loop_index=index,
            step_key=key,
        )
        return response

    async def act(self, index: int, call_index: int, call: ToolCallBlock) -> ToolResult:
        """Validate and run one tool call; every refusal becomes an error result the model sees."""
        tools = self.agent.tools
        tool = tools.get(call.name)
        key = f"tool.{index}.{call_index}"
        started = time.monotonic()
        if tool is None:
            result = ToolResult.error(f"Unknown tool '{call.name}'. Available tools: {', '.join(tools.names) or 'none'}")
        elif missing := missing_required_args(tool, call.arguments):
            result = ToolResult.error(f"Missing required argument(s) for '{call.name}': {', '.join(missing)}")
        elif call.name == ASK_USER_TOOL_NAME:
            result = await self._ask_user(f"interaction.{index}.{call_index}", call)
        else:
            result = None
            if getattr(tool, "requires_approval", False):
                answer = await self.hooks.interaction(
                    f"approval.{index}.{call_index}", interaction_for_approval(call.name, call.arguments)
                )
                if answer["response"] != "approve":
                    result = ToolResult.error(f"Tool execution denied by user ({answer['response']})")
            if result is None:
                self.tools_used.append(call.name)
                result = await self.hooks.call_tool(key, tool, call, self)
        duration = result.metadata.pop("duration_ms", None)
        if duration is None:
            duration = _ms_since(started)
        await self.hooks.emit(
            "runtime.tool.call.completed",
            {"tool_call_id": call.id, "tool_name": call.name, "arguments": call.arguments, "duration_ms": duration,
             "result": result.to_dict()},
            loop_index=index,
            step_key=key,
        )
        return result

    async def _ask_user(self, key: str, call: ToolCallBlock) -> ToolResult:
        self.tools_used.append(call.name)
        answer = await self.hooks.interaction(key, interaction_for_ask_user(call.arguments))
        if answer.get("timed_out"):
            return ToolResult.success("The user did not answer in time.", timed_out=True)
        response = answer["response"]
        text = ", ".join(map(str, response)) if isinstance(response, list) else str(response)
        return ToolResult.success(text or "(empty answer)", response=response)

    async def observe(self, index: int, response: LLMResponse, results: list[tuple[ToolCallBlock, ToolResult]]):
        self.messages.append(response.to_message())
        if results:
            self.messages.append(
                Message(
                    role="user",
                    content=[ToolResultBlock(call.id, r.content, r.is_error) for call, r in results],
                )
            )

    async def finalize_structured(self, text: str) -> dict[str, Any]:
        self.messages.append(Message.user(STRUCTURED_OUTPUT_INSTRUCTION))
        request = self.build_request(output_schema=self.schema)
        output = await self.hooks.run_step("structured", "llm", lambda: self.complete(request))
        response = LLMResponse.from_dict(output["response"])
        self.llm_calls += 1
        self.usage = self.usage + response.usage
        await self.hooks.emit(
            "llm.request.complete",
            {"provider": output.get("provider"), "model": response.model, "stop_reason": response.stop_reason,
             "purpose": "structured_output", "duration_ms": output.get("duration_ms"), **response.usage.to_dict()},
            step_key="structured",
        )
        assert self.schema is not None
        return validate_structured(self.schema, parse_json_object(response.text))

    # -- the loop ----------------------------------------------------------------------

    async def execute(self) -> AgentResult:
        config = self.agent.config
        await self.hooks.emit(
            "runtime.context.loaded",
            {"history_turns": self.history_turns, "message_count": len(self.messages),
             "tools": self.agent.tools.names, "max_steps": config.max_steps},
            step_key="context",
        )
        text = ""
        stop_reason = "max_steps"
        steps = 0
        for index in range(config.max_steps):
            steps = index + 1
            started = time.monotonic()
            response = await self.think(index)
            results = [(call, await self.act(index, j, call)) for j, call in enumerate(response.tool_calls)]
            await self.observe(index, response, results)
            await self.hooks.emit(
                "runtime.step.completed",
                {"action_type": "tool_call" if results else "response",
                 "tool_calls": [c.name for c, _ in results], "duration_ms": _ms_since(started)},
                loop_index=index,
                step_key=f"step.{index}",
            )
            if not response.tool_calls:
                text = response.text
                stop_reason = "completed"
                break
        else:
            text = f"Stopped after {config.max_steps} steps without a final answer."
        structured = await self.finalize_structured(text) if self.schema is not None else None
        return AgentResult(
            text=text,
            usage=self.usage,
            steps=steps,
            messages=self.messages,
            stop_reason=stop_reason,
            tools_used=self.tools_used,
            tool_definitions=[tool_definition(t).to_dict() for t in self.agent.tools],
            llm_calls=self.llm_calls,
            structured_output=structured,
        )


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


__all__ = [
    "Agent",
    "AgentHooks",
    "AgentResult",
    "AgentRun",
    "RetryPolicy",
    "TransientToolError",
    "StructuredOutputError",
]
