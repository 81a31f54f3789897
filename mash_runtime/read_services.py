"""Read-side services: the host, agents, sessions, history, signals, traces and events
shaped as the wire contract describes them (http-api.md)."""

from __future__ import annotations

import uuid
from typing import Any

from django.db.models import Count, Q

from mash_runtime.errors import NotFound
from mash_runtime.host import HostedAgent, get_host
from mash_runtime.memory.search import SearchScope, get_search_service, parse_query
from mash_runtime.memory.turn_signals import signal_definitions
from mash_runtime.models import MemoryTurn, Request, RuntimeEvent, Session, Worker, epoch

# `?limit=` of the routes below: (default, maximum). The API's serializers check it; these take ints.
HISTORY_LIMIT = (20, 1000)
EVENTS_LIMIT = (200, 20000)
SEARCH_LIMIT = (10, 100)


def hosted_agent(agent_id: str, *, include_workflow: bool = False) -> HostedAgent:
    hosted = get_host().get((agent_id or "").strip())
    if hosted is None or (hosted.role == "workflow" and not include_workflow):
        raise NotFound(f"Agent '{agent_id}' not found", code="AGENT_NOT_FOUND")
    return hosted


def session_info(agent_id: str, session_id: str | None = None) -> dict[str, Any]:
    host = get_host()
    hosted = hosted_agent(agent_id, include_workflow=True)
    session_id = (session_id or "").strip() or Session.default_session_id(hosted.agent_id)
    tokens = (
        Session.objects.filter(agent__agent_id=hosted.agent_id, session_id=session_id)
        .values_list("session_total_tokens", flat=True)
        .first()
    )
    return {
        "app_id": hosted.agent_id,
        "agent_id": hosted.agent_id,
        "session_id": session_id,
        "primary_agent_id": host.primary_agent_id,
        "subagent_ids": host.subagent_ids,
        "model": hosted.model,
        "max_steps": hosted.config.max_steps,
        "session_total_tokens": tokens or 0,
    }


def list_agents() -> dict[str, Any]:
    host = get_host()
    return {"agents": [a.describe() for a in host.listed_agents()], "primary_agent_id": host.primary_agent_id}


def agent_detail(agent_id: str) -> dict[str, Any]:
    hosted = hosted_agent(agent_id)
    return {"agent": hosted.describe(), "session": session_info(hosted.agent_id)}


def health() -> dict[str, Any]:
    host = get_host()
    return {
        "status": "ok",
        "service": "mash-api",
        "api_version": "v1",
        "deployment": {"primary_agent_id": host.primary_agent_id, "agents": list_agents()["agents"]},
        "primary_agent": session_info(host.primary_agent_id),
        "observability": {"enabled": True, "memory": {"search_available": True, "default_limit": 10}},
        "workers": worker_status(),
    }


def worker_status(now=None) -> dict[str, Any]:
    """The worker processes seen in the last `Worker.LIVE_SECONDS`: their slots, how many
    hold a run, and a warning when none is live (requests then wait as `queued`)."""
    from django.utils import timezone

    now = now or timezone.now()
    live = list(Worker.live(now))
    last_seen = Worker.objects.order_by("-last_seen_at").values_list("last_seen_at", flat=True).first()
    data: dict[str, Any] = {
        "live": len(live),
        "slots": sum(w.slots for w in live),
        "in_use": sum(w.in_use for w in live),
        "free": sum(w.free for w in live if not w.draining),
        "last_seen_seconds_ago": round((now - last_seen).total_seconds(), 1) if last_seen else None,
        "processes": [{"name": w.name, "hostname": w.hostname, "pid": w.pid, "slots": w.slots, "in_use": w.in_use,
                       "free": w.free, "draining": w.draining,
                       "last_seen_seconds_ago": round((now - w.last_seen_at).total_seconds(), 1)} for w in live],
    }
    if not live:
        since = (f"for {int(data['last_seen_seconds_ago'])} s" if last_seen else "yet")
        data["warning"] = (f"no worker has been seen {since}: requests stay queued until one runs "
                           "(`mash host serve` starts one; with --no-worker, run `mash qcluster`)")
    return data


_WARNING_CACHE_SECONDS = 5.0
_warning_cache: tuple[float, str | None] = (float("-inf"), None)


def no_worker_warning() -> str | None:
    """`worker_status`'s warning, or None while a worker is live; read at most every 5 s per
    process (every submit asks, and the answer changes on the scale of seconds)."""
    import time

    global _warning_cache
    checked_at, warning = _warning_cache
    if time.monotonic() - checked_at < _WARNING_CACHE_SECONDS:
        return warning
    from django.utils import timezone

    if Worker.live(timezone.now()).exists():
        warning = None
    else:
        warning = worker_status().get("warning")
    _warning_cache = (time.monotonic(), warning)
    return warning


def forget_worker_warning() -> None:
    global _warning_cache
    _warning_cache = (float("-inf"), None)


def list_sessions(agent_id: str) -> dict[str, Any]:
    hosted = hosted_agent(agent_id)
    rows = (
        Session.objects.filter(agent__agent_id=hosted.agent_id)
        .annotate(turn_count=Count("turns", filter=Q(turns__kind=MemoryTurn.Kind.TURN)))
        .order_by("-last_activity_at")
        .values("session_id", "turn_count", "last_activity_at", "session_total_tokens")
    )
    return {"sessions": [{**r, "last_activity_at": epoch(r["last_activity_at"])} for r in rows]}


def _turns(agent_id: str, session_id: str):
    return MemoryTurn.objects.filter(agent__agent_id=agent_id, session__session_id=session_id.strip())


def session_history(agent_id: str, session_id: str, limit: int = HISTORY_LIMIT[0]) -> dict[str, Any]:
    hosted = hosted_agent(agent_id)
    turns = list(_turns(hosted.agent_id, session_id).order_by("-created_at")[:limit])
    return {"turns": [t.to_dict() for t in reversed(turns)]}


def session_signals(agent_id: str, session_id: str, limit: int = HISTORY_LIMIT[0]) -> dict[str, Any]:
    hosted = hosted_agent(agent_id)
    turns = list(
        _turns(hosted.agent_id, session_id).filter(kind=MemoryTurn.Kind.TURN).order_by("-created_at")[:limit]
    )
    computed_at = epoch(turns[0].created_at) if turns else None
    definitions = {
        name: {"persisted": True, **definition, "computed_at": computed_at}
        for name, definition in signal_definitions().items()
    }
    return {
        "agent_id": hosted.agent_id,
        "session_id": session_id.strip(),
        "definitions": definitions,
        "turns": [{"turn_id": str(t.turn_id), "created_at": epoch(t.created_at), "signals": t.signals}
                  for t in reversed(turns)],
    }


def _preview(value: Any, limit: int = 200) -> str:
    import json

    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def reasoning_trace(agent_id: str, session_id: str, trace_id: str) -> dict[str, Any]:
    """One request's steps rebuilt from its events: what the model said, which tools it called."""
    hosted = hosted_agent(agent_id, include_workflow=True)
    try:
        trace_uuid = uuid.UUID(str(trace_id).strip())
    except ValueError:
        raise NotFound(f"Trace '{trace_id}' not found", code="TRACE_NOT_FOUND") from None
    req = (
        Request.objects.select_related("session")
        .filter(trace_id=trace_uuid, agent__agent_id=hosted.agent_id, session__session_id=session_id.strip())
        .first()
    )
    if req is None:
        raise NotFound(f"Trace '{trace_id}' not found", code="TRACE_NOT_FOUND")
    steps: dict[int, dict[str, Any]] = {}
    for event in RuntimeEvent.objects.filter(request=req, loop_index__isnull=False).order_by("seq"):
        step = steps.setdefault(
            event.loop_index,
            {"step": event.loop_index + 1, "step_index": event.loop_index, "action_type": "response", "title": "",
             "assistant_text": "", "tool_calls": [], "token_usage": {"input": 0, "output": 0},
             "think_duration_ms": 0, "act_duration_ms": 0, "total_duration_ms": 0},
        )
        p = event.payload
        if event.event_type == "runtime.llm.think.completed":
            step["action_type"] = p.get("action_type", "response")
            step["assistant_text"] = p.get("assistant_text", "")
            step["token_usage"] = p.get("token_usage", {"input": 0, "output": 0})
            step["think_duration_ms"] = p.get("duration_ms", 0)
            step["tool_calls"] = [
                {"name": c.get("name"), "arguments": c.get("arguments", {}), "preview": _preview(c.get("arguments", {}))}
                for c in p.get("tool_calls", [])
            ]
            names = [c["name"] for c in step["tool_calls"]]
            step["title"] = f"Called {', '.join(names)}" if names else "Answered"
        elif event.event_type in ("runtime.tool.call.completed", "runtime.subagent.call.completed"):
            step["act_duration_ms"] += p.get("duration_ms", 0)
        elif event.event_type == "runtime.step.completed":
            step["total_duration_ms"] = p.get("duration_ms", 0)
    ordered = [steps[i] for i in sorted(steps)]
    data: dict[str, Any] = {
        "source": "runtime_events",
        "agent_id": hosted.agent_id,
        "session_id": req.session.session_id,
        "trace_id": str(req.trace_id),
        "status": req.status,
        "steps": ordered,
        "summary": {
            "total_steps": len(ordered),
            "total_tools": sum(len(s["tool_calls"]) for s in ordered),
            "total_tokens": req.total_tokens,
            "total_duration_ms": req.duration_ms or sum(s["total_duration_ms"] for s in ordered),
        },
    }
    if req.error:
        data["error"] = req.error
    return data


def telemetry_events(agent_id: str | None = None, session_id: str | None = None, trace_id: str | None = None,
                     limit: int = EVENTS_LIMIT[0]) -> dict[str, Any]:
    qs = RuntimeEvent.objects.all()
    if agent_id:
        qs = qs.filter(agent_id=agent_id.strip())
    if session_id:
        qs = qs.filter(session_id=session_id.strip())
    if trace_id:
        try:
            qs = qs.filter(trace_id=uuid.UUID(trace_id.strip()))
        except ValueError:
            qs = qs.none()
    newest = list(qs.order_by("-id")[:limit])
    return {
        "events": [e.to_dict() for e in reversed(newest)],
        "source": "runtime_events",
        "agent_id": agent_id or None,
        "session_id": session_id or None,
        "trace_id": trace_id or None,
        "limit": limit,
    }


def memory_search(q: Any, app_id: str | None = None, session_id: str | None = None,
                  limit: int = SEARCH_LIMIT[0]) -> dict[str, Any]:
    """Full-text search over memory turns (the telemetry route and page call this).

    `q` must start with `@user:` or `@agent:` (400 SEARCH_VALIDATION_ERROR otherwise); see
    `mash_runtime.memory.search` for the query language, ranking and score normalisation.
    """
    query = parse_query(q, require_prefix=True)
    scope = SearchScope.resolve(app_id, session_id)
    outcome = get_search_service().search(query, scope, limit)
    return {"results": [r.to_api() for r in outcome.results], "app_id": app_id or None,
            "session_id": session_id or None, "query": str(q), "limit": limit}
