"""OpenAI's Responses API on loopback (`POST /v1/responses`), for OpenAIProvider tests.

fakellm serves Chat Completions but not the Responses API. This fake answers like a small
model and checks what the real API checks:

- `Authorization: Bearer <key>` must carry its key (else 401 invalid_api_key).
- A user text containing `trigger-status-NNN` gets that HTTP status with an OpenAI error
  body; `trigger-max-tokens` gets an `incomplete` response (max_output_tokens).
- `text.format` json_schema: a strict schema must be strict-valid (every object closed, every
  property required) else 400; the answer is a sample object valid against it.
- Tools: strict unless `"strict": false` (the API's default), checked the same way; when
  tools are offered and the last input item is not a tool result, the first tool is called
  (required arguments filled from their schema); after a `function_call_output` the answer
  quotes it. An output whose `call_id` matches no `function_call` in the input is a 400.
- `temperature` on a gpt-5 model is a 400, as it is upstream.
- Usage: `cached_tokens` is half the input from the second call on with the same
  `prompt_cache_key` (a cache that warms up), 0 without a key.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

try:
    from tests.fakes.http_fake import SSE, HTTPFake, Seen, sample
except ImportError:  # pragma: no cover - run from tests/fakes itself
    from http_fake import SSE, HTTPFake, Seen, sample  # type: ignore[no-redef]

KEY = "sk-fake-openai-responses"


def error_body(message: str, kind: str = "invalid_request_error", code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def strict_problem(schema: Any, where: str = "schema") -> str | None:
    """Why `schema` is not valid in strict mode, or None."""
    if isinstance(schema, list):
        return next((p for i, s in enumerate(schema) if (p := strict_problem(s, f"{where}[{i}]"))), None)
    if not isinstance(schema, dict):
        return None
    if schema.get("type") == "object" or "properties" in schema:
        if schema.get("additionalProperties") is not False:
            return f"In context={where}, 'additionalProperties' is required to be supplied and to be false."
        props = schema.get("properties") or {}
        if sorted(schema.get("required") or []) != sorted(props):
            return (f"In context={where}, 'required' is required to be supplied and to be an array including "
                    "every key in properties.")
        for name, sub in props.items():
            if problem := strict_problem(sub, f"{where}.{name}"):
                return problem
    for key in ("items", "anyOf"):
        if key in schema and (problem := strict_problem(schema[key], f"{where}.{key}")):
            return problem
    for defs in ("$defs", "definitions"):
        for name, sub in (schema.get(defs) or {}).items():
            if problem := strict_problem(sub, f"{where}.{defs}.{name}"):
                return problem
    return None


class FakeResponses(HTTPFake):
    def __init__(self, key: str = KEY) -> None:
        super().__init__()
        self.key = key
        self._cache_keys: set[str] = set()
        self._ids = itertools.count(1)

    def reset(self) -> None:
        super().reset()
        self._cache_keys.clear()

    @property
    def env(self) -> dict[str, str]:
        """What points OpenAIProvider here."""
        return {"OPENAI_BASE_URL": f"{self.url}/v1", "OPENAI_API_KEY": self.key}

    def answer(self, seen: Seen) -> tuple[int, Any]:
        if seen.method != "POST" or not seen.path.rstrip("/").endswith("/v1/responses"):
            return 404, error_body(f"Invalid URL ({seen.method} {seen.path})")
        if seen.headers.get("authorization") != f"Bearer {self.key}":
            return 401, error_body("Incorrect API key provided.", code="invalid_api_key")
        body = seen.body if isinstance(seen.body, dict) else {}
        items = body.get("input") or []
        if isinstance(items, str):
            items = [{"role": "user", "content": items}]
        user_text = " ".join(str(i.get("content")) for i in items if i.get("role") == "user")
        if trigger := re.search(r"trigger-status-(\d{3})", user_text):
            status = int(trigger.group(1))
            kind = {429: "rate_limit_error", 500: "server_error", 503: "server_error"}.get(status, "invalid_request_error")
            return status, error_body(f"mock failure {status}", kind)
        model = str(body.get("model") or "")
        if model.startswith("gpt-5") and "temperature" in body:
            return 400, error_body("Unsupported parameter: 'temperature' is not supported with this model.")
        for tool in body.get("tools") or []:
            if tool.get("strict", True) and (problem := strict_problem(tool.get("parameters"), tool.get("name"))):
                return 400, error_body(f"Invalid schema for function '{tool.get('name')}': {problem}")
        fmt = (body.get("text") or {}).get("format") or {}
        if fmt.get("type") == "json_schema" and fmt.get("strict") and (problem := strict_problem(fmt.get("schema"))):
            return 400, error_body(f"Invalid schema for response_format '{fmt.get('name')}': {problem}")
        calls = {i.get("call_id") for i in items if i.get("type") == "function_call"}
        for item in items:
            if item.get("type") == "function_call_output" and item.get("call_id") not in calls:
                return 400, error_body(f"No tool call found for function call output with call_id {item.get('call_id')}.")

        status, incomplete, output = "completed", None, []
        output.append({"type": "reasoning", "id": f"rs_{next(self._ids)}", "summary": []})  # dropped by the provider
        last = items[-1] if items else {}
        tools = body.get("tools") or []
        if "trigger-max-tokens" in user_text:
            status, incomplete = "incomplete", {"reason": "max_output_tokens"}
            output.append(self._message("Once upon a"))
        elif fmt.get("type") == "json_schema":
            output.append(self._message(json.dumps(sample(fmt.get("schema")))))
        elif last.get("type") == "function_call_output":
            output.append(self._message(f"The tool said: {last.get('output')}"))
        elif tools:
            tool = tools[0]
            arguments = sample(tool.get("parameters") or {"type": "object", "properties": {}})
            output.append({"type": "function_call", "id": f"fc_{next(self._ids)}", "call_id": f"call_{next(self._ids)}",
                           "name": tool["name"], "arguments": json.dumps(arguments), "status": "completed"})
        else:
            output.append(self._message(f"Hello from the Responses fake. You said: {user_text}"))

        prompt = str(body.get("instructions") or "") + json.dumps(items)
        input_tokens = len(prompt) // 4 + 1
        cache_key = body.get("prompt_cache_key")
        cached = input_tokens // 2 if cache_key and cache_key in self._cache_keys else 0
        if cache_key:
            self._cache_keys.add(cache_key)
        output_tokens = len(json.dumps(output)) // 8 + 1
        response = {
            "id": f"resp_{next(self._ids)}", "object": "response", "created_at": 1700000000, "model": model,
            "status": status, "incomplete_details": incomplete, "error": None, "output": output,
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": tools, "temperature": body.get("temperature"),
            "usage": {"input_tokens": input_tokens, "input_tokens_details": {"cached_tokens": cached},
                      "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                      "total_tokens": input_tokens + output_tokens},
        }
        return 200, (stream_events(response) if body.get("stream") else response)

    def _message(self, text: str) -> dict[str, Any]:
        return {"type": "message", "id": f"msg_{next(self._ids)}", "role": "assistant", "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}]}


def stream_events(response: dict[str, Any]) -> SSE:
    """`response` as the Responses API streams it (`stream: true`): created, each output item
    added, its text in deltas of a few characters (function arguments likewise), done, then
    completed with the whole response."""
    events: SSE = SSE()
    number = itertools.count()

    def emit(kind: str, **fields: Any) -> None:
        events.append((kind, {"type": kind, "sequence_number": next(number), **fields}))

    emit("response.created", response={**response, "status": "in_progress", "output": []})
    for index, item in enumerate(response["output"]):
        if item["type"] == "message":
            emit("response.output_item.added", output_index=index, item={**item, "status": "in_progress", "content": []})
            for part_index, part in enumerate(item["content"]):
                emit("response.content_part.added", item_id=item["id"], output_index=index, content_index=part_index,
                     part={**part, "text": ""})
                text = part["text"]
                for start in range(0, len(text), 7):
                    emit("response.output_text.delta", item_id=item["id"], output_index=index,
                         content_index=part_index, delta=text[start:start + 7], logprobs=[])
                emit("response.output_text.done", item_id=item["id"], output_index=index, content_index=part_index,
                     text=text, logprobs=[])
                emit("response.content_part.done", item_id=item["id"], output_index=index, content_index=part_index,
                     part=part)
        elif item["type"] == "function_call":
            emit("response.output_item.added", output_index=index, item={**item, "arguments": "", "status": "in_progress"})
            emit("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                 delta=item["arguments"])
            emit("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                 arguments=item["arguments"])
        else:
            emit("response.output_item.added", output_index=index, item=item)
        emit("response.output_item.done", output_index=index, item=item)
    emit("response.completed" if response["status"] == "completed" else "response.incomplete", response=response)
    return events
