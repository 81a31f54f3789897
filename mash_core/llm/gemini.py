"""`GeminiProvider`: the normalized LLM contract on the official `google-genai` SDK.

The SDK is imported at the first call, not with this module: it costs a worker process about
45 MiB, which one that never calls Gemini should not carry. The key is read at the
first call too (GEMINI_API_KEY, else GOOGLE_API_KEY, or the file either's _FILE names).

Our loop runs the tools, so the SDK's automatic function calling is off. Gemini often leaves
function calls without an id; those get one made from the call's place in the conversation,
so a replayed checkpoint and a fresh call name them alike, and their responses go back by
function name. JSON schemas (tool parameters, structured output) are rewritten into the
OpenAPI subset Gemini takes.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from mash_core.llm.base import LLMError, LLMRequest, LLMResponse, StopReason, TokenUsage
from mash_core.llm.clients import SDKProvider, missing_key_error, one_line, read_key, shared_client, status_error
from mash_core.messages import Message, TextBlock, ToolCallBlock, ToolResultBlock

DEFAULT_MODEL = "gemini-2.5-flash"
KEY_NAMES = ("GEMINI_API_KEY", "GOOGLE_API_KEY")

# Ids we made up for calls Gemini sent without one: never sent back as Gemini's own.
SYNTHETIC_ID_PREFIX = "mash_call_"
# Gemini 3 wants the thought signature of each function call it made sent back with it. We keep
# them for the run (this provider instance); a run resumed in another process has lost them and
# sends Google's documented placeholder instead, which the validator accepts.
SKIP_SIGNATURE = b"skip_thought_signature_validator"

_REFUSALS = {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY",
             "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", "LANGUAGE"}
# A candidate's finishReason (no function calls) -> our stop reason; any other: "other".
_FINISH_STOPS: dict[str | None, StopReason] = {None: "end_turn", "STOP": "end_turn", "MAX_TOKENS": "max_tokens",
                                               **dict.fromkeys(_REFUSALS, "refusal")}


class GeminiProvider(SDKProvider):
    """Gemini through `google-genai`. Model from `model`, else GEMINI_MODEL, else a current
    Flash; base URL from `base_url`, else GEMINI_BASE_URL (else the SDK's own default, which
    honours GOOGLE_GEMINI_BASE_URL). Structured output goes as `response_schema`."""

    provider = "gemini"

    model_env = "GEMINI_MODEL"
    base_url_env = "GEMINI_BASE_URL"
    default_model = DEFAULT_MODEL

    def __init__(self, app_id: str, model: str | None = None, api_key: str | None = None,
                 base_url: str | None = None, *, timeout: float = 120.0,
                 default_headers: dict[str, str] | None = None, http_client: Any = None) -> None:
        """SDKProvider's arguments but `max_retries`: the SDK makes one attempt (see `_get_client`)."""
        super().__init__(app_id, model, api_key, base_url, timeout=timeout, default_headers=default_headers,
                         http_client=http_client)
        self._signatures: dict[str, bytes] = {}  # call id -> thought signature, for this run

    def _get_client(self) -> Any:
        if self._client is None:
            key = read_key(KEY_NAMES, self._api_key, "Gemini", self.app_id)
            if not key:
                raise missing_key_error(KEY_NAMES, "Gemini", self.app_id)
            self._api_key = key
            base_url = self.base_url()
            from google import genai  # lazily: see the module docstring
            from google.genai import types

            def make() -> Any:
                options = types.HttpOptions(
                    base_url=base_url,
                    timeout=int(self._timeout * 1000),  # milliseconds
                    headers=self._default_headers or None,
                    # One attempt: the Mash runtime retries transient LLMErrors itself, with
                    # backoff, inside a durable step (this also stops the SDK's own silent retry).
                    retry_options=types.HttpRetryOptions(attempts=1),
                    httpx_async_client=self._http_client,
                )
                return genai.Client(api_key=key, vertexai=False, http_options=options)

            if self._http_client is not None:
                self._client = make()
            else:
                headers = tuple(sorted((self._default_headers or {}).items()))
                self._client = shared_client(("gemini", key, base_url or "", self._timeout, headers), make)
        return self._client

    async def complete(self, request: LLMRequest) -> LLMResponse:
        return await self._call(request, None)

    async def stream(self, request: LLMRequest, on_text) -> LLMResponse:
        return await self._call(request, on_text)

    async def _call(self, request: LLMRequest, on_text) -> LLMResponse:
        client = self._get_client()
        from google.genai import errors

        position = len(request.messages)
        try:
            # The structured call declares no tools (see build_config): its history then says
            # in words which tools ran, rather than as function parts with nothing declared.
            contents = build_contents(request.messages, self.model, self._signatures,
                                      calls_as_text=request.output_schema is not None)
            config = build_config(request)
            if on_text is None:
                response = await client.aio.models.generate_content(model=self.model, contents=contents,
                                                                    config=config)
            else:
                chunks = []
                async for chunk in await client.aio.models.generate_content_stream(
                        model=self.model, contents=contents, config=config):
                    chunks.append(chunk)
                    if text := chunk_text(chunk):
                        await on_text(text)
                response = merged_chunks(chunks)
        except errors.APIError as exc:
            raise self._classify(exc) from exc
        except LLMError:
            raise
        except Exception as exc:
            kind = transport_failure(exc)
            if kind is None and not isinstance(exc, ValueError):  # pydantic's ValidationError is one
                raise
            raise self._classify(exc, kind) from exc
        result, signatures = to_response(response, position, self.model)
        self._signatures.update(signatures)
        return result

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            if self._http_client is not None:  # ours alone; a shared client stays open
                await client.aio.aclose()

    def _classify(self, exc: Exception, kind: str | None = None) -> LLMError:
        from google.genai import errors

        if isinstance(exc, errors.APIError):
            status = int(exc.code or 0)
            detail = str(exc.message or exc.details)[:2000]
            if status == 400 and ("API_KEY_INVALID" in str(exc.details) or "API key not valid" in detail):
                # Gemini answers a bad key with 400 INVALID_ARGUMENT; it is an auth failure all the same.
                error = LLMError(f"Gemini API error {status} ({exc.status}): {detail}", transient=False,
                                 status_code=status, code="LLM_AUTH_FAILED")
            else:
                error = status_error("Gemini", status, detail, exc.status)
        elif kind == "timeout":
            error = LLMError(f"Gemini API timed out after {self._timeout:g}s", transient=True, code="LLM_UNAVAILABLE")
        elif kind == "network":
            where = self.base_url() or "the default endpoint"
            error = LLMError(f"Gemini API unreachable at {where}: {type(exc).__name__}: {exc}", transient=True,
                             code="LLM_UNAVAILABLE")
        else:
            error = LLMError(f"Gemini SDK error: {type(exc).__name__}: {exc}", transient=False, code="LLM_BAD_REQUEST")
        return one_line(error, self._api_key)


def transport_failure(exc: BaseException) -> str | None:
    """"timeout" or "network" for a failure below HTTP (whichever HTTP library the SDK picked:
    httpx, httpx2 or aiohttp), else None."""
    names = {(cls.__module__.split(".")[0], cls.__name__) for cls in type(exc).__mro__}
    if any(name in ("TimeoutException", "ServerTimeoutError") for _, name in names) or isinstance(
            exc, (asyncio.TimeoutError, TimeoutError)):
        return "timeout"
    libraries = {"httpx", "httpx2", "httpcore", "aiohttp", "google"}
    if any(module in libraries and name in ("TransportError", "ClientError") for module, name in names) or isinstance(
            exc, (ConnectionError, OSError)):
        return "network"
    return None


# -- requests ------------------------------------------------------------------------------


def build_config(request: LLMRequest) -> Any:
    from google.genai import types

    fields: dict[str, Any] = {
        "max_output_tokens": request.max_tokens,
        # Our loop runs the tools: the SDK must hand every function call back.
        "automatic_function_calling": types.AutomaticFunctionCallingConfig(disable=True),
    }
    if request.system_text:
        fields["system_instruction"] = request.system_text
    if request.temperature is not None:
        fields["temperature"] = request.temperature
    if request.output_schema is not None:
        # No tools on the structured call: it only restates the answer as JSON, and Gemini 2.x
        # refuses function declarations together with a JSON response type.
        fields["response_mime_type"] = "application/json"
        fields["response_schema"] = gemini_schema(request.output_schema)
    elif request.tools:
        fields["tools"] = [types.Tool(function_declarations=[function_declaration(t) for t in request.tools])]
    return types.GenerateContentConfig(**fields)


def function_declaration(tool: Any) -> Any:
    from google.genai import types

    parameters = gemini_schema(tool.parameters) if tool.parameters else {}
    if not parameters.get("properties"):
        # Gemini rejects an OBJECT with no properties: a tool without arguments declares none.
        return types.FunctionDeclaration(name=tool.name, description=tool.description)
    return types.FunctionDeclaration(name=tool.name, description=tool.description, parameters=parameters)


def build_contents(messages: list[Message], model: str, signatures: dict[str, bytes], *,
                   calls_as_text: bool = False) -> list[Any]:
    """Our messages as Gemini `Content`s: `model` turns with text and function calls, `user`
    turns with text and function responses (named after the call they answer). With
    `calls_as_text`, calls and responses are written out as text parts instead."""
    from google.genai import types

    names: dict[str, str] = {}  # call id -> function name, for the responses
    contents: list[Any] = []
    for message in messages:
        parts: list[Any] = []
        if message.role == "assistant":
            for block in message.content:
                if isinstance(block, TextBlock) and block.text:
                    parts.append(types.Part(text=block.text))
                elif isinstance(block, ToolCallBlock) and calls_as_text:
                    names[block.id] = block.name
                    parts.append(types.Part(text=f"(called {block.name} with {json.dumps(block.arguments)})"))
                elif isinstance(block, ToolCallBlock):
                    names[block.id] = block.name
                    call = types.FunctionCall(name=block.name, args=dict(block.arguments), id=_gemini_id(block.id))
                    parts.append(types.Part(function_call=call, thought_signature=signatures.get(block.id)))
            calls = [p for p in parts if p.function_call is not None]
            if calls and not any(p.thought_signature for p in calls) and _wants_signatures(model):
                calls[0].thought_signature = SKIP_SIGNATURE  # only the first call of a turn carries one
        else:
            for block in message.content:
                if isinstance(block, TextBlock) and block.text:
                    parts.append(types.Part(text=block.text))
                elif isinstance(block, ToolResultBlock) and calls_as_text:
                    name = names.get(block.tool_call_id, block.tool_call_id)
                    verb = "failed" if block.is_error else "returned"
                    parts.append(types.Part(text=f"({name} {verb}: {block.content})"))
                elif isinstance(block, ToolResultBlock):
                    result = {"error": block.content} if block.is_error else {"output": block.content}
                    parts.append(types.Part(function_response=types.FunctionResponse(
                        name=names.get(block.tool_call_id, block.tool_call_id), id=_gemini_id(block.tool_call_id),
                        response=result)))
        if parts:
            contents.append(types.Content(role="model" if message.role == "assistant" else "user", parts=parts))
    return contents


def _gemini_id(call_id: str) -> str | None:
    return None if call_id.startswith(SYNTHETIC_ID_PREFIX) else call_id


def _wants_signatures(model: str) -> bool:
    """Gemini 3 and later validate thought signatures; 1.x and 2.x have none to validate."""
    match = re.search(r"gemini-(\d+)", model)
    return not match or int(match.group(1)) >= 3


# -- responses -----------------------------------------------------------------------------


def chunk_text(chunk: Any) -> str:
    """The answer text a streamed chunk adds (thought parts are not the answer)."""
    candidate = chunk.candidates[0] if chunk.candidates else None
    parts = (candidate.content.parts if candidate is not None and candidate.content else None) or []
    return "".join(p.text for p in parts if p.text and not p.thought and p.function_call is None)


def merged_chunks(chunks: list[Any]) -> Any:
    """One response from a stream's chunks, as `generate_content` would have answered: every
    chunk's parts in order (adjacent answer text joined), the last chunk's finish reason,
    and the last usage reported."""
    if not chunks:
        raise LLMError("Gemini streamed no answer", transient=True, code="LLM_UNAVAILABLE")
    parts: list[Any] = []
    for chunk in chunks:
        candidate = chunk.candidates[0] if chunk.candidates else None
        for part in (candidate.content.parts if candidate is not None and candidate.content else None) or []:
            plain = part.text and not part.thought and part.function_call is None and not part.thought_signature
            if plain and parts and parts[-1].text and not parts[-1].thought and parts[-1].function_call is None \
                    and not parts[-1].thought_signature:
                parts[-1] = parts[-1].model_copy(update={"text": parts[-1].text + part.text})
            else:
                parts.append(part)
    last = chunks[-1]
    usage = next((c.usage_metadata for c in reversed(chunks) if c.usage_metadata is not None), None)
    candidate = next((c.candidates[0] for c in reversed(chunks) if c.candidates), None)
    if candidate is None:
        return last
    if candidate.content is not None:
        content = candidate.content.model_copy(update={"parts": parts})
    else:  # the last chunk may carry only the finish reason
        from google.genai import types

        content = types.Content(role="model", parts=parts)
    merged_candidate = candidate.model_copy(update={"content": content})
    return last.model_copy(update={"candidates": [merged_candidate], "usage_metadata": usage})


def to_response(response: Any, position: int, model: str) -> tuple[LLMResponse, dict[str, bytes]]:
    """Normalize an SDK `GenerateContentResponse` (its first candidate); thought parts are
    dropped. Also returns the thought signatures of its function calls, by call id."""
    content: list[Any] = []
    signatures: dict[str, bytes] = {}
    candidate = response.candidates[0] if response.candidates else None
    parts = (candidate.content.parts if candidate is not None and candidate.content else None) or []
    calls = 0
    for part in parts:
        if part.thought:
            continue
        if part.function_call is not None:
            call = part.function_call
            call_id = call.id or f"{SYNTHETIC_ID_PREFIX}{position}_{calls}"
            calls += 1
            content.append(ToolCallBlock(id=call_id, name=call.name or "", arguments=dict(call.args or {})))
            if part.thought_signature:
                signatures[call_id] = part.thought_signature
        elif part.text:
            content.append(TextBlock(part.text))
    finish = _enum_name(candidate.finish_reason) if candidate is not None else None
    stop: StopReason
    if candidate is None:
        blocked = response.prompt_feedback is not None and response.prompt_feedback.block_reason is not None
        stop = "refusal" if blocked else "other"
    elif calls:
        stop = "tool_use"
    else:
        stop = _FINISH_STOPS.get(finish, "other")
    meta = response.usage_metadata
    usage = TokenUsage()
    if meta is not None:
        cached = meta.cached_content_token_count or 0
        # promptTokenCount includes the cached part; ours keeps it apart, as Anthropic's does.
        # Thinking is billed as output.
        usage = TokenUsage(
            input_tokens=max(0, (meta.prompt_token_count or 0) - cached) + (meta.tool_use_prompt_token_count or 0),
            output_tokens=(meta.candidates_token_count or 0) + (meta.thoughts_token_count or 0),
            cache_read_tokens=cached,
        )
    return LLMResponse(content=content, stop_reason=stop, usage=usage, model=response.model_version or model), signatures


def _enum_name(value: Any) -> str | None:
    if value is None:
        return None
    return str(getattr(value, "value", value))


# -- JSON schema -> Gemini's schema dialect ------------------------------------------------

# What Gemini's Schema object takes (an OpenAPI 3.0 subset); anything else is dropped.
_KEEP = {"type", "format", "description", "nullable", "enum", "properties", "required", "items", "minItems",
         "maxItems", "minimum", "maximum", "minLength", "maxLength", "pattern", "anyOf", "title",
         "propertyOrdering", "minProperties", "maxProperties"}
_FORMATS = {"string": {"date-time", "enum"}, "integer": {"int32", "int64"}, "number": {"float", "double"}}


def gemini_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` (JSON Schema) in Gemini's dialect: local `$ref`s inlined, `type: [X, "null"]`
    and `anyOf [..., {"type": "null"}]` as `nullable`, `oneOf` as `anyOf`, `allOf` merged,
    `const` and enums as string enums, unknown keywords (`additionalProperties`, `$defs`,
    `default`, ...) dropped, types upper-cased. A recursive schema is an LLMError: Gemini's
    dialect cannot express it."""
    return _adapt(schema, schema, ())


def _resolve(ref: str, root: dict[str, Any]) -> dict[str, Any]:
    target: Any = root
    if ref.startswith("#/"):
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, dict) else None
    if not isinstance(target, dict):
        raise LLMError(f"schema reference {ref!r} does not resolve (only local #/... references do)",
                       transient=False, code="LLM_BAD_REQUEST")
    return target


def _adapt(node: Any, root: dict[str, Any], refs: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(node, dict):
        return {}
    node = dict(node)
    ref = node.pop("$ref", None)
    if isinstance(ref, str):
        if ref in refs:
            raise LLMError(f"schema reference {ref!r} is recursive: Gemini's schema dialect cannot express it",
                           transient=False, code="LLM_BAD_REQUEST")
        return _adapt({**_resolve(ref, root), **node}, root, (*refs, ref))
    for part in node.pop("allOf", None) or []:
        if isinstance(part, dict) and isinstance(part.get("$ref"), str):
            part = _resolve(part["$ref"], root)
        for key, value in (part or {}).items():
            if key == "properties":
                node["properties"] = {**node.get("properties", {}), **value}
            elif key == "required":
                node["required"] = [*node.get("required", []), *value]
            else:
                node.setdefault(key, value)
    if "oneOf" in node:
        node["anyOf"] = [*node.get("anyOf", []), *node.pop("oneOf")]
    nullable = bool(node.pop("nullable", False))
    kind = node.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        nullable = nullable or len(kinds) < len(kind)
        if len(kinds) == 1:
            node["type"] = kinds[0]
        else:
            node.pop("type")
            if kinds:
                node["anyOf"] = [{"type": k} for k in kinds]
    elif kind == "null":
        node.pop("type")
        nullable = True
    if isinstance(node.get("anyOf"), list):
        variants = [v for v in node["anyOf"] if not (isinstance(v, dict) and v.get("type") == "null")]
        nullable = nullable or len(variants) < len(node["anyOf"])
        if len(variants) == 1:
            del node["anyOf"]
            merged = {**variants[0], **{k: v for k, v in node.items() if k in ("description", "title")}}
            adapted = _adapt(merged, root, refs)
            if nullable:
                adapted["nullable"] = True
            return adapted
        node["anyOf"] = variants
    if "const" in node:
        const = node.pop("const")
        if isinstance(const, str):
            node["enum"] = [const]
            node.setdefault("type", "string")
    if "enum" in node:
        values = node["enum"]
        if not all(isinstance(v, str) for v in values):
            # Gemini's enums are strings only: say the values in words instead.
            del node["enum"]
            listed = ", ".join(json.dumps(v) for v in values)
            node["description"] = f"{node.get('description', '')} One of: {listed}.".strip()
        else:
            node.setdefault("type", "string")
    kind = node.get("type")
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key not in _KEEP:
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: _adapt(sub, root, refs) for name, sub in value.items()}
        elif key == "items" and isinstance(value, dict):
            out[key] = _adapt(value, root, refs)
        elif key == "anyOf":
            out[key] = [_adapt(v, root, refs) for v in value]
        elif key == "type" and isinstance(value, str):
            out[key] = value.upper()
        elif key == "format":
            if value in _FORMATS.get(str(kind), ()):
                out[key] = value
        elif key == "required":
            names = node.get("properties") or {}
            out[key] = [n for n in dict.fromkeys(value) if n in names]
        elif key in ("items", "properties"):
            continue
        else:
            out[key] = value
    if nullable:
        out["nullable"] = True
    return out
