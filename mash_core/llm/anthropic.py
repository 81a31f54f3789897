"""`AnthropicProvider`: the normalized LLM contract on the official `anthropic` SDK.

The SDK client is built lazily so a server can boot (and serve every other agent)
without ANTHROPIC_API_KEY; only the first real call needs the key (from ANTHROPIC_API_KEY,
or the file ANTHROPIC_API_KEY_FILE names: mash_core.secrets).
"""

from __future__ import annotations

from typing import Any

import anthropic

from mash_core.errors import ConfigError
from mash_core.llm.clients import SDKProvider, shared_client
from mash_core.llm.base import (
    LLMError,
    LLMNotConfiguredError,
    LLMRequest,
    LLMResponse,
    StopReason,
    TokenUsage,
)
from mash_core.messages import ContentBlock, Message, TextBlock, ToolCallBlock, ToolResultBlock
from mash_core.secrets import read_secret

DEFAULT_MODEL = "claude-haiku-4-5"

_CACHE_CONTROL = {"type": "ephemeral"}

_STOP_REASONS: dict[str | None, StopReason] = {
    "end_turn": "end_turn",
    "tool_use": "tool_use",
    "max_tokens": "max_tokens",
    "stop_sequence": "stop_sequence",
    "refusal": "refusal",
    # The answer was cut short for lack of room, which callers handle like max_tokens.
    "model_context_window_exceeded": "max_tokens",
}


class AnthropicProvider(SDKProvider):
    provider = "anthropic"

    model_env = "ANTHROPIC_MODEL"
    base_url_env = "ANTHROPIC_BASE_URL"
    default_model = DEFAULT_MODEL
    # Constructed as every SDKProvider: (app_id, model, api_key, base_url, *, timeout,
    # max_retries, default_headers, http_client).

    def _get_client(self) -> anthropic.AsyncAnthropic:
        if self._client is None:
            # Read the env now, not at construction, so a key exported after boot works.
            try:
                key = self._api_key or read_secret("ANTHROPIC_API_KEY")
            except ConfigError as exc:
                raise LLMNotConfiguredError(f"{exc} (Anthropic provider for agent '{self.app_id}')") from None
            if not key:
                raise LLMNotConfiguredError(
                    "ANTHROPIC_API_KEY is not set: export it, point ANTHROPIC_API_KEY_FILE at a file "
                    f"holding it, or pass api_key=... to use the Anthropic provider for agent '{self.app_id}'"
                )
            kwargs: dict[str, Any] = {}
            # Without an explicit base_url the SDK itself reads ANTHROPIC_BASE_URL.
            if self._base_url:
                kwargs["base_url"] = self._base_url
            if self._default_headers:
                kwargs["default_headers"] = self._default_headers
            if self._http_client is not None:
                kwargs["http_client"] = self._http_client
            self._api_key = key

            def make() -> anthropic.AsyncAnthropic:
                return anthropic.AsyncAnthropic(api_key=key, timeout=self._timeout, max_retries=self._max_retries,
                                                **kwargs)

            if self._http_client is not None:
                self._client = make()
            else:
                base_url = self.base_url() or ""
                headers = tuple(sorted((self._default_headers or {}).items()))
                self._client = shared_client(("anthropic", key, base_url, self._timeout, self._max_retries, headers),
                                             make)
        return self._client

    async def complete(self, request: LLMRequest) -> LLMResponse:
        client = self._get_client()
        params = build_params(request, self.model)
        try:
            message = await client.messages.create(**params)
        except anthropic.APIError as exc:
            raise self._classify(exc) from exc
        return to_response(message)

    async def stream(self, request: LLMRequest, on_text) -> LLMResponse:
        client = self._get_client()
        params = build_params(request, self.model)
        try:
            async with client.messages.stream(**params) as events:
                async for text in events.text_stream:
                    await on_text(text)
                message = await events.get_final_message()
        except anthropic.APIError as exc:
            raise self._classify(exc) from exc
        return to_response(message)

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            if self._http_client is not None:  # ours alone; a shared client stays open
                await client.close()

    def _classify(self, exc: anthropic.APIError) -> LLMError:
        if isinstance(exc, anthropic.APITimeoutError):
            text = f"Anthropic API timed out after {self._timeout:g}s"
            error = LLMError(text, transient=True, code="LLM_UNAVAILABLE")
        elif isinstance(exc, anthropic.APIConnectionError):
            reason = exc.__cause__ or exc.message  # the SDK's own message is just "Connection error."
            text = f"Anthropic API unreachable at {exc.request.url}: {reason}"
            error = LLMError(text, transient=True, code="LLM_UNAVAILABLE")
        elif isinstance(exc, anthropic.APIStatusError):
            status = exc.status_code
            kind = f" ({exc.type})" if exc.type else ""
            detail = exc.api_message or exc.message
            text = f"Anthropic API error {status}{kind}: {detail}"
            if status == 429:
                error = LLMError(text, transient=True, status_code=status, code="LLM_RATE_LIMITED")
            elif status >= 500 or status in (408, 409):
                error = LLMError(text, transient=True, status_code=status, code="LLM_UNAVAILABLE")
            elif status in (401, 403):
                error = LLMError(text, transient=False, status_code=status, code="LLM_AUTH_FAILED")
            elif status == 404:
                error = LLMError(text, transient=False, status_code=status, code="LLM_NOT_FOUND")
            else:
                error = LLMError(text, transient=False, status_code=status, code="LLM_BAD_REQUEST")
        else:
            error = LLMError(f"Anthropic API error: {exc.message}", transient=False, code="LLM_ERROR")
        # One readable line, and belt-and-braces against a key echoed back by a proxy.
        line = " ".join(str(error).split())
        if self._api_key and len(self._api_key) >= 8:  # a toy key would mangle ordinary words
            line = line.replace(self._api_key, "***")
        error.args = (line,)
        return error


def build_params(request: LLMRequest, model: str) -> dict[str, Any]:
    """The keyword arguments for `messages.create`, as plain JSON-ready dicts."""
    params: dict[str, Any] = {
        "model": model,
        "max_tokens": request.max_tokens,
        "messages": [_message_param(m) for m in request.messages],
    }
    system = [{"type": "text", "text": request.system}] if isinstance(request.system, str) else request.system
    system = [dict(block) for block in system if block.get("text")]  # the API rejects empty text blocks
    if system:
        if request.prompt_caching:
            system[-1]["cache_control"] = dict(_CACHE_CONTROL)
        params["system"] = system
    if request.tools:
        tools = [{"name": t.name, "description": t.description, "input_schema": t.parameters} for t in request.tools]
        if request.prompt_caching:
            # A breakpoint on the last tool caches the whole (stable) tool list prefix.
            tools[-1]["cache_control"] = dict(_CACHE_CONTROL)
        params["tools"] = tools
    if request.output_schema is not None:
        params["output_config"] = {"format": {"type": "json_schema", "schema": request.output_schema}}
    if request.temperature is not None:
        # anthropic 2.x `messages.create` has no `temperature` kwarg (passing one is a
        # TypeError), yet models that still accept it honour it in the JSON body.
        params["extra_body"] = {"temperature": request.temperature}
    return params


def _message_param(message: Message) -> dict[str, Any]:
    blocks = [_block_param(b) for b in message.content]
    return {"role": message.role, "content": [b for b in blocks if b is not None]}


def _block_param(block: ContentBlock) -> dict[str, Any] | None:
    if isinstance(block, TextBlock):
        return {"type": "text", "text": block.text} if block.text else None
    if isinstance(block, ToolCallBlock):
        return {"type": "tool_use", "id": block.id, "name": block.name, "input": block.arguments}
    if isinstance(block, ToolResultBlock):
        return {
            "type": "tool_result",
            "tool_use_id": block.tool_call_id,
            "content": block.content,
            "is_error": block.is_error,
        }
    raise TypeError(f"cannot send a {type(block).__name__} to Anthropic")


def to_response(message: anthropic.types.Message) -> LLMResponse:
    """Normalize an SDK `Message`; thinking and server-tool blocks are dropped."""
    content: list[ContentBlock] = []
    for block in message.content:
        if block.type == "text":
            content.append(TextBlock(block.text))
        elif block.type == "tool_use":
            arguments = block.input if isinstance(block.input, dict) else {}
            content.append(ToolCallBlock(id=block.id, name=block.name, arguments=dict(arguments)))
    usage = message.usage
    return LLMResponse(
        content=content,
        stop_reason=_STOP_REASONS.get(message.stop_reason, "other"),
        usage=TokenUsage(
            input_tokens=usage.input_tokens or 0,
            output_tokens=usage.output_tokens or 0,
            cache_read_tokens=usage.cache_read_input_tokens or 0,
            cache_write_tokens=usage.cache_creation_input_tokens or 0,
        ),
        model=message.model,
    )
