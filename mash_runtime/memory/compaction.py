"""Compaction: fold a session's recent turns into one summary checkpoint turn.

A checkpoint is a `MemoryTurn` of kind `summary`. `memory.load_history` starts a
request's history at the newest checkpoint (its text first, then the turns after it),
so compaction shrinks the context of every later request of the session.

- Manual: `compact_session(agent_id, session_id, reason="manual",
  session_total_tokens_reset=0)` (the `POST .../sessions/{sid}/compact` route).
- Automatic: after a completed request whose session total reaches the agent's
  `compaction_token_threshold` (0 = off), the engine calls `schedule_auto_compaction`,
  which enqueues the django-q2 task `compact_session_task` after commit.

One compaction = one LLM call with the agent's own provider (`spec.build_llm()`): the
previous checkpoint (if any) and the turns since it (at most `compaction_turn_limit`,
the newest ones) go in; a Markdown summary with the sections Summary / Decisions /
Open questions / User preferences comes out (missing sections are added as "None.").

Concurrency: the turns are read first, the LLM runs outside any transaction, and the
checkpoint is written in one transaction that (1) refuses if another checkpoint landed
meanwhile, (2) places the checkpoint right after the newest summarised turn (so a turn
that completed during the LLM call stays after it, in history, instead of being hidden
unsummarised) and (3) sets the session total to the reset value plus whatever tokens
arrived during the call.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from asgiref.sync import async_to_sync
from django.db import transaction
from django.utils import timezone

from mash_core.agent import RetryPolicy
from mash_core.llm.base import LLMError, LLMRequest, TokenUsage
from mash_core.messages import Message
from mash_runtime.errors import Conflict, NotFound, ServiceError
from mash_runtime.host import HostedAgent, get_host
from mash_runtime.memory.history import SUMMARY_USER_MESSAGE
from mash_runtime.models import MemoryTurn, Session
from mash_runtime.queue import enqueue
from mash_runtime.tasks import COMPACT_SESSION

logger = logging.getLogger("mash_runtime.memory.compaction")

SECTIONS = ("Summary", "Decisions", "Open questions", "User preferences")
MAX_MESSAGE_CHARS = 6000
MAX_PROMPT_CHARS = 300_000

SYSTEM_PROMPT = (
    "You compact conversations between a user and an AI agent. Your summary replaces the "
    "conversation in the agent's memory, so keep everything the agent needs to continue: "
    "facts, names, numbers, identifiers, file paths, commands, results and commitments. "
    "Answer in Markdown with exactly these four sections, in this order, each starting "
    "with a '## ' heading:\n"
    "## Summary\nWhat happened and where things stand.\n"
    "## Decisions\nWhat was decided or done, as a bullet list.\n"
    "## Open questions\nWhat is unresolved or still to do, as a bullet list.\n"
    "## User preferences\nHow the user likes things done (style, constraints, tools), as a bullet list.\n"
    "Write 'None.' under a section with nothing to say. No other sections, no preamble."
)


class NothingToCompact(Conflict, code="NOTHING_TO_COMPACT"):
    """No turn since the last summary."""


class CompactionFailed(ServiceError, status=502, code="COMPACTION_FAILED"):
    """The summary call failed or returned no text."""


@dataclass
class CompactionPlan:
    hosted: HostedAgent
    session: Session
    previous: MemoryTurn | None
    turns: list[MemoryTurn]
    total_at_start: int


def plan_compaction(hosted: HostedAgent, session: Session) -> CompactionPlan:
    """The newest checkpoint and the turns after it (at most `compaction_turn_limit`, the newest)."""
    turns = MemoryTurn.objects.filter(session=session)
    previous = turns.filter(kind=MemoryTurn.Kind.SUMMARY).order_by("-created_at").first()
    recent = turns.filter(kind=MemoryTurn.Kind.TURN)
    if previous is not None:
        recent = recent.filter(created_at__gt=previous.created_at)
    selected = list(recent.order_by("-created_at")[: hosted.config.compaction_turn_limit])
    selected.reverse()
    total = Session.objects.values_list("session_total_tokens", flat=True).get(pk=session.pk)
    return CompactionPlan(hosted=hosted, session=session, previous=previous, turns=selected, total_at_start=total)


def _clip(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    text = text or ""
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[... {len(text) - limit} more characters cut]"


def build_prompt(plan: CompactionPlan) -> str:
    """The user message of the summary call; the oldest turns are dropped first if it is too long."""
    blocks = [
        f"<turn index=\"{i}\">\nUser: {_clip(t.user_message)}\nAgent: {_clip(t.agent_response)}\n</turn>"
        for i, t in enumerate(plan.turns, start=1)
    ]
    head = ""
    if plan.previous is not None:
        head = f"Summary of the conversation before these turns:\n<previous_summary>\n{_clip(plan.previous.agent_response, 20000)}\n</previous_summary>\n\n"
    while len(blocks) > 1 and len(head) + sum(len(b) for b in blocks) > MAX_PROMPT_CHARS:
        blocks.pop(0)
    return (
        f"{head}Conversation turns to compact (oldest first, {len(blocks)} turn(s)):\n\n"
        + "\n\n".join(blocks)
        + "\n\nWrite the compacted summary now, merging in the previous summary if there is one."
    )


_HEADING_RE = re.compile(
    r"^[ \t]{0,3}(?:#{1,6}[ \t]*|\*\*)?[ \t]*(summary|decisions|open questions|user preferences)[ \t]*:?[ \t]*(?:\*\*)?[ \t]*:?[ \t]*$",
    re.IGNORECASE | re.MULTILINE,
)


def ensure_sections(text: str) -> str:
    """The model's summary with the four sections as `## ` headings, missing ones added as 'None.'."""
    text = (text or "").strip()
    found: dict[str, bool] = {}

    def heading(match: re.Match) -> str:
        name = next(s for s in SECTIONS if s.lower() == match.group(1).lower())
        found[name] = True
        return f"## {name}"

    normalised = _HEADING_RE.sub(heading, text)
    if not found:
        normalised = f"## Summary\n{text}"
        found["Summary"] = True
    missing = [s for s in SECTIONS if s not in found]
    if missing:
        normalised += "".join(f"\n\n## {s}\nNone." for s in missing)
    return normalised.strip()


async def summarise(hosted: HostedAgent, prompt: str) -> tuple[str, TokenUsage, str]:
    """One LLM call (transient errors retried with backoff); returns (text, usage, model)."""
    llm = hosted.spec.build_llm()
    request = LLMRequest(
        system=SYSTEM_PROMPT,
        messages=[Message.user(prompt)],
        tools=[],
        max_tokens=min(hosted.config.max_tokens, 4096),
        temperature=min(float(hosted.config.temperature), 0.3),
        prompt_caching=False,
        metadata={"purpose": "compaction"},
    )
    policy = RetryPolicy()
    for attempt in range(policy.attempts):
        try:
            response = await llm.complete(request)
            break
        except LLMError as exc:
            if not exc.transient or attempt == policy.attempts - 1:
                raise
            await asyncio.sleep(policy.delay(attempt))
    return response.text, response.usage, getattr(response, "model", "") or getattr(llm, "model", "") or ""


def store_summary(plan: CompactionPlan, text: str, usage: TokenUsage, model: str, *, reason: str,
                  reset: int) -> MemoryTurn:
    with transaction.atomic():
        session = Session.objects.select_for_update().get(pk=plan.session.pk)
        newest = (
            MemoryTurn.objects.filter(session=session, kind=MemoryTurn.Kind.SUMMARY)
            .order_by("-created_at")
            .values_list("pk", flat=True)
            .first()
        )
        if newest != (plan.previous.pk if plan.previous else None):
            raise Conflict("Another compaction of this session finished first", code="COMPACTION_CONFLICT")
        arrived = max(0, session.session_total_tokens - plan.total_at_start)
        new_total = reset + arrived
        Session.objects.filter(pk=session.pk).update(session_total_tokens=new_total)
        now = timezone.now()
        turn = MemoryTurn.objects.create(
            agent_id=session.agent_id,
            session=session,
            kind=MemoryTurn.Kind.SUMMARY,
            user_message=SUMMARY_USER_MESSAGE,
            agent_response=text,
            token_usage=usage.to_dict(),
            session_total_tokens=new_total,
            metadata={
                "kind": "summary",
                "reason": reason,
                "compacted_turns": len(plan.turns),
                "first_turn_id": str(plan.turns[0].turn_id),
                "last_turn_id": str(plan.turns[-1].turn_id),
                "previous_summary_id": str(plan.previous.turn_id) if plan.previous else None,
                "session_total_tokens_before": plan.total_at_start,
                "session_total_tokens_reset": reset,
                "model": model,
                "compacted_at": now.timestamp(),
            },
        )
        # History is ordered by created_at: the checkpoint goes right after the newest turn it
        # summarises, so turns that completed during the LLM call stay after it.
        placed = plan.turns[-1].created_at + timedelta(microseconds=1)
        MemoryTurn.objects.filter(pk=turn.pk).update(created_at=placed)
        turn.created_at = placed
    return turn


def run_compaction(hosted: HostedAgent, session: Session, *, reason: str, reset: int = 0) -> MemoryTurn:
    plan = plan_compaction(hosted, session)
    if not plan.turns:
        raise NothingToCompact("Nothing to compact: no turns since the last summary")
    try:
        text, usage, model = async_to_sync(summarise)(hosted, build_prompt(plan))
    except LLMError as exc:
        raise CompactionFailed(f"The summary call failed: {exc}", details={"error_code": exc.code}) from exc
    if not (text or "").strip():
        raise CompactionFailed("The summary call returned no text")
    return store_summary(plan, ensure_sections(text), usage, model, reason=reason, reset=reset)


def compact_session(agent_id: str, session_id: str, *, reason: str = "manual",
                    session_total_tokens_reset: int = 0) -> dict[str, Any]:
    """Manual compaction: `{summary_text, turn_id}`. 404 for an unknown agent or session,
    409 NOTHING_TO_COMPACT when no turn follows the last checkpoint."""
    agent_id = (agent_id or "").strip()
    session_id = (session_id or "").strip()
    hosted = get_host().get(agent_id)
    if hosted is None:
        raise NotFound(f"Agent '{agent_id}' not found", code="AGENT_NOT_FOUND")
    session = Session.objects.filter(agent__agent_id=agent_id, session_id=session_id).first()
    if session is None:
        raise NotFound(f"Session '{session_id}' not found", code="SESSION_NOT_FOUND")
    turn = run_compaction(hosted, session, reason=reason or "manual", reset=session_total_tokens_reset)
    return {"summary_text": turn.agent_response, "turn_id": str(turn.turn_id)}


# -- automatic ----------------------------------------------------------------------------


def should_compact(hosted: HostedAgent, session_total_tokens: int) -> bool:
    threshold = hosted.config.compaction_token_threshold
    return bool(threshold) and session_total_tokens >= threshold


def enqueue_compaction(session_pk: int, reason: str = "auto") -> None:
    try:
        enqueue(COMPACT_SESSION, session_pk, reason, task_name=f"compact-session-{session_pk}")
    except Exception:
        # The next completed request over the threshold enqueues again.
        logger.exception("could not enqueue compaction of session %s", session_pk)


def schedule_auto_compaction(req, hosted: HostedAgent, session_total_tokens: int) -> bool:
    """Called by the engine inside a completed request's transaction: enqueue a compaction
    after commit when the session total reached the threshold."""
    if not should_compact(hosted, session_total_tokens):
        return False
    session_pk = req.session_id
    transaction.on_commit(lambda: enqueue_compaction(session_pk))
    return True


def compact_session_task(session_pk: int, reason: str = "auto") -> str:
    """django-q2 entry point. Re-checks the threshold: a compaction that already ran (or a
    second enqueue for the same crossing) finds the total reset and does nothing."""
    from django.db import close_old_connections

    close_old_connections()
    try:
        session = Session.objects.select_related("agent").filter(pk=session_pk).first()
        if session is None:
            return "missing"
        hosted = get_host().get(session.agent.agent_id)
        if hosted is None:
            return "agent_missing"
        if reason == "auto" and not should_compact(hosted, session.session_total_tokens):
            return "below_threshold"
        try:
            turn = run_compaction(hosted, session, reason=reason)
        except NothingToCompact:
            return "nothing"
        except Conflict:
            return "conflict"
        logger.info("compacted session %s into %s", session_pk, turn.turn_id)
        return "compacted"
    finally:
        close_old_connections()


__all__ = [
    "SECTIONS",
    "NothingToCompact",
    "CompactionFailed",
    "compact_session",
    "compact_session_task",
    "schedule_auto_compaction",
    "should_compact",
    "ensure_sections",
    "build_prompt",
    "plan_compaction",
    "run_compaction",
    "CompactionPlan",
    "enqueue_compaction",
    "store_summary",
    "summarise",
    "SYSTEM_PROMPT",
    "MAX_MESSAGE_CHARS",
    "MAX_PROMPT_CHARS",
]
