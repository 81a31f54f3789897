"""The durable hooks: how `mash_core`'s agent loop stores and replays its steps.

Every LLM and tool step is stored as a `StepCheckpoint` before the next starts and
replayed on any re-run; every event carries a dedupe key so a replay adds no frame.
Approvals, AskUser and subagent calls park the request (`Park`); a draining process
stops a run between two steps (`Release`) so another process continues it from there.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any, Awaitable, Callable

from django.db import transaction
from django.utils import timezone

from mash_core.agent import AgentHooks, AgentRun, StepFn
from mash_core.messages import ToolCallBlock
from mash_core.tools.base import ToolResult
from mash_runtime import doorbell, mcp_tools, tokens
from mash_runtime.events import append_event, append_events, base_payload
from mash_runtime.host import get_host
from mash_runtime.host_sync import get_agent_row
from mash_runtime.models import Interaction, Request, StepCheckpoint
from mash_runtime.queue import enqueue_request_on_commit
from mash_runtime.run.checkpoints import Step, checkpoint_rows, store_steps
from mash_runtime.run.state import Outcome, RunState
from mash_runtime.services import create_request, subagent_session_id
from mash_runtime.subagents import INVOKE_SUBAGENT

# How long buffered events may wait for the next checkpoint's transaction before they are
# written alone (see DurableHooks.run_step).
LINGER_SECONDS = 0.02

Db = Callable[[Callable], Callable[..., Awaitable[Any]]]


class Park(Exception):
    """Stop this run without an outcome; the request continues when its cause is resolved."""

    def __init__(self, outcome: Outcome):
        super().__init__(outcome.value)
        self.outcome = outcome  # PARKED_INPUT | PARKED_SUBAGENT


class Release(Exception):
    """Stop this run between two steps: the process is draining and hands it back."""


class DurableHooks(AgentHooks):
    def __init__(self, state: RunState, checkpoints: dict[str, dict[str, Any]], *, db: Db,
                 draining: Callable[[], bool] = lambda: False):
        super().__init__()
        self.state = state
        self.checkpoints = checkpoints
        self.db = db
        self.draining = draining
        self.pending: list[tuple] = []
        self.unsaved: list[Step] = []
        self.lingering: asyncio.Task | None = None
        self.lingering_writes = False
        # Committed but not rung yet (the claim's events): they ride on the run's first ring
        # (its first checkpoint's, or LINGER_SECONDS in), one ring less per run.
        self.unrung: list = list(state.claim_events)
        if self.unrung:
            self.flush_soon()

    @property
    def request(self) -> Request:
        return self.state.request

    async def flush(self) -> None:
        """Store finished steps and buffered events in one transaction, then ring once.

        This runs before every step that follows a finished one, every tool, every
        interaction and every outcome, so a step's checkpoint is always stored before the next step starts
        (a crash in between re-runs only that step, exactly as if it had crashed before
        storing), frames keep their order, and a crash loses only events that the replay
        emits again under the same dedupe keys.
        """
        if self.lingering is not None and self.lingering is not asyncio.current_task():
            await self.settle()
        if not self.pending and not self.unsaved:
            await ring_for(self.request, self.take_unrung())
            return
        steps, items = self.take()
        created = await self.db(persist_run_progress)(self.request, steps, items)
        await ring_for(self.request, self.take_unrung() + created)

    def flush_soon(self) -> None:
        if self.lingering is None or self.lingering.done():
            self.lingering_writes = False
            self.lingering = asyncio.get_running_loop().create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(LINGER_SECONDS)
        self.lingering_writes = True
        await self.flush()

    async def settle(self) -> None:
        """End a delayed flush before the run writes anything itself: one still asleep is
        cancelled (its events stay buffered for the caller); one under way is awaited, so
        its write lands first and a failure fails the run instead of losing what it took."""
        lingering, self.lingering = self.lingering, None
        if lingering is None or lingering.done():
            if lingering is not None and not lingering.cancelled():
                lingering.result()
            return
        if not self.lingering_writes:  # not started yet, or still asleep
            lingering.cancel()
            return
        self.lingering_writes = False
        await lingering

    def take_unrung(self) -> list:
        unrung, self.unrung = self.unrung, []
        return unrung

    def take(self) -> tuple[list[Step], list]:
        """Hand over the unsaved steps and buffered events (the caller stores them)."""
        steps, self.unsaved = self.unsaved, []
        items, self.pending = self.pending, []
        return steps, items

    async def run_step(self, key: str, kind: str, fn: StepFn) -> dict[str, Any]:
        if key in self.checkpoints:
            return self.checkpoints[key]
        if self.draining():
            # Everything before this step is stored by the caller's flush; another process
            # replays it and runs this step.
            raise Release()
        if self.unsaved or (kind == "tool" and self.pending):
            # A finished step is stored before the next one starts: a crash re-runs only the
            # step under way, never a tool that completed. A tool also finds every earlier
            # event written: some append to the stream themselves (memory search).
            await self.flush()
        elif self.pending:
            # Events alone need no durability before a model step, only visibility while it
            # runs: written LINGER_SECONDS from now, or with the next checkpoint if it is quick.
            self.flush_soon()
        output = await fn()
        self.unsaved.append((key, kind, output))
        self.checkpoints[key] = output
        return output

    async def interaction(self, key: str, spec: dict[str, Any]) -> dict[str, Any]:
        await self.flush()
        itr = await self.db(open_interaction)(self.request, key, spec)
        if itr.status == Interaction.Status.PENDING:
            raise Park(Outcome.PARKED_INPUT)
        return {"response": itr.response, "timed_out": itr.status == Interaction.Status.TIMED_OUT}

    async def emit(
        self, event_type: str, payload: dict[str, Any], *, loop_index: int | None = None, step_key: str = ""
    ) -> None:
        if event_type == "runtime.tool.call.completed" and payload.get("tool_name") == INVOKE_SUBAGENT:
            event_type = "runtime.subagent.call.completed"
        self.pending.append((event_type, payload, f"{step_key}:{event_type}", loop_index, step_key))

    async def text_sink(self, step_key: str, attempt: int):
        """Token deltas of this step, while a stream of this request asked for them (tokens.py)."""
        if not tokens.enabled() or not await tokens.listening(self.request.pk):
            return None
        return tokens.DeltaSender(self.request.pk, step_key, attempt)

    async def call_tool(self, key: str, tool: Any, call: ToolCallBlock, run: AgentRun) -> ToolResult:
        if getattr(tool, "name", None) != INVOKE_SUBAGENT:
            if mcp_tools.is_mcp_tool(tool):  # an ordinary tool step, between its mcp.tool.* events
                return await mcp_tools.tool_step(self.emit, key, tool, call,
                                                 lambda: AgentHooks.call_tool(self, key, tool, call, run))
            return await super().call_tool(key, tool, call, run)
        if key not in self.checkpoints:
            await self.flush()
            result = await self.db(subagent_step)(self.request, key, call.arguments)
            if result is None:
                raise Park(Outcome.PARKED_SUBAGENT)
            stored = await self.db(StepCheckpoint.store)(self.request.pk, key, "subagent", result.to_dict())
            self.checkpoints[key] = stored.output
        return ToolResult.from_dict(self.checkpoints[key])


async def ring_for(req: Request, created: list) -> None:
    if created:
        await doorbell.ring_async(req.pk, created[-1].agent_id, created[-1].seq, created)


def persist_run_progress(req: Request, steps: list[Step], items: list[tuple]) -> list:
    if not items:
        store_steps(req, steps)
        return []
    results = append_events(req, items, ring=False, along=checkpoint_rows(req, steps))
    return [event for event, created in results if created]


def open_interaction(req: Request, key: str, spec: dict[str, Any]) -> Interaction:
    with transaction.atomic():
        itr = Interaction.objects.filter(request=req, step_key=key).first()
        if itr is not None:
            return itr
        itr = Interaction.objects.create(
            request=req,
            step_key=key,
            type=spec["type"],
            prompt=spec["prompt"],
            schema=spec["schema"],
            default_response=spec["default"],
            timeout_seconds=spec["timeout_seconds"],
            expires_at=timezone.now() + timedelta(seconds=spec["timeout_seconds"]),
        )
        payload = {
            **base_payload(req),
            "interaction_id": itr.interaction_id,
            "type": itr.type,
            "prompt": itr.prompt,
            "schema": itr.schema,
            "timeout_seconds": itr.timeout_seconds,
        }
        append_event(req, "request.interaction.create", payload, dedupe_key=f"{key}:create:{req.run_attempt}",
                     step_key=key)
    return itr


def subagent_step(parent: Request, key: str, args: dict[str, Any]) -> ToolResult | None:
    """Start the child request for an InvokeSubagent call, or return its result once it ended.

    None means "not finished yet": the parent parks and the child's end enqueues it.
    """
    host = get_host()
    agent_id = str(args.get("agent_id", "")).strip()
    hosted = host.get(agent_id)
    if hosted is None or hosted.role != "subagent":
        return ToolResult.error(
            f"Unknown subagent '{agent_id}'. Available subagents: {', '.join(host.subagent_ids) or 'none'}"
        )
    marker = f"{key}:child"
    with transaction.atomic():
        started = StepCheckpoint.objects.filter(request=parent, step_key=marker).first()
        if started is None:
            child = create_request(
                get_agent_row(agent_id),
                str(args.get("prompt", "")).strip() or "(empty prompt)",
                session_id=subagent_session_id(parent.session.session_id, agent_id),
                parent=parent,
                metadata={"parent_request_id": str(parent.pk), "parent_step": key},
            )
            StepCheckpoint.store(parent.pk, marker, "subagent.start", {"request_id": str(child.pk)})
            enqueue_request_on_commit(child.pk)
            return None
    child = Request.objects.get(pk=started.output["request_id"])
    if not child.is_terminal:
        return None
    meta = {"request_id": str(child.pk), "agent_id": agent_id, "session_id": subagent_session_id(
        parent.session.session_id, agent_id)}
    if child.status == Request.Status.COMPLETED:
        return ToolResult.success((child.response or {}).get("text", ""), **meta)
    return ToolResult.error(f"Subagent '{agent_id}' {child.status}: {child.error or 'no answer'}", **meta)
