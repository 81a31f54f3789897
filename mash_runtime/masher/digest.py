"""The plain-code facts of a trace, counted from its events (no model involved).

`event_facts(events)` is a pure function of a request's events (RuntimeEvent rows or
dicts with `seq`, `event_type`, `payload`, `created_at`); `trace_facts(request)` loads
a request's events and prefers the request row's own status, tokens and duration.
Only the trace's own events count: frames mirrored from a subagent (`subagent.*`) are
part of `event_count` but not of the tool, step, LLM or token counts.
"""

from __future__ import annotations

from typing import Any, Iterable

TOOL_EVENTS = ("runtime.tool.call.completed", "runtime.subagent.call.completed")
TOKEN_FIELDS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
DENIED_PREFIX = "Tool execution denied"
MAX_NOTABLE = 50
DETAIL_CHARS = 300


def _field(event: Any, name: str, default: Any = None) -> Any:
    if isinstance(event, dict):
        return event.get(name, default)
    return getattr(event, name, default)


def _clip(value: Any, limit: int = DETAIL_CHARS) -> str:
    text = value if isinstance(value, str) else ("" if value is None else str(value))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def terminal_status(event_type: str, payload: dict[str, Any]) -> str | None:
    if event_type == "request.completed":
        return "completed"
    if event_type == "request.error":
        return "cancelled" if payload.get("error_code") == "cancelled" else "failed"
    return None


def event_facts(events: Iterable[Any]) -> dict[str, Any]:
    """Counts, tokens, tool calls, answer and notable events of one trace's events."""
    rows = sorted(events, key=lambda e: _int(_field(e, "seq")))
    facts: dict[str, Any] = {
        "status": None,
        "event_count": len(rows),
        "tool_call_count": 0,
        "step_count": 0,
        "llm_call_count": 0,
        "tools": [],
        "tool_calls": [],
        **{name: 0 for name in TOKEN_FIELDS},
        "total_tokens": 0,
        "duration_ms": None,
        "answer": "",
        "error": "",
        "notable_events": [],
    }
    notable: list[dict[str, Any]] = facts["notable_events"]
    max_steps: int | None = None
    last_step_action = None
    started = 0
    first_start: float | None = None
    end: float | None = None

    def note(kind: str, event: Any, **detail: Any) -> None:
        if len(notable) < MAX_NOTABLE:
            notable.append({"type": kind, "seq": _field(event, "seq"), **detail})

    for event in rows:
        event_type = _field(event, "event_type", "")
        payload = _field(event, "payload") or {}
        if not isinstance(payload, dict):
            payload = {}
        created = _field(event, "created_at")
        if event_type == "request.started":
            started += 1
            if first_start is None and isinstance(created, (int, float)):
                first_start = float(created)
            if started > 1:
                note("retry", event, attempt=started, detail="the request ran again (resumed or recovered)")
        elif event_type == "runtime.context.loaded":
            if payload.get("max_steps") is not None:
                max_steps = _int(payload.get("max_steps"))
        elif event_type == "llm.request.complete":
            facts["llm_call_count"] += 1
            for name in TOKEN_FIELDS:
                facts[name] += _int(payload.get(name))
        elif event_type == "runtime.step.completed":
            facts["step_count"] += 1
            last_step_action = payload.get("action_type")
        elif event_type in TOOL_EVENTS:
            name = str(payload.get("tool_name") or "")
            result = payload.get("result") if isinstance(payload.get("result"), dict) else {}
            is_error = bool(result.get("is_error"))
            facts["tool_call_count"] += 1
            facts["tools"].append(name)
            facts["tool_calls"].append({"name": name, "arguments": payload.get("arguments") or {}, "is_error": is_error})
            if is_error:
                content = str(result.get("content") or "")
                metadata = result.get("metadata") if isinstance(result.get("metadata"), dict) else {}
                if event_type == "runtime.subagent.call.completed":
                    kind = "subagent_error"
                elif content.startswith(DENIED_PREFIX):
                    kind = "tool_denied"
                elif metadata.get("retryable"):
                    kind = "tool_retries_exhausted"
                else:
                    kind = "tool_error"
                note(kind, event, tool_name=name, detail=_clip(content))
        elif event_type == "request.interaction.create":
            note("interaction", event, interaction_type=payload.get("type"), detail=_clip(payload.get("prompt")))
        elif event_type == "request.interaction.ack" and payload.get("timed_out"):
            note("interaction_timeout", event, interaction_id=payload.get("interaction_id"))
        status = terminal_status(event_type, payload)
        if status is not None:
            facts["status"] = status
            if isinstance(created, (int, float)):
                end = float(created)
            if status == "completed":
                response = payload.get("response") if isinstance(payload.get("response"), dict) else {}
                facts["answer"] = str(response.get("text") or "")
                facts["error"] = ""
            else:
                facts["error"] = str(payload.get("error") or "")
                note("cancelled" if status == "cancelled" else "error", event,
                     error_code=payload.get("error_code") or "", detail=_clip(payload.get("error")))
    if max_steps and facts["step_count"] >= max_steps and last_step_action == "tool_call":
        note("max_steps", {"seq": None}, max_steps=max_steps, detail=f"stopped after {max_steps} steps without a final answer")
    facts["total_tokens"] = sum(facts[name] for name in TOKEN_FIELDS)
    if first_start is not None and end is not None and end >= first_start:
        facts["duration_ms"] = int((end - first_start) * 1000)
    return facts


def plain_summary(facts: dict[str, Any]) -> str:
    """A one-line summary built from the facts alone (used when the model gave none)."""
    tools = sorted(set(facts.get("tools") or []))
    parts = [
        f"{facts.get('status') or 'unfinished'} after {facts.get('step_count', 0)} step(s)",
        f"{facts.get('tool_call_count', 0)} tool call(s)" + (f" ({', '.join(tools)})" if tools else ""),
        f"{facts.get('total_tokens', 0)} tokens",
    ]
    notable = facts.get("notable_events") or []
    if notable:
        kinds = sorted({n["type"] for n in notable})
        parts.append(f"notable: {', '.join(kinds)}")
    return "; ".join(parts) + "."


def trace_facts(request: Any) -> dict[str, Any]:
    """`event_facts` of a stored request, with the row's status, tokens and duration preferred."""
    from mash_runtime.models import RuntimeEvent

    events = list(RuntimeEvent.objects.filter(request_id=request.pk).order_by("seq")
                  .values("seq", "event_type", "payload", "created_at"))
    facts = event_facts(events)
    facts["status"] = request.status
    if request.status == "completed" and request.total_tokens:
        # The row holds the usage the run itself added up: authoritative for a completed run.
        for name in TOKEN_FIELDS:
            facts[name] = getattr(request, name)
        facts["total_tokens"] = request.total_tokens
    if request.duration_ms is not None:
        facts["duration_ms"] = request.duration_ms
    if request.status == "completed" and isinstance(request.response, dict):
        facts["answer"] = str(request.response.get("text") or facts["answer"])
    if request.status != "completed" and request.error:
        facts["error"] = request.error
    return facts
