"""`OpenAIChatProvider`: the normalized LLM contract on the `openai` SDK's Chat Completions API,
for any OpenAI-compatible server: vLLM, Ollama, llama.cpp server, LM Studio (all of them speak
`/v1/chat/completions`; only some speak the Responses API).

The server is named by `base_url` (or OPENAI_CHAT_BASE_URL) and the model by `model` (or
OPENAI_CHAT_MODEL); a key is optional (`api_key`, or OPENAI_CHAT_API_KEY / its _FILE). The
OpenAI key is never sent here: a local server has no business seeing it.
"""

from __future__ import annotations

import json
from typing import Any

from mash_core.llm.base import LLMError, LLMNotConfiguredError, LLMRequest, LLMResponse, StopReason, TokenUsage
from mash_core.llm.openai import OpenAICompatible, json_schema_format, parse_arguments, restore_optional, tool_output
from mash_core.messages import Message, TextBlock, ToolCallBlock, ToolResultBlock

_FINISH_REASONS: dict[str | None, StopReason] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}

UNSUPPORTED = "LLM_STRUCTURED_OUTPUT_UNSUPPORTED"


class OpenAIChatProvider(OpenAICompatible):
    """Chat Completions on an OpenAI-compatible server. Tool calls come back in
    `message.tool_calls`, results go as `role: tool` messages; `output_schema` goes as a
    `response_format` JSON schema. For a server without JSON-schema output pass
    `structured_output=False`: a structured call then fails at once with
    LLM_STRUCTURED_OUTPUT_UNSUPPORTED (as it does when a server rejects `response_format`)."""

    provider = "openai-chat"
    vendor = "OpenAI-compatible"
    key_names = ("OPENAI_CHAT_API_KEY",)
    key_required = False
    model_env = "OPENAI_CHAT_MODEL"
    base_url_env = "OPENAI_CHAT_BASE_URL"
    default_model = ""  # no sensible default: the server decides what it serves

    def __init__(self, app_id: str, model: str | None = None, base_url: str | None = None,
                 api_key: str | None = None, *, structured_output: bool = True, timeout: float = 300.0,
                 **kwargs: Any) -> None:
        # Local models on modest hardware take minutes for a long prompt, hence the longer timeout.
        super().__init__(app_id, model, api_key, base_url, timeout=timeout, **kwargs)
        self.structured_output = structured_output

    def _checked_base_url(self) -> str | None:
        base_url = self.base_url()
        if not base_url:
            raise LLMNotConfiguredError(
                f"{self.base_url_env} is not set: export it or pass base_url=... (e.g. http://127.0.0.1:11434/v1 "
                f"for Ollama, http://127.0.0.1:8000/v1 for vLLM) to use the OpenAI-compatible provider for "
                f"agent '{self.app_id}'")
        return base_url

    async def complete(self, request: LLMRequest) -> LLMResponse:
        import openai

        client, params = self._prepare(request)
        try:
            completion = await client.chat.completions.create(**params)
        except openai.APIError as exc:
            raise self._call_error(exc, request) from exc
        return restore_optional(to_response(completion), request.output_schema)

    async def stream(self, request: LLMRequest, on_text) -> LLMResponse:
        import openai

        client, params = self._prepare(request)
        params["stream_options"] = {"include_usage": True}
        try:
            async with client.chat.completions.stream(**params) as events:
                async for event in events:
                    if event.type == "content.delta" and event.delta:
                        await on_text(event.delta)
                completion = await events.get_final_completion()
        except openai.APIError as exc:
            raise self._call_error(exc, request) from exc
        return restore_optional(to_response(completion), request.output_schema)

    def _prepare(self, request: LLMRequest):
        if not self.model:
            raise LLMNotConfiguredError(
                f"{self.model_env} is not set: export it or pass model=... (a model the server serves) to use "
                f"the OpenAI-compatible provider for agent '{self.app_id}'")
        if request.output_schema is not None and not self.structured_output:
            raise LLMError(f"structured output is off for the OpenAI-compatible server at {self.base_url()} "
                           "(structured_output=False): this agent cannot answer with a JSON schema here",
                           transient=False, code=UNSUPPORTED)
        return self._get_client(), build_params(request, self.model, temperature=self.takes_temperature())

    def _call_error(self, exc, request: LLMRequest) -> LLMError:
        error = self._classify(exc)
        if request.output_schema is not None and _rejects_response_format(error):
            error = LLMError(f"{error} (the server at {self.base_url()} does not take response_format "
                             "json_schema: it cannot give structured output; pass structured_output=False "
                             "to fail before calling)", transient=False, status_code=error.status_code,
                             code=UNSUPPORTED)
        return error


def _rejects_response_format(error: LLMError) -> bool:
    text = str(error).lower()
    return error.status_code in (400, 422, 501) and ("response_format" in text or "json_schema" in text)


def build_params(request: LLMRequest, model: str, *, temperature: bool = True) -> dict[str, Any]:
    """The keyword arguments for `chat.completions.create`, as plain JSON-ready dicts."""
    messages: list[dict[str, Any]] = []
    if request.system_text:
        messages.append({"role": "system", "content": request.system_text})
    for message in request.messages:
        messages.extend(_message_params(message))
    # max_tokens, not max_completion_tokens: every compatible server reads the older name.
    params: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": request.max_tokens}
    if request.tools:
        params["tools"] = [{"type": "function", "function": {"name": t.name, "description": t.description,
                                                             "parameters": t.parameters}} for t in request.tools]
    if request.output_schema is not None:
        params["response_format"] = {"type": "json_schema", "json_schema": json_schema_format(request.output_schema)}
    if request.temperature is not None and temperature:
        params["temperature"] = request.temperature
    return params


def _message_params(message: Message) -> list[dict[str, Any]]:
    text = "".join(b.text for b in message.content if isinstance(b, TextBlock))
    calls = [b for b in message.content if isinstance(b, ToolCallBlock)]
    results = [b for b in message.content if isinstance(b, ToolResultBlock)]
    out: list[dict[str, Any]] = []
    if message.role == "assistant":
        if text or calls:
            param: dict[str, Any] = {"role": "assistant", "content": text or None}
            if calls:
                param["tool_calls"] = [{"id": c.id, "type": "function",
                                        "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                                       for c in calls]
            out.append(param)
        return out
    out.extend({"role": "tool", "tool_call_id": r.tool_call_id, "content": tool_output(r)} for r in results)
    if text:
        out.append({"role": "user", "content": text})
    return out


def to_response(completion: Any) -> LLMResponse:
    """Normalize an SDK `ChatCompletion` (the first choice); reasoning fields are dropped."""
    content: list[Any] = []
    finish: str | None = None
    if completion.choices:
        choice = completion.choices[0]
        finish = choice.finish_reason
        message = choice.message
        if message.content:
            content.append(TextBlock(message.content))
        elif getattr(message, "refusal", None):
            content.append(TextBlock(message.refusal))
            finish = "content_filter"
        for call in message.tool_calls or []:
            function = getattr(call, "function", None)
            if function is None:  # a custom (non-function) tool call: not ours
                continue
            content.append(ToolCallBlock(id=call.id, name=function.name, arguments=parse_arguments(function.arguments)))
    stop = _FINISH_REASONS.get(finish, "other")
    if stop == "end_turn" and any(isinstance(b, ToolCallBlock) for b in content):
        stop = "tool_use"  # some servers say "stop" after tool calls
    usage = completion.usage
    tokens = TokenUsage()
    if usage is not None:
        cached = getattr(usage.prompt_tokens_details, "cached_tokens", 0) or 0
        tokens = TokenUsage(input_tokens=max(0, (usage.prompt_tokens or 0) - cached),
                            output_tokens=usage.completion_tokens or 0, cache_read_tokens=cached)
    return LLMResponse(content=content, stop_reason=stop, usage=tokens, model=completion.model or "")


__all__ = ["OpenAIChatProvider", "build_params", "to_response", "UNSUPPORTED"]
