"""One request as a timeline, rebuilt from its events, interactions and child requests.

The request's own events carry everything the page shows (`runtime.llm.think.completed`
for the model's text and tool calls, `runtime.tool.call.completed` /
`runtime.subagent.call.completed` for results, `llm.request.complete` for token detail,
`runtime.step.completed` for step durations). A subagent call is shown with the child
request's own timeline nested under it; the parent's `subagent.*` mirror frames and
surfaced interaction copies would only repeat it, so they are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mash_runtime.models import Interaction, Request, RuntimeEvent
from mash_runtime.presentation.formats import pretty

# Above this many characters (or lines) an argument or result starts collapsed.
COLLAPSE_CHARS = 240
COLLAPSE_LINES = 6
MAX_DEPTH = 4
# The trace of a request with an enormous event log still renders: later steps are cut.
MAX_EVENTS = 5000


def is_long(text: str) -> bool:
    return len(text) > COLLAPSE_CHARS or text.count("\n") >= COLLAPSE_LINES


def preview(text: str, limit: int = 120) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


@dataclass
class ToolCallView:
    key: str  # "tool.<step>.<index>": a stable id for the page's <details>
    call_id: str
    name: str
    arguments: str
    result: str = ""
    is_error: bool = False
    done: bool = False
    duration_ms: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    interaction: Interaction | None = None
    child: "TraceView | None" = None

    @property
    def long(self) -> bool:
        return is_long(self.arguments) or is_long(self.result)

    @property
    def arguments_preview(self) -> str:
        return preview(self.arguments)

    @property
    def result_preview(self) -> str:
        return preview(self.result)


@dataclass
class StepView:
    index: int
    action_type: str = ""
    assistant_text: str = ""
    tool_calls: list[ToolCallView] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    model: str = ""
    stop_reason: str = ""
    think_ms: int | None = None
    total_ms: int | None = None
    completed: bool = False

    @property
    def number(self) -> int:
        return self.index + 1

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_read_tokens + self.cache_write_tokens

    @property
    def act_ms(self) -> int:
        return sum(c.duration_ms or 0 for c in self.tool_calls)


@dataclass
class TraceView:
    request: Request
    depth: int
    steps: list[StepView]
    context: dict[str, Any]
    structured_tokens: dict[str, int]
    interactions: list[Interaction]  # not tied to a tool call of a shown step
    children: list["TraceView"]  # child requests not tied to a shown subagent call
    last_seq: int
    truncated: bool
    # MCP servers this request could not reach (`mcp.client.error`): their tools were missing.
    mcp_errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def answer(self) -> str:
        return str((self.request.response or {}).get("text") or "")

    @property
    def structured_output(self) -> str | None:
        response = self.request.response or {}
        if "structured_output" not in response:
            return None
        return pretty(response["structured_output"])

    @property
    def signals(self) -> dict[str, Any]:
        return (self.request.response or {}).get("signals") or {}

    def pending_interactions(self) -> list[Interaction]:
        """Unanswered questions of this request and of its subagent requests, oldest first."""
        found = [i for i in self.interactions if i.status == Interaction.Status.PENDING]
        for step in self.steps:
            for call in step.tool_calls:
                if call.interaction is not None and call.interaction.status == Interaction.Status.PENDING:
                    found.append(call.interaction)
                if call.child is not None:
                    found.extend(call.child.pending_interactions())
        for child in self.children:
            found.extend(child.pending_interactions())
        return sorted(found, key=lambda i: i.created_at)

    @property
    def dom_id(self) -> str:
        return f"r{self.request.pk.hex[:12]}"


def _step(steps: dict[int, StepView], index: int) -> StepView:
    if index not in steps:
        steps[index] = StepView(index)
    return steps[index]


def _key_position(step_key: str) -> tuple[int, int] | None:
    """`tool.2.0`, `approval.2.0`, `interaction.2.0` -> (2, 0)."""
    parts = step_key.split(".")
    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
        return int(parts[1]), int(parts[2])
    return None


def build_trace(request: Request, depth: int = 0) -> TraceView:
    events = list(
        RuntimeEvent.objects.filter(request=request)
        .exclude(event_type__startswith="subagent.")
        .order_by("seq")[: MAX_EVENTS + 1]
    )
    truncated = len(events) > MAX_EVENTS
    events = events[:MAX_EVENTS]
    steps: dict[int, StepView] = {}
    context: dict[str, Any] = {}
    structured_tokens: dict[str, int] = {}
    calls: dict[tuple[int, int], ToolCallView] = {}
    mcp_errors: list[dict[str, Any]] = []
    for event in events:
        p = event.payload if isinstance(event.payload, dict) else {}
        kind = event.event_type
        if kind == "runtime.context.loaded":
            context = p
        elif kind == "mcp.client.error":
            mcp_errors.append({"server": str(p.get("server") or "?"), "error": str(p.get("error") or "")})
        elif kind == "llm.request.complete":
            if event.loop_index is None:
                if event.step_key == "structured":
                    structured_tokens = {k: int(p.get(k) or 0) for k in ("input_tokens", "output_tokens")}
                continue
            step = _step(steps, event.loop_index)
            step.model = str(p.get("model") or "")
            step.stop_reason = str(p.get("stop_reason") or "")
            step.input_tokens = int(p.get("input_tokens") or 0)
            step.output_tokens = int(p.get("output_tokens") or 0)
            step.cache_read_tokens = int(p.get("cache_read_tokens") or 0)
            step.cache_write_tokens = int(p.get("cache_write_tokens") or 0)
        elif kind == "runtime.llm.think.completed" and event.loop_index is not None:
            step = _step(steps, event.loop_index)
            step.action_type = str(p.get("action_type") or "")
            step.assistant_text = str(p.get("assistant_text") or "")
            step.think_ms = p.get("duration_ms")
            usage = p.get("token_usage") or {}
            if not step.input_tokens and not step.output_tokens:
                step.input_tokens = int(usage.get("input") or 0)
                step.output_tokens = int(usage.get("output") or 0)
            step.tool_calls = []
            for j, call in enumerate(p.get("tool_calls") or []):
                view = ToolCallView(
                    key=f"tool.{event.loop_index}.{j}", call_id=str(call.get("id") or ""),
                    name=str(call.get("name") or "?"), arguments=pretty(call.get("arguments", {})),
                )
                step.tool_calls.append(view)
                calls[(event.loop_index, j)] = view
        elif kind in ("runtime.tool.call.completed", "runtime.subagent.call.completed"):
            position = _key_position(event.step_key)
            view = calls.get(position) if position else None
            if view is None:
                continue
            result = p.get("result") or {}
            view.done = True
            view.result = pretty(result.get("content", ""))
            view.is_error = bool(result.get("is_error"))
            view.metadata = result.get("metadata") or {}
            view.duration_ms = p.get("duration_ms")
        elif kind == "runtime.step.completed" and event.loop_index is not None:
            step = _step(steps, event.loop_index)
            step.total_ms = p.get("duration_ms")
            step.completed = True

    interactions = []
    for itr in Interaction.objects.filter(request=request).order_by("created_at"):
        position = _key_position(itr.step_key)
        view = calls.get(position) if position else None
        if view is not None:
            view.interaction = itr
        else:
            interactions.append(itr)

    children = []
    if depth < MAX_DEPTH:
        for child in Request.objects.filter(parent=request).select_related("agent", "session").order_by("created_at"):
            trace = build_trace(child, depth + 1)
            position = _key_position(str((child.metadata or {}).get("parent_step") or ""))
            view = calls.get(position) if position else None
            if view is not None and view.child is None:
                view.child = trace
            else:
                children.append(trace)

    return TraceView(
        request=request, depth=depth, steps=[steps[i] for i in sorted(steps)], context=context,
        structured_tokens=structured_tokens, interactions=interactions, children=children,
        # The row's counter was read before the events: a live view resuming after it misses nothing.
        last_seq=request.last_seq, truncated=truncated, mcp_errors=mcp_errors,
    )
