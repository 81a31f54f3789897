"""Choosing traces and storing Masher's records (what the Masher tools do, as plain code).

Every function raises `MasherError` for a bad argument or an unknown trace; the tools
turn that into an error result the model reads. Traces are `Request` rows found by
trace id (or request id). Incremental mode takes an agent's finished requests in the
order they finished, after the stored `MasherCheckpoint` of that agent and kind,
leaving out Masher's own requests and workflow-task requests.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.db import transaction
from django.db.models import Q

from mash_runtime.masher.digest import plain_summary, trace_facts
from mash_runtime.masher.export import DIGESTS_FILE, EVALS_FILE, append_jsonl
from mash_runtime.masher.models import EvalRecord, MasherCheckpoint, TraceDigest
from mash_runtime.masher.names import MASHER_AGENT_ID
from mash_runtime.models import Agent, Request, WorkflowRun

MODES = ("trace", "incremental")
PURPOSES = {"digest": MasherCheckpoint.Kind.DIGEST, "eval": MasherCheckpoint.Kind.EVAL}
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
TEXT_CHARS = 1500
SUMMARY_CHARS = 4000


class MasherError(ValueError):
    """A bad argument or an unusable trace: reported to the model, never a crash."""


# -- arguments --------------------------------------------------------------------------------


def check_mode(mode: Any) -> str:
    if mode not in MODES:
        raise MasherError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def check_purpose(purpose: Any) -> str:
    if purpose not in PURPOSES:
        raise MasherError(f"purpose must be one of {', '.join(PURPOSES)}, got {purpose!r}")
    return PURPOSES[purpose]


def check_limit(limit: Any) -> int:
    if limit is None:
        return DEFAULT_LIMIT
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise MasherError(f"limit must be an integer from 1 to {MAX_LIMIT}, got {limit!r}")
    return limit


def check_agent(agent_id: Any) -> str:
    if not isinstance(agent_id, str) or not agent_id.strip():
        raise MasherError("incremental mode needs agent_id: the agent whose traces to process")
    agent_id = agent_id.strip()
    if agent_id == MASHER_AGENT_ID:
        raise MasherError("Masher does not process its own traces")
    if not Agent.objects.filter(agent_id=agent_id).exists():
        raise MasherError(f"unknown agent {agent_id!r}")
    return agent_id


def check_run(run_id: Any) -> str:
    if run_id in (None, ""):
        return ""
    if not isinstance(run_id, str) or not WorkflowRun.objects.filter(pk=run_id.strip()).exists():
        raise MasherError(f"unknown run_id {run_id!r}: pass the run id named in the task message, or none")
    return run_id.strip()


def find_trace(trace_id: Any) -> Request:
    """The request of a trace id (a request id works too)."""
    try:
        value = uuid.UUID(str(trace_id).strip())
    except (TypeError, ValueError, AttributeError):
        raise MasherError(f"trace_id {trace_id!r} is not a trace id (a UUID)") from None
    req = (Request.objects.select_related("agent", "session")
           .filter(Q(trace_id=value) | Q(pk=value)).order_by("created_at").first())
    if req is None:
        raise MasherError(f"unknown trace {trace_id}")
    return req


def _finished(req: Request) -> Request:
    if not req.is_terminal or req.finished_at is None:
        raise MasherError(f"trace {req.trace_id} has not finished (status {req.status})")
    return req


# -- incremental selection --------------------------------------------------------------------


def _position(req: Request) -> tuple:
    return (req.finished_at, req.pk)


def pending_statuses(kind: str) -> tuple[str, ...]:
    # An eval needs an answer: only completed traces become eval records.
    if kind == MasherCheckpoint.Kind.EVAL:
        return (Request.Status.COMPLETED,)
    return (Request.Status.COMPLETED, Request.Status.FAILED)


def get_checkpoint(agent_id: str, kind: str) -> MasherCheckpoint | None:
    return MasherCheckpoint.objects.filter(agent_id=agent_id, kind=kind).first()


def pending_queryset(agent_id: str, kind: str):
    qs = (
        Request.objects.select_related("agent", "session")
        .filter(agent__agent_id=agent_id, status__in=pending_statuses(kind), finished_at__isnull=False,
                workflow_run__isnull=True)
        .exclude(agent__agent_id=MASHER_AGENT_ID)
        .exclude(session__session_id__startswith="workflow:")
    )
    cp = get_checkpoint(agent_id, kind)
    if cp is not None and cp.last_finished_at is not None:
        after = Q(finished_at__gt=cp.last_finished_at)
        if cp.last_request_id is not None:
            after |= Q(finished_at=cp.last_finished_at, pk__gt=cp.last_request_id)
        qs = qs.filter(after)
    return qs.order_by("finished_at", "pk")


def advance_checkpoint(agent_id: str, kind: str, newest: Request, count: int) -> MasherCheckpoint:
    """Move the checkpoint forward to `newest` (never back)."""
    cp, _ = MasherCheckpoint.objects.get_or_create(agent_id=agent_id, kind=kind)
    cp = MasherCheckpoint.objects.select_for_update().get(pk=cp.pk)
    current = (cp.last_finished_at, cp.last_request_id) if cp.last_finished_at is not None else None
    if current is None or _position(newest) > current:
        cp.last_finished_at, cp.last_request_id, cp.last_trace_id = newest.finished_at, newest.pk, newest.trace_id
    cp.processed_count += count
    cp.save()
    return cp


# -- collect ----------------------------------------------------------------------------------


def _clip(text: str, limit: int = TEXT_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe_trace(req: Request) -> dict[str, Any]:
    facts = trace_facts(req)
    return {
        "trace_id": str(req.trace_id),
        "request_id": str(req.pk),
        "agent_id": req.agent.agent_id,
        "session_id": req.session.session_id,
        "status": req.status,
        "user_message": _clip(req.message),
        "answer": _clip(facts["answer"]),
        "error": _clip(facts["error"]),
        "event_count": facts["event_count"],
        "tool_call_count": facts["tool_call_count"],
        "step_count": facts["step_count"],
        "llm_call_count": facts["llm_call_count"],
        "tools": facts["tools"],
        "input_tokens": facts["input_tokens"],
        "output_tokens": facts["output_tokens"],
        "total_tokens": facts["total_tokens"],
        "duration_ms": facts["duration_ms"],
        "notable_events": facts["notable_events"],
        "finished_at": req.finished_at.timestamp() if req.finished_at else None,
    }


def collect(mode: Any, trace_id: Any = None, agent_id: Any = None, limit: Any = None,
            purpose: Any = "digest") -> dict[str, Any]:
    mode = check_mode(mode)
    kind = check_purpose(purpose)
    if mode == "trace":
        if trace_id in (None, ""):
            raise MasherError("trace mode needs trace_id")
        req = _finished(find_trace(trace_id))
        if kind == MasherCheckpoint.Kind.EVAL and req.status != Request.Status.COMPLETED:
            raise MasherError(f"trace {req.trace_id} did not complete (status {req.status}): no eval record")
        return {"mode": mode, "purpose": purpose, "agent_id": req.agent.agent_id, "traces": [describe_trace(req)],
                "remaining": 0}
    agent_id = check_agent(agent_id)
    limit = check_limit(limit)
    qs = pending_queryset(agent_id, kind)
    reqs = list(qs[: limit + 1])
    remaining = qs.count() - limit if len(reqs) > limit else 0
    cp = get_checkpoint(agent_id, kind)
    return {
        "mode": mode,
        "purpose": purpose,
        "agent_id": agent_id,
        "checkpoint": cp.to_dict() if cp else None,
        "traces": [describe_trace(r) for r in reqs[:limit]],
        "remaining": remaining,
    }


# -- saving -----------------------------------------------------------------------------------


def _agent_of(reqs: list[Request], agent_id: Any) -> str:
    if agent_id not in (None, ""):
        agent_id = check_agent(agent_id)
        strangers = [str(r.trace_id) for r in reqs if r.agent.agent_id != agent_id]
        if strangers:
            raise MasherError(f"trace(s) {', '.join(strangers)} do not belong to agent {agent_id!r}")
        return agent_id
    agents = {r.agent.agent_id for r in reqs}
    if len(agents) != 1:
        raise MasherError("incremental mode needs agent_id")
    return check_agent(agents.pop())


def save_per_trace(model, reqs: list[Request], fields) -> list:
    """One `model` row per request, found by its agent and trace id, made or updated with
    `fields(req, trace_facts(req))`, in the order of `reqs`."""
    return [model.objects.update_or_create(agent_id=req.agent.agent_id, trace_id=req.trace_id,
                                           defaults=fields(req, trace_facts(req)))[0] for req in reqs]


def save_digests(digests: Any, mode: Any = "trace", agent_id: Any = None, run_id: Any = None) -> dict[str, Any]:
    """Store one TraceDigest per given trace (facts from code, summary from the model).

    In incremental mode every pending trace up to the newest given one is digested
    (one the model left out gets a plain-code summary), and the checkpoint moves there.
    """
    mode = check_mode(mode)
    if not isinstance(digests, list):
        raise MasherError("digests must be a list of {trace_id, summary}")
    summaries: dict[str, str] = {}
    reqs: dict[Any, Request] = {}
    for item in digests:
        if not isinstance(item, dict) or not isinstance(item.get("summary"), str) or not item["summary"].strip():
            raise MasherError("each digest needs a trace_id and a non-empty summary")
        req = _finished(find_trace(item.get("trace_id")))
        reqs[req.pk] = req
        summaries[req.pk] = item["summary"].strip()[:SUMMARY_CHARS]
    run_id = check_run(run_id)
    with transaction.atomic():
        checkpoint = None
        if mode == "incremental" and reqs:
            agent = _agent_of(list(reqs.values()), agent_id)
            pending = pending_queryset(agent, MasherCheckpoint.Kind.DIGEST)
            given = list(pending.filter(pk__in=list(reqs)))
            if given:
                newest = max(given, key=_position)
                window = pending.filter(Q(finished_at__lt=newest.finished_at)
                                        | Q(finished_at=newest.finished_at, pk__lte=newest.pk))
                for r in window:
                    reqs.setdefault(r.pk, r)
        ordered = sorted(reqs.values(), key=_position)
        saved = save_per_trace(TraceDigest, ordered, lambda req, facts: {
            "request": req, "session_id": req.session.session_id, "status": facts["status"],
            "summary": summaries.get(req.pk) or plain_summary(facts),
            "event_count": facts["event_count"], "tool_call_count": facts["tool_call_count"],
            "step_count": facts["step_count"], "llm_call_count": facts["llm_call_count"],
            "tools": facts["tools"], "input_tokens": facts["input_tokens"],
            "output_tokens": facts["output_tokens"], "total_tokens": facts["total_tokens"],
            "duration_ms": facts["duration_ms"], "notable_events": facts["notable_events"],
            "mode": mode, "run_id": run_id, "trace_created_at": req.created_at,
        })
        if mode == "incremental" and saved:
            newest_req = max(ordered, key=_position)
            checkpoint = advance_checkpoint(newest_req.agent.agent_id, MasherCheckpoint.Kind.DIGEST, newest_req,
                                            len(saved)).to_dict()
    path = append_jsonl(DIGESTS_FILE, [d.to_dict() for d in saved])
    return {
        "mode": mode,
        "saved": len(saved),
        "trace_ids": [str(d.trace_id) for d in saved],
        "automatic_summaries": [str(r.trace_id) for r in ordered if r.pk not in summaries],
        "checkpoint": checkpoint,
        "export": str(path) if path and saved else None,
    }


def save_evals(trace_ids: Any, mode: Any = "trace", agent_id: Any = None, run_id: Any = None,
               through_trace_id: Any = None) -> dict[str, Any]:
    """Store one EvalRecord per given completed trace, purely from its data.

    In incremental mode the checkpoint moves to the newest of the given traces and
    `through_trace_id` (the last trace reviewed, so skipped traces are not offered again).
    """
    mode = check_mode(mode)
    if not isinstance(trace_ids, list):
        raise MasherError("trace_ids must be a list of trace ids")
    reqs: dict[Any, Request] = {}
    for trace_id in trace_ids:
        req = find_trace(trace_id)
        if req.status != Request.Status.COMPLETED:
            raise MasherError(f"trace {req.trace_id} did not complete (status {req.status}): no eval record")
        reqs[req.pk] = req
    through = _finished(find_trace(through_trace_id)) if through_trace_id not in (None, "") else None
    run_id = check_run(run_id)
    with transaction.atomic():
        ordered = sorted(reqs.values(), key=_position)
        saved = save_per_trace(EvalRecord, ordered, lambda req, facts: {
            "request": req, "session_id": req.session.session_id, "user_message": req.message,
            "answer": facts["answer"], "tools": facts["tool_calls"], "input_tokens": facts["input_tokens"],
            "output_tokens": facts["output_tokens"], "total_tokens": facts["total_tokens"],
            "status": req.status, "mode": mode, "run_id": run_id,
        })
        checkpoint = None
        considered = ordered + ([through] if through is not None else [])
        if mode == "incremental" and considered:
            agent = _agent_of(considered, agent_id)
            newest = max(considered, key=_position)
            checkpoint = advance_checkpoint(agent, MasherCheckpoint.Kind.EVAL, newest, len(saved)).to_dict()
    path = append_jsonl(EVALS_FILE, [r.to_dict() for r in saved])
    return {
        "mode": mode,
        "saved": len(saved),
        "trace_ids": [str(r.trace_id) for r in saved],
        "checkpoint": checkpoint,
        "export": str(path) if path and saved else None,
    }
