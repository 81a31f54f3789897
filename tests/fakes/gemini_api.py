"""The Gemini API on loopback (`POST /v1/models/<model>:generateContent`, v1beta too), for
GeminiProvider tests. fakellm does not speak Gemini; this fake answers like a small model and
checks what the real API checks:

- `x-goog-api-key` must be its key, else 400 INVALID_ARGUMENT "API key not valid" (reason
  API_KEY_INVALID), which is how Gemini answers a bad key.
- A user text containing `trigger-status-NNN` gets that status with a Google error body;
  `trigger-max-tokens` gets finishReason MAX_TOKENS.
- Schemas (`responseSchema`, function `parameters`) must be in Gemini's dialect (field names
  in camelCase or snake_case, as proto JSON takes them): an unknown keyword
  (`additionalProperties`, `$ref`, `$defs`, `const`, ...), a type list, or an OBJECT without
  properties is a 400, as upstream.
- Tools together with `responseMimeType: application/json` is a 400 (Gemini 2.x).
- With tools and no function response yet, the first function is called, without an id
  (as Gemini usually does), after a thought part; for a gemini-3 model the call carries a
  thought signature, and every function call turn sent back must carry one the fake issued
  (or Google's documented placeholder), else 400. A function response must name a function
  called in the turn before it. After the responses the answer quotes them.
- Usage: promptTokenCount, candidatesTokenCount, thoughtsTokenCount (4), and
  cachedContentTokenCount = half the prompt once the same system instruction was seen
  (implicit caching warming up).
"""

from __future__ import annotations

import base64
import itertools
import json
import re
from typing import Any

try:
    from tests.fakes.http_fake import SSE, HTTPFake, Seen, sample
except ImportError:  # pragma: no cover - run from tests/fakes itself
    from http_fake import SSE, HTTPFake, Seen, sample  # type: ignore[no-redef]

KEY = "fake-gemini-key-0123456789"
PLACEHOLDER = b"skip_thought_signature_validator"
STATUSES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
            429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
SCHEMA_KEYS = {"type", "format", "description", "nullable", "enum", "properties", "required", "items", "minItems",
               "maxItems", "minimum", "maximum", "minLength", "maxLength", "pattern", "anyOf", "title",
               "propertyOrdering", "minProperties", "maxProperties", "example", "default"}
TYPES = {"STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT"}


def error_body(status: int, message: str, details: list[Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": status, "message": message, "status": STATUSES.get(status, "UNKNOWN"),
                      **({"details": details} if details else {})}}


def schema_problem(schema: Any, where: str) -> str | None:
    if not isinstance(schema, dict):
        return f"{where}: a schema must be an object"
    for key in schema:
        # Proto JSON takes a field by its JSON name or its proto name (the SDK sends both kinds).
        if re.sub(r"_([a-z])", lambda m: m.group(1).upper(), key) not in SCHEMA_KEYS:
            return f'Invalid JSON payload received. Unknown name "{key}" at \'{where}\': Cannot find field.'
    kind = schema.get("type")
    if kind is not None and (not isinstance(kind, str) or kind.upper() not in TYPES):
        return f"Invalid value at '{where}.type': {json.dumps(kind)}"
    if kind and kind.upper() == "OBJECT" and not schema.get("properties"):
        return f"{where}.properties: should be non-empty for OBJECT type"
    for name, sub in (schema.get("properties") or {}).items():
        if problem := schema_problem(sub, f"{where}.properties[{name}]"):
            return problem
    if "items" in schema and (problem := schema_problem(schema["items"], f"{where}.items")):
        return problem
    for i, sub in enumerate(schema.get("anyOf") or []):
        if problem := schema_problem(sub, f"{where}.any_of[{i}]"):
            return problem
    return None


def texts(content: dict[str, Any]) -> str:
    return " ".join(str(p.get("text")) for p in content.get("parts") or [] if "text" in p)


class FakeGemini(HTTPFake):
    def __init__(self, key: str = KEY) -> None:
        super().__init__()
        self.key = key
        self._signatures: set[bytes] = {PLACEHOLDER}
        self._systems: set[str] = set()
        self._ids = itertools.count(1)

    def reset(self) -> None:
        super().reset()
        self._systems.clear()
        self._signatures = {PLACEHOLDER}

    @property
    def env(self) -> dict[str, str]:
        """What points GeminiProvider here."""
        return {"GEMINI_BASE_URL": self.url, "GEMINI_API_KEY": self.key}

    def answer(self, seen: Seen) -> tuple[int, Any]:
        route = re.fullmatch(r"/v1(?:beta|alpha)?/models/([^/:]+):(generateContent|streamGenerateContent)",
                             seen.path.split("?")[0])
        if seen.method != "POST" or route is None:
            return 404, error_body(404, f"no route {seen.method} {seen.path}")
        model = route.group(1)
        if seen.headers.get("x-goog-api-key") != self.key:
            return 400, error_body(400, "API key not valid. Please pass a valid API key.",
                                   [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}])
        body = seen.body if isinstance(seen.body, dict) else {}
        contents = body.get("contents") or []
        user_text = " ".join(texts(c) for c in contents if c.get("role") == "user")
        if trigger := re.search(r"trigger-status-(\d{3})", user_text):
            status = int(trigger.group(1))
            return status, error_body(status, f"mock failure {status}")
        config = body.get("generationConfig") or {}
        declarations = [d for tool in body.get("tools") or [] for d in tool.get("functionDeclarations") or []]
        if config.get("responseMimeType") == "application/json" and declarations:
            return 400, error_body(400, "Function calling with a response mime type: 'application/json' is "
                                        "unsupported")
        schemas = [(config["responseSchema"], "generation_config.response_schema")] if "responseSchema" in config else []
        schemas += [(d["parameters"], f"tools.function_declarations[{d.get('name')}].parameters")
                    for d in declarations if "parameters" in d]
        for schema, where in schemas:
            if problem := schema_problem(schema, where):
                return 400, error_body(400, problem)
        if problem := self._history_problem(contents, model):
            return 400, error_body(400, problem)

        parts: list[dict[str, Any]] = []
        finish = "STOP"
        last = contents[-1] if contents else {}
        responses = [p["functionResponse"] for p in last.get("parts") or [] if "functionResponse" in p]
        if "trigger-max-tokens" in user_text:
            parts, finish = [{"text": "Once upon a"}], "MAX_TOKENS"
        elif "responseSchema" in config:
            parts = [{"text": json.dumps(sample(config["responseSchema"]))}]
        elif responses:
            said = "; ".join(json.dumps(r.get("response"), sort_keys=True) for r in responses)
            parts = [{"text": f"The tool said: {said}"}]
        elif declarations:
            d = declarations[0]
            parts = [{"text": "I should call a tool.", "thought": True},
                     {"functionCall": {"name": d["name"], "args": sample(d.get("parameters") or {"properties": {}}) or {}}}]
            if model.startswith("gemini-3"):
                signature = f"sig-{next(self._ids)}".encode()
                self._signatures.add(signature)
                parts[1]["thoughtSignature"] = base64.b64encode(signature).decode()
        else:
            parts = [{"text": f"Hello from the Gemini fake. You said: {user_text}"}]

        system = texts(body.get("systemInstruction") or {})
        prompt = system + json.dumps(contents)
        prompt_tokens = len(prompt) // 4 + 1
        cached = prompt_tokens // 2 if system and system in self._systems else 0
        if system:
            self._systems.add(system)
        out_tokens = len(json.dumps(parts)) // 8 + 1
        usage = {"promptTokenCount": prompt_tokens, "candidatesTokenCount": out_tokens, "thoughtsTokenCount": 4,
                 "totalTokenCount": prompt_tokens + out_tokens + 4}
        if cached:
            usage["cachedContentTokenCount"] = cached
        response = {"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": finish, "index": 0}],
                    "usageMetadata": usage, "modelVersion": f"{model}-001", "responseId": f"resp-{next(self._ids)}"}
        return 200, (stream_chunks(response) if route.group(2) == "streamGenerateContent" else response)

    def _history_problem(self, contents: list[dict[str, Any]], model: str) -> str | None:
        previous: dict[str, Any] = {}
        for i, content in enumerate(contents):
            parts = content.get("parts") or []
            calls = [p for p in parts if "functionCall" in p]
            if content.get("role") == "model" and calls and model.startswith("gemini-3"):
                raw = calls[0].get("thoughtSignature")
                try:
                    signature = base64.b64decode(raw) if raw else None
                except ValueError:
                    signature = None
                if signature not in self._signatures:
                    return f"Function call is missing a thought_signature in functionCall parts (content {i})."
            for p in parts:
                if "functionResponse" in p:
                    called = {c["functionCall"].get("name") for c in previous.get("parts") or [] if "functionCall" in c}
                    if p["functionResponse"].get("name") not in called:
                        return (f"Please ensure that function response turn comes immediately after a function call "
                                f"turn (content {i}: {p['functionResponse'].get('name')!r} was not called).")
            previous = content
        return None


def stream_chunks(response: dict[str, Any]) -> SSE:
    """`response` as `streamGenerateContent?alt=sse` sends it: text parts in pieces of a few
    characters, one chunk each, then a chunk with the other parts, the finish reason and the
    usage (thought and function-call parts come whole, as upstream)."""
    candidate = response["candidates"][0]
    head = {k: v for k, v in response.items() if k != "candidates"}
    chunks: SSE = SSE()
    rest = []
    for part in candidate["content"]["parts"]:
        if "text" in part and not part.get("thought"):
            text = part["text"]
            for start in range(0, len(text), 7):
                piece = {"content": {"role": "model", "parts": [{"text": text[start:start + 7]}]}, "index": 0}
                chunks.append((None, {"candidates": [piece], "modelVersion": head.get("modelVersion"),
                                           "responseId": head.get("responseId")}))
        else:
            rest.append(part)
    last = {"content": {"role": "model", "parts": rest}, "finishReason": candidate.get("finishReason"), "index": 0}
    chunks.append((None, {**head, "candidates": [last]}))
    return chunks
