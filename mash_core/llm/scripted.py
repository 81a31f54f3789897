"""`ScriptedProvider`: a deterministic model for tests and offline demos.

The turn to play is chosen from the request itself (how many assistant messages
follow the newest user text), not from a counter in the provider. So one provider
serves many concurrent requests, and a request resumed in a fresh worker process
(its earlier LLM calls replayed from checkpoints) still gets the right next turn.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, Union

from mash_core.llm.base import LLMError, LLMProvider, LLMRequest, LLMResponse, TokenUsage
from mash_core.messages import TextBlock, ToolCallBlock, ToolResultBlock


@dataclass
class ScriptedTurn:
    text: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # [{"name": ..., "arguments": {...}}]
    delay: float = 0.0  # seconds to wait before answering, to make cancellation testable
    pace: float = 0.0  # seconds between the pieces of text a streamed call tells (`stream`)

    @classmethod
    def coerce(cls, value: Any) -> "ScriptedTurn":
        if isinstance(value, ScriptedTurn):
            return value
        if isinstance(value, str):
            return cls(text=value)
        if isinstance(value, dict):
            calls = value.get("tool_calls") or []
            if "tool" in value:
                calls = [{"name": value["tool"], "arguments": value.get("arguments") or value.get("args") or {}}]
            return cls(text=value.get("text", ""), tool_calls=list(calls), delay=float(value.get("delay", 0.0)),
                       pace=float(value.get("pace", 0.0)))
        raise TypeError(f"cannot make a scripted turn from {type(value).__name__}")


TurnSource = Union[ScriptedTurn, str, dict, LLMResponse]
Script = Union[Sequence[Any], Callable[[LLMRequest], Any]]


def loop_position(request: LLMRequest) -> int:
    """How many assistant turns the current request already has (0 for its first LLM call)."""
    count = 0
    for message in reversed(request.messages):
        if message.role == "assistant":
            count += 1
            continue
        is_tool_results = message.content and all(isinstance(b, ToolResultBlock) for b in message.content)
        if not is_tool_results:
            break
    return count


def _estimate_tokens(text: str) -> int:
    return max(1, len(text) // 4)


class ScriptedProvider(LLMProvider):
    """Plays a script.

    `turns` is a list (each item a `ScriptedTurn`, a string, or a dict with `text`
    and/or `tool_calls` / `tool` + `arguments`), or a callable of the `LLMRequest`
    returning one of those or an `LLMResponse`. `structured` answers calls that ask
    for structured output: a dict, or a callable of the request returning a dict.
    """

    provider = "scripted"

    def __init__(
        self,
        turns: Script,
        *,
        structured: dict[str, Any] | Callable[[LLMRequest], Any] | None = None,
        model: str = "scripted",
    ):
        self.turns = turns
        self.structured = structured
        self.model = model
        self.calls: list[LLMRequest] = []

    async def complete(self, request: LLMRequest) -> LLMResponse:
        response, _turn = await self._answer(request)
        return response

    async def stream(self, request: LLMRequest, on_text) -> LLMResponse:
        """`complete`, its text told to `on_text` in pieces of a few words first, `pace`
        seconds apart (tests and demos of token streaming)."""
        response, turn = await self._answer(request)
        words = response.text.split(" ") if request.output_schema is None else []
        for start in range(0, len(words), 3):
            piece = " ".join(words[start:start + 3])
            await on_text(piece if start + 3 >= len(words) else piece + " ")
            await asyncio.sleep(turn.pace if turn is not None else 0)
        return response

    async def _answer(self, request: LLMRequest) -> tuple[LLMResponse, ScriptedTurn | None]:
        self.calls.append(request)
        if request.output_schema is not None:
            return self._structured_response(request), None
        if callable(self.turns):
            value = self.turns(request)
            if asyncio.iscoroutine(value):
                value = await value
        else:
            position = loop_position(request)
            if position >= len(self.turns):
                raise LLMError(
                    f"scripted provider has {len(self.turns)} turn(s); request asked for turn {position + 1}",
                    transient=False,
                    code="SCRIPT_EXHAUSTED",
                )
            value = self.turns[position]
        if isinstance(value, LLMResponse):
            return value, None
        turn = ScriptedTurn.coerce(value)
        if turn.delay:
            await asyncio.sleep(turn.delay)
        return self._response(turn, loop_position(request)), turn

    def _response(self, turn: ScriptedTurn, position: int) -> LLMResponse:
        content: list[Any] = []
        if turn.text:
            content.append(TextBlock(turn.text))
        for j, call in enumerate(turn.tool_calls):
            content.append(
                ToolCallBlock(
                    id=call.get("id") or f"toolu_scripted_{position}_{j}",
                    name=call["name"],
                    arguments=dict(call.get("arguments") or {}),
                )
            )
        output = turn.text + "".join(json.dumps(c) for c in turn.tool_calls)
        return LLMResponse(
            content=content,
            stop_reason="tool_use" if turn.tool_calls else "end_turn",
            usage=TokenUsage(input_tokens=10, output_tokens=_estimate_tokens(output)),
            model=self.model,
        )

    def _structured_response(self, request: LLMRequest) -> LLMResponse:
        source = self.structured
        if callable(source):
            value = source(request)
        elif source is not None:
            value = source
        else:
            # No canned object: hand back the last answer, which tests may have written as JSON.
            last = next((m for m in reversed(request.messages) if m.role == "assistant" and m.text), None)
            text = last.text if last else "{}"
            return LLMResponse(content=[TextBlock(text)], usage=TokenUsage(10, _estimate_tokens(text)), model=self.model)
        text = value if isinstance(value, str) else json.dumps(value)
        return LLMResponse(content=[TextBlock(text)], usage=TokenUsage(10, _estimate_tokens(text)), model=self.model)
