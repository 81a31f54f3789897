"""Turn signals: small facts computed once per completed request and stored on its turn.

A *signal collector* has a name, a value type, a description and a `collect(context)`
method. The runtime runs every registered collector when it builds a turn
(`collect_signals`), stores the values in `MemoryTurn.signals`, and the signals route
lists the definitions (`signal_definitions`). Two collectors are built in:
`unused_tools` and `unused_tool_tokens`.

A host app adds its own, e.g. in its host module::

    from mash_runtime.memory.turn_signals import signal_collector

    @signal_collector("answer_chars", value_type="int", description="Length of the answer.")
    def answer_chars(ctx):
        return len(ctx.result.text)

Collectors run inside the request's completion; one that raises is logged and left
out of that turn's signals (a broken collector never fails a request).
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

logger = logging.getLogger("mash_runtime.memory.turn_signals")


def estimate_tokens(value: Any) -> int:
    """A cheap token estimate (4 characters a token) of a string or a JSON-able value."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return max(1, len(text) // 4)


@dataclass
class SignalContext:
    """What a collector may look at: the agent run's result and, inside the runtime, the request.

    `cache` is shared by the collectors of one turn, so related signals can compute a
    common value once (see `unused_tool_definitions`).
    """

    result: Any  # mash_core.agent.AgentResult
    request: Any = None  # mash_runtime.models.Request, when collected by the runtime
    cache: dict[str, Any] = field(default_factory=dict)

    def unused_tool_definitions(self) -> list[dict[str, Any]]:
        if "unused_tool_definitions" not in self.cache:
            used = set(self.result.tools_used)
            self.cache["unused_tool_definitions"] = [d for d in self.result.tool_definitions if d["name"] not in used]
        return self.cache["unused_tool_definitions"]


class SignalCollector:
    """Base class of a collector. Subclasses set the three class attributes and `collect`."""

    name: str = ""
    value_type: str = "any"
    description: str = ""
    persisted: bool = True

    def collect(self, context: SignalContext) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def definition(self) -> dict[str, Any]:
        return {"name": self.name, "value_type": self.value_type, "description": self.description,
                "persisted": bool(getattr(self, "persisted", True))}


class FunctionSignalCollector(SignalCollector):
    """A collector made from a function of the `SignalContext`."""

    def __init__(self, fn: Callable[[SignalContext], Any], *, name: str, value_type: str, description: str):
        self.fn = fn
        self.name = name
        self.value_type = value_type
        self.description = description

    def collect(self, context: SignalContext) -> Any:
        return self.fn(context)


class UnusedToolsCollector(SignalCollector):
    name = "unused_tools"
    value_type = "list[str]"
    description = "Tools offered to the model in this turn that it never called."

    def collect(self, context: SignalContext) -> Any:
        return [d["name"] for d in context.unused_tool_definitions()]


class UnusedToolTokensCollector(SignalCollector):
    name = "unused_tool_tokens"
    value_type = "int"
    description = "Estimated input tokens spent sending the definitions of unused tools, over all LLM calls."

    def collect(self, context: SignalContext) -> Any:
        per_call = sum(estimate_tokens(d) for d in context.unused_tool_definitions())
        return per_call * max(1, context.result.llm_calls)


BUILTIN_COLLECTORS: tuple[SignalCollector, ...] = (UnusedToolsCollector(), UnusedToolTokensCollector())

_collectors: dict[str, SignalCollector] = {c.name: c for c in BUILTIN_COLLECTORS}
_lock = threading.Lock()


def register_signal_collector(collector: SignalCollector, *, replace: bool = False) -> SignalCollector:
    """Add a collector; a second one with the same name is an error unless `replace`."""
    name = getattr(collector, "name", "")
    if not isinstance(name, str) or not name.strip():
        raise ValueError("a signal collector needs a non-empty name")
    if not callable(getattr(collector, "collect", None)):
        raise ValueError(f"signal collector {name!r} needs a collect(context) method")
    with _lock:
        if name in _collectors and not replace:
            raise ValueError(f"a signal collector named {name!r} is already registered")
        _collectors[name] = collector
    return collector


def unregister_signal_collector(name: str) -> None:
    with _lock:
        _collectors.pop(name, None)


def reset_signal_collectors() -> None:
    """Back to the built-in collectors only (tests)."""
    with _lock:
        _collectors.clear()
        _collectors.update({c.name: c for c in BUILTIN_COLLECTORS})


def signal_collector(name: str, *, value_type: str = "any", description: str = "", replace: bool = False):
    """Decorator: register a function of the `SignalContext` as a collector."""

    def wrap(fn: Callable[[SignalContext], Any]) -> Callable[[SignalContext], Any]:
        register_signal_collector(
            FunctionSignalCollector(fn, name=name, value_type=value_type, description=description or fn.__doc__ or ""),
            replace=replace,
        )
        return fn

    return wrap


def signal_collectors() -> list[SignalCollector]:
    with _lock:
        return list(_collectors.values())


def signal_definitions() -> dict[str, dict[str, Any]]:
    """`{name: {name, value_type, description, persisted}}` of every registered collector."""
    return {c.name: _definition(c) for c in signal_collectors()}


def _definition(collector: Any) -> dict[str, Any]:
    if callable(getattr(collector, "definition", None)):
        return collector.definition()
    return {"name": collector.name, "value_type": getattr(collector, "value_type", "any"),
            "description": getattr(collector, "description", ""), "persisted": True}


def collect_signals(result: Any, request: Any = None) -> dict[str, Any]:
    """Run every collector for one finished agent run."""
    context = SignalContext(result=result, request=request)
    values: dict[str, Any] = {}
    for collector in signal_collectors():
        try:
            values[collector.name] = collector.collect(context)
        except Exception:
            logger.exception("signal collector %r failed; its signal is left out of this turn", collector.name)
    return values


__all__ = [
    "SignalCollector",
    "SignalContext",
    "FunctionSignalCollector",
    "UnusedToolsCollector",
    "UnusedToolTokensCollector",
    "BUILTIN_COLLECTORS",
    "register_signal_collector",
    "unregister_signal_collector",
    "reset_signal_collectors",
    "signal_collector",
    "signal_collectors",
    "signal_definitions",
    "collect_signals",
    "estimate_tokens",
]
