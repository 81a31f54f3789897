"""`OpenAIProvider`: the normalized LLM contract on the official `openai` SDK's Responses API.

The SDK is imported at the first call, not with this module: it costs a worker process about
45 MiB, which one that never calls OpenAI should not carry. The key is
read at the first call too (OPENAI_API_KEY, or the file OPENAI_API_KEY_FILE names), so a
server boots, and serves every other agent, without it.

Also here, for `OpenAIChatProvider` (openai_chat.py): the client, error classification and
the strict JSON-schema dialect both OpenAI APIs share.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from typing import Any

from mash_core.llm.base import LLMError, LLMRequest, LLMResponse, StopReason, TokenUsage
from mash_core.llm.clients import SDKProvider, missing_key_error, one_line, read_key, shared_client, status_error
from mash_core.messages import Message, TextBlock, ToolCallBlock, ToolResultBlock

DEFAULT_MODEL = "gpt-5-mini"

# Reasoning models answer 400 to any `temperature`; other models take it.
_REASONING_MODEL = re.compile(r"^(gpt-5|o\d)", re.IGNORECASE)


class OpenAICompatible(SDKProvider):
    """What the two OpenAI-SDK providers share: one `AsyncOpenAI` client per configuration
    (mash_core.llm.clients), the key read at the first call, errors classified like
    AnthropicProvider's. Subclasses set the class attributes and implement `complete`."""

    provider = "openai"  # the name in session info and the README's table
    vendor = "OpenAI"  # how error messages name the service
    key_names: tuple[str, ...] = ("OPENAI_API_KEY",)
    key_required = True
    model_env = "OPENAI_MODEL"
    base_url_env = "OPENAI_BASE_URL"
    default_model = DEFAULT_MODEL

    def __init__(self, app_id: str, model: str | None = None, api_key: str | None = None,
                 base_url: str | None = None, *, send_temperature: bool | None = None, **kwargs: Any) -> None:
        """`kwargs`: SDKProvider's (timeout, max_retries, default_headers, http_client).
        `send_temperature` None: send `temperature` unless the model is a reasoning model
        (gpt-5*, o1/o3/o4...), which rejects it. True/False: always/never."""
        super().__init__(app_id, model, api_key, base_url, **kwargs)
        self._send_temperature = send_temperature

    def takes_temperature(self) -> bool:
        if self._send_temperature is not None:
            return self._send_temperature
        return not _REASONING_MODEL.match(self.model)

    def _get_client(self) -> Any:
        if self._client is None:
            # Read the env now, not at construction, so a key exported after boot works.
            key = read_key(self.key_names, self._api_key, self.vendor, self.app_id)
            if not key:
                if self.key_required:
                    raise missing_key_error(self.key_names, self.vendor, self.app_id)
                key = "not-needed"  # local servers ignore it; the SDK insists on one
            else:
                self._api_key = key
            base_url = self._checked_base_url()
            import openai  # lazily: see the module docstring

            kwargs: dict[str, Any] = {}
            if self._default_headers:
                kwargs["default_headers"] = self._default_headers
            if self._http_client is not None:
                kwargs["http_client"] = self._http_client

            def make() -> Any:
                # base_url is passed even when None, so OPENAI_BASE_URL is read here, not by the SDK.
                return openai.AsyncOpenAI(api_key=key, base_url=base_url, timeout=self._timeout,
                                          max_retries=self._max_retries, **kwargs)

            if self._http_client is not None:
                self._client = make()
            else:
                headers = tuple(sorted((self._default_headers or {}).items()))
                self._client = shared_client(
                    ("openai", key, base_url or "", self._timeout, self._max_retries, headers), make)
        return self._client

    def _checked_base_url(self) -> str | None:
        return self.base_url()

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            if self._http_client is not None:  # ours alone; a shared client stays open
                await client.close()

    def _classify(self, exc: Exception) -> LLMError:
        import openai

        if isinstance(exc, openai.APITimeoutError):
            error = LLMError(f"{self.vendor} API timed out after {self._timeout:g}s", transient=True,
                             code="LLM_UNAVAILABLE")
        elif isinstance(exc, openai.APIConnectionError):
            reason = exc.__cause__ or exc.message  # the SDK's own message is just "Connection error."
            error = LLMError(f"{self.vendor} API unreachable at {exc.request.url}: {reason}", transient=True,
                             code="LLM_UNAVAILABLE")
        elif isinstance(exc, openai.APIStatusError):
            body = exc.body
            detail = None
            if isinstance(body, dict):
                detail = body.get("message") or body.get("detail") or body.get("error")
            elif isinstance(body, str):
                detail = body
            kind = exc.type or (exc.code if isinstance(exc.code, str) else None)
            error = status_error(self.vendor, exc.status_code, str(detail or exc.message)[:2000], kind)
        else:
            error = LLMError(f"{self.vendor} API error: {exc}", transient=False, code="LLM_ERROR")
        return one_line(error, self._api_key)


class OpenAIProvider(OpenAICompatible):
    """OpenAI's Responses API. Model from `model`, else OPENAI_MODEL, else a current small GPT;
    base URL from `base_url`, else OPENAI_BASE_URL. The system prompt goes as `instructions`,
    history and tool results as input items, `output_schema` as a strict `text.format` JSON
    schema; `prompt_cache_key` (one per agent) groups the calls that share a prompt prefix.
    Nothing is stored on OpenAI's side unless `store=True`: every call carries its whole input."""

    def __init__(self, app_id: str, model: str | None = None, api_key: str | None = None,
                 base_url: str | None = None, *, store: bool = False, **kwargs: Any) -> None:
        super().__init__(app_id, model, api_key, base_url, **kwargs)
        self.store = store

    def prompt_cache_key(self) -> str:
        key = f"mash-{self.app_id}"
        return key if len(key) <= 64 else "mash-" + hashlib.sha256(self.app_id.encode()).hexdigest()[:32]

    async def complete(self, request: LLMRequest) -> LLMResponse:
        import openai

        client = self._get_client()
        params = build_params(request, self.model, cache_key=self.prompt_cache_key(),
                              temperature=self.takes_temperature(), store=self.store)
        try:
            response = await client.responses.create(**params)
        except openai.APIError as exc:
            raise self._classify(exc) from exc
        if response.status == "failed":
            raise one_line(_failed(response), self._api_key)
        result = to_response(response)
        return restore_optional(result, request.output_schema)

    async def stream(self, request: LLMRequest, on_text) -> LLMResponse:
        import openai

        client = self._get_client()
        params = build_params(request, self.model, cache_key=self.prompt_cache_key(),
                              temperature=self.takes_temperature(), store=self.store)
        try:
            async with client.responses.stream(**params) as events:
                async for event in events:
                    if event.type == "response.output_text.delta" and event.delta:
                        await on_text(event.delta)
                response = await events.get_final_response()
        except openai.APIError as exc:
            raise self._classify(exc) from exc
        if response.status == "failed":
            raise one_line(_failed(response), self._api_key)
        return restore_optional(to_response(response), request.output_schema)


def build_params(request: LLMRequest, model: str, *, cache_key: str | None = None, temperature: bool = True,
                 store: bool = False) -> dict[str, Any]:
    """The keyword arguments for `responses.create`, as plain JSON-ready dicts."""
    params: dict[str, Any] = {
        "model": model,
        "input": input_items(request.messages),
        "max_output_tokens": request.max_tokens,
        "store": store,
    }
    if request.system_text:
        params["instructions"] = request.system_text
    if request.tools:
        # strict=False: the Responses API defaults to strict tools, which would require every
        # parameter and close every object, changing what optional arguments mean.
        params["tools"] = [{"type": "function", "name": t.name, "description": t.description,
                            "parameters": t.parameters, "strict": False} for t in request.tools]
    if request.output_schema is not None:
        params["text"] = {"format": {"type": "json_schema", **json_schema_format(request.output_schema)}}
    if request.prompt_caching and cache_key:
        params["prompt_cache_key"] = cache_key
    if request.temperature is not None and temperature:
        params["temperature"] = request.temperature
    return params


def input_items(messages: list[Message]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for message in messages:
        text = "".join(b.text for b in message.content if isinstance(b, TextBlock))
        if text:
            items.append({"role": message.role, "content": text})
        for block in message.content:
            if isinstance(block, ToolCallBlock):
                items.append({"type": "function_call", "call_id": block.id, "name": block.name,
                              "arguments": json.dumps(block.arguments)})
            elif isinstance(block, ToolResultBlock):
                items.append({"type": "function_call_output", "call_id": block.tool_call_id,
                              "output": tool_output(block)})
    return items


def tool_output(block: ToolResultBlock) -> str:
    """A tool result's text; OpenAI has no error flag, so an error says so in words."""
    return f"Error: {block.content}" if block.is_error else block.content


def to_response(response: Any) -> LLMResponse:
    """Normalize an SDK `Response`; reasoning and built-in tool items are dropped."""
    content: list[Any] = []
    refused = False
    for item in response.output:
        if item.type == "message":
            for part in item.content:
                if part.type == "output_text" and part.text:
                    content.append(TextBlock(part.text))
                elif part.type == "refusal":
                    content.append(TextBlock(part.refusal))
                    refused = True
        elif item.type == "function_call":
            content.append(ToolCallBlock(id=item.call_id, name=item.name, arguments=parse_arguments(item.arguments)))
    stop: StopReason
    if response.status == "incomplete":
        reason = getattr(response.incomplete_details, "reason", None)
        stop = {"max_output_tokens": "max_tokens", "content_filter": "refusal"}.get(reason or "", "other")  # type: ignore[assignment]
    elif refused:
        stop = "refusal"
    elif any(isinstance(b, ToolCallBlock) for b in content):
        stop = "tool_use"
    elif response.status in (None, "completed"):
        stop = "end_turn"
    else:
        stop = "other"
    usage = response.usage
    tokens = TokenUsage()
    if usage is not None:
        details = usage.input_tokens_details
        cached = getattr(details, "cached_tokens", 0) or 0
        written = getattr(details, "cache_write_tokens", 0) or 0
        # OpenAI counts cached tokens inside input_tokens; ours are apart, as Anthropic's are.
        tokens = TokenUsage(input_tokens=max(0, (usage.input_tokens or 0) - cached - written),
                            output_tokens=usage.output_tokens or 0, cache_read_tokens=cached,
                            cache_write_tokens=written)
    return LLMResponse(content=content, stop_reason=stop, usage=tokens, model=response.model or "")


def _failed(response: Any) -> LLMError:
    error = response.error
    code = getattr(error, "code", None) or "failed"
    message = getattr(error, "message", None) or "the response failed"
    transient = code in ("server_error", "rate_limit_exceeded", "vector_store_timeout")
    return LLMError(f"OpenAI response failed ({code}): {message}", transient=transient,
                    code="LLM_RATE_LIMITED" if code == "rate_limit_exceeded" else
                    "LLM_UNAVAILABLE" if transient else "LLM_ERROR")


def parse_arguments(raw: str | None) -> dict[str, Any]:
    """A tool call's JSON arguments; anything but a JSON object is no arguments (the agent then
    answers the model with an error result naming the missing ones)."""
    try:
        value = json.loads(raw or "{}")
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


# -- the strict JSON-schema dialect ---------------------------------------------------------

# Keywords strict mode does not take: a schema using one is sent non-strict.
_NOT_STRICT = {"allOf", "oneOf", "not", "if", "then", "else", "patternProperties", "dependentRequired",
               "dependentSchemas", "unevaluatedProperties", "propertyNames"}


class _NotStrict(Exception):
    pass


def strict_schema(schema: dict[str, Any]) -> dict[str, Any] | None:
    """`schema` in OpenAI's strict dialect, or None when that dialect cannot say the same thing.

    Strict mode wants every object closed and every property required: an optional property
    becomes required but nullable, and `restore_optional` removes the nulls from the answer.
    """
    try:
        return _strict(copy.deepcopy(schema))
    except _NotStrict:
        return None


def _strict(node: Any) -> Any:
    if isinstance(node, list):
        return [_strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    if _NOT_STRICT & node.keys():
        raise _NotStrict
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("properties", "$defs", "definitions") and isinstance(value, dict):
            out[key] = {name: _strict(sub) for name, sub in value.items()}
        elif key in ("items", "anyOf", "prefixItems"):
            out[key] = _strict(value)
        else:
            out[key] = value
    kind = node.get("type")
    if kind == "object" or (isinstance(kind, list) and "object" in kind) or "properties" in node:
        if node.get("additionalProperties", False) is not False or not isinstance(node.get("properties"), dict):
            raise _NotStrict  # a free-form map has no strict spelling
        out["additionalProperties"] = False
        required = set(node.get("required") or [])
        properties = out["properties"]
        for name in properties:
            if name not in required:
                properties[name] = {"anyOf": [properties[name], {"type": "null"}]}
        out["required"] = list(properties)
    return out


def json_schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    """`name`, `schema` and `strict` of a JSON-schema output format (both OpenAI APIs)."""
    name = re.sub(r"[^a-zA-Z0-9_-]", "_", str(schema.get("title") or "structured_output"))[:64]
    strict = strict_schema(schema)
    if strict is None:
        return {"name": name, "schema": schema, "strict": False}
    return {"name": name, "schema": strict, "strict": True}


def restore_optional(response: LLMResponse, schema: dict[str, Any] | None) -> LLMResponse:
    """Drop the nulls strict mode made the model write for optional properties it had nothing for."""
    if schema is None or strict_schema(schema) is None:
        return response
    try:
        value = json.loads(response.text)
    except json.JSONDecodeError:
        return response
    cleaned = _drop_nulls(value, schema, schema)
    tools = [b for b in response.content if not isinstance(b, TextBlock)]
    response.content = [TextBlock(json.dumps(cleaned)), *tools]
    return response


def _drop_nulls(value: Any, schema: Any, root: dict[str, Any]) -> Any:
    if not isinstance(schema, dict):
        return value
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        schema = target
    properties = schema.get("properties")
    if isinstance(value, dict) and isinstance(properties, dict):
        required = set(schema.get("required") or [])
        for name, sub in properties.items():
            if name not in value:
                continue
            if value[name] is None and name not in required:
                del value[name]
            else:
                value[name] = _drop_nulls(value[name], sub, root)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_drop_nulls(v, schema["items"], root) for v in value]
    return value
