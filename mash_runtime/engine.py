"""The durable request engine: one django-q2 task runs one request until it ends or parks.

`run_request_task` (the task) claims the request with a lease, rebuilds the agent,
and runs `mash_core`'s loop with `DurableHooks`: every LLM and tool step is stored
as a `StepCheckpoint` before the next starts and replayed on any re-run; every event
carries a dedupe key so a replay adds no frame. Approvals, AskUser and subagent calls
park the request (`Park`) and free the worker; an answer or a finished child enqueues
the request again, and the re-run replays up to where it stopped.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import threading
import time
from datetime import timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from mash_core.agent import Agent, AgentHooks, AgentResult, AgentRun, StepFn
from mash_core.llm.base import LLMError
from mash_core.messages import ToolCallBlock
from mash_core.structured import StructuredOutputError
from mash_core.tools.base import ToolResult
from mash_runtime import doorbell
from mash_runtime.events import append_event, append_events, base_payload
from mash_runtime.host import HostedAgent, get_host
from mash_runtime.memory import build_turn, load_history
from mash_runtime.models import (Interaction, Request, RuntimeEvent, Session, StepCheckpoint, bound_cursor, column,
                                 insert_rows, model_field, select_rows, update_row)
from mash_runtime.queue import enqueue_request, enqueue_request_on_commit
from mash_runtime.services import after_terminal, create_request, finish_request, get_agent_row, subagent_session_id
from mash_runtime.subagents import INVOKE_SUBAGENT, InvokeSubagentTool, routing_block

logger = logging.getLogger("mash_runtime.engine")

HEARTBEAT_SECONDS = 0.5
# How long buffered events may wait for the next checkpoint's transaction before they are
# written alone (see DurableHooks.run_step).
LINGER_SECONDS = 0.02
db = sync_to_async  # thread-sensitive: every ORM call of a run shares one thread and connection


class Park(Exception):
    """Stop this run without an outcome; the request continues when `reason` is resolved."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason  # "input" | "subagent"


def new_lease_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def lease_seconds() -> int:
    return int(getattr(settings, "MASH_LEASE_SECONDS", 30))


# -- the task ------------------------------------------------------------------------------


_loops = threading.local()


def _worker_loop() -> asyncio.AbstractEventLoop:
    """One event loop per worker thread, kept across tasks.

    A fresh loop per task (asyncio.run) also meant a fresh Redis connection for the
    doorbells on every request, with its handshake; that was a tenth of a worker's CPU.
    Keyed by pid too: a forked worker must not reuse its parent's loop.
    """
    loop = getattr(_loops, "loop", None)
    if loop is None or loop.is_closed() or getattr(_loops, "pid", None) != os.getpid():
        loop = asyncio.new_event_loop()
        _loops.loop, _loops.pid = loop, os.getpid()
    return loop


def run_request_task(request_id: str) -> str:
    """django-q2 entry point (sync, as the worker calls it)."""
    close_old_connections()
    try:
        return _worker_loop().run_until_complete(run_request(request_id))
    finally:
        close_old_connections()


async def run_request(request_id: str) -> str:
    owner = new_lease_owner()
    try:
        claimed = await db(claim_and_prepare)(request_id, owner)
        if isinstance(claimed, str):
            return claimed
        return await RequestRunner(claimed, owner).run()
    finally:
        # The loop idles between tasks: rings held back for tails must go out now.
        await doorbell.flush_tail_rings()
        await db(close_old_connections)()


def claim_and_prepare(request_id: str, owner: str) -> Request | str:
    """The claim and what the run needs from the database, in one trip to the db thread."""
    claimed = claim_request(request_id, owner)
    if isinstance(claimed, str):
        return claimed
    hosted = get_host().get(claimed.agent.agent_id)
    if hosted is not None and not claimed.cancel_requested:
        claimed.prepared = prepare_run(claimed, hosted)
    return claimed


def _take_lease(request_id, owner: str, now) -> int | None:
    """The claim's UPDATE: not finished, lease free or expired, nothing unfinished earlier
    in its session. It also reserves the seq of the `request.started` event the claim
    appends, and returns the request's last_seq after that (None when it did not match).
    Written out because it runs once per task and the ORM spent longer compiling it than
    the database spent running it."""
    table = connection.ops.quote_name(Request._meta.db_table)

    def col(name: str) -> str:
        return column(Request, name, connection)

    def prep(name: str, value):
        return model_field(Request, name).get_db_prep_value(value, connection)

    terminal = ", ".join(["%s"] * len(Request.TERMINAL))
    sql = (
        f"UPDATE {table} SET {col('status')} = %s, {col('lease_owner')} = %s, {col('lease_expires_at')} = %s, "
        f"{col('started_at')} = COALESCE({col('started_at')}, %s), {col('last_seq')} = {col('last_seq')} + 1 "
        f"WHERE {col('id')} = %s AND {col('status')} NOT IN ({terminal}) "
        f"AND ({col('lease_expires_at')} IS NULL OR {col('lease_expires_at')} < %s) "
        f"AND NOT EXISTS (SELECT 1 FROM {table} AS earlier WHERE earlier.{col('session')} = {table}.{col('session')} "
        f"AND earlier.{col('session_seq')} < {table}.{col('session_seq')} AND earlier.{col('status')} NOT IN ({terminal})) "
        f"RETURNING {col('last_seq')}"
    )
    params = [Request.Status.RUNNING, owner, prep("lease_expires_at", now + timedelta(seconds=lease_seconds())),
              prep("started_at", now), prep("id", request_id), *Request.TERMINAL, prep("lease_expires_at", now),
              *Request.TERMINAL]
    with bound_cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    return row[0] if row is not None else None


def claim_request(request_id: str, owner: str, _retry: bool = True) -> Request | str:
    """Take the lease with one conditional UPDATE, or say why not.

    The UPDATE only matches a request that is not finished, whose lease is free or
    expired, and that has no unfinished earlier request in its session: that last
    condition is what runs a session's requests one at a time, in order. A request that
    will run gets its `request.started` event in the same transaction (one commit less
    per run); the run rings for it with its first write (`req.claim_events`).
    """
    now = timezone.now()
    with transaction.atomic():
        reserved_to = _take_lease(request_id, owner, now)
        found = select_rows(Request, {"pk": request_id}, related=("agent", "session"))
        if not found:
            return "missing"
        req = found[0]
        if reserved_to is not None:
            req.last_seq = reserved_to - 1  # as before the reservation: the append below takes it
            # Started by this claim for the first time: no step ran before, so there are no
            # checkpoints to load, and the stream holds only its first event, "accepted".
            req.first_start = req.started_at == now
            # The run appends through this object: let it keep its stream's keys.
            req._event_keys = {"accepted"} if req.first_start and req.last_seq == 1 else RuntimeEvent.stream_keys(req.pk)
            req.claim_events = []
            if not req.cancel_requested and get_host().get(req.agent.agent_id) is not None:
                results = append_events(req, [("request.started", {**base_payload(req), "status": "started"},
                                                f"started.{req.run_attempt}", None, "")], ring=False,
                                        reserved_to=reserved_to)
                req.claim_events = [event for event, created in results if created]
            else:
                update_row(Request, {"pk": req.pk}, add={"last_seq": -1})  # no started event: give the seq back
            return req
    if req.is_terminal:
        return "finished"
    if req.lease_owner and req.lease_expires_at and req.lease_expires_at >= now:
        return "leased"
    with transaction.atomic():
        blocked = (
            Request.objects.filter(session_id=req.session_id, session_seq__lt=req.session_seq)
            .exclude(status__in=Request.TERMINAL)
            .exists()
        )
        if blocked:
            Request.objects.filter(pk=req.pk, status=Request.Status.ACCEPTED).update(status=Request.Status.WAITING)
            payload = {**base_payload(req), "status": "waiting", "reason": "session_busy"}
            append_event(req, "request.waiting", payload, dedupe_key="waiting")
            return "waiting"
    # The request ahead finished between the UPDATE and the check: try once more.
    return claim_request(request_id, owner, _retry=False) if _retry else "waiting"


# -- hooks ---------------------------------------------------------------------------------


class DurableHooks(AgentHooks):
    def __init__(self, runner: "RequestRunner", checkpoints: dict[str, dict[str, Any]], unrung: list = ()):
        super().__init__()
        self.runner = runner
        self.checkpoints = checkpoints
        self.pending: list[tuple] = []
        self.unsaved: list[tuple[str, str, dict[str, Any]]] = []
        self.lingering: asyncio.Task | None = None
        self.lingering_writes = False
        # Committed but not rung yet (the claim's events): they ride on the run's first ring
        # (its first checkpoint's, or LINGER_SECONDS in), one ring less per run.
        self.unrung: list = list(unrung)
        if self.unrung:
            self.flush_soon()

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
        created = await db(persist_run_progress)(self.request, steps, items)
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

    def take(self) -> tuple[list, list]:
        """Hand over the unsaved steps and buffered events (the caller stores them)."""
        steps, self.unsaved = self.unsaved, []
        items, self.pending = self.pending, []
        return steps, items

    @property
    def request(self) -> Request:
        return self.runner.request

    async def run_step(self, key: str, kind: str, fn: StepFn) -> dict[str, Any]:
        if key in self.checkpoints:
            return self.checkpoints[key]
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
        itr = await db(open_interaction)(self.request, key, spec)
        if itr.status == Interaction.Status.PENDING:
            raise Park("input")
        return {"response": itr.response, "timed_out": itr.status == Interaction.Status.TIMED_OUT}

    async def emit(
        self, event_type: str, payload: dict[str, Any], *, loop_index: int | None = None, step_key: str = ""
    ) -> None:
        if event_type == "runtime.tool.call.completed" and payload.get("tool_name") == INVOKE_SUBAGENT:
            event_type = "runtime.subagent.call.completed"
        self.pending.append((event_type, payload, f"{step_key}:{event_type}", loop_index, step_key))

    async def call_tool(self, key: str, tool: Any, call: ToolCallBlock, run: AgentRun) -> ToolResult:
        if getattr(tool, "name", None) != INVOKE_SUBAGENT:
            return await super().call_tool(key, tool, call, run)
        if key not in self.checkpoints:
            await self.flush()
            result = await db(subagent_step)(self.request, key, call.arguments)
            if result is None:
                raise Park("subagent")
            stored = await db(StepCheckpoint.store)(self.request.pk, key, "subagent", result.to_dict())
            self.checkpoints[key] = stored.output
        return ToolResult.from_dict(self.checkpoints[key])


async def ring_for(req: Request, created: list) -> None:
    if created:
        await doorbell.ring_async(req.pk, created[-1].agent_id, created[-1].seq, created)


def persist_run_progress(req: Request, steps: list[tuple[str, str, dict[str, Any]]], items: list[tuple]) -> list:
    if not items:
        store_steps(req, steps)
        return []
    results = append_events(req, items, ring=False, along=checkpoint_rows(req, steps))
    return [event for event, created in results if created]


def checkpoint_rows(req: Request, steps: list[tuple[str, str, dict[str, Any]]]) -> list[StepCheckpoint]:
    return [StepCheckpoint(request_id=req.pk, step_key=key, kind=kind, output=output,
                           duration_ms=int(output.get("duration_ms", 0) or 0)) for key, kind, output in steps]


def store_steps(req: Request, steps: list[tuple[str, str, dict[str, Any]]]) -> None:
    if steps:
        # A conflict means another worker stored the step first (it held the lease then); keep its row.
        insert_rows(checkpoint_rows(req, steps), ignore_conflicts=True)


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


# -- one run -------------------------------------------------------------------------------


class RequestRunner:
    def __init__(self, request: Request, owner: str):
        self.request = request
        self.owner = owner
        self.stop_reason: str | None = None

    async def run(self) -> str:
        req = self.request
        if req.cancel_requested:
            await db(self._finish)(Request.Status.CANCELLED, "Request cancelled", "cancelled", False)
            return "cancelled"
        hosted = get_host().get(req.agent.agent_id)
        if hosted is None:
            await db(self._finish)(Request.Status.FAILED, f"Agent '{req.agent.agent_id}' is not defined by this host",
                                   "AGENT_NOT_FOUND", False)
            return "failed"
        prepared = getattr(req, "prepared", None) or await db(prepare_run)(req, hosted)
        agent, history, checkpoints = prepared
        hooks = DurableHooks(self, checkpoints, unrung=getattr(req, "claim_events", ()))
        task = asyncio.create_task(
            agent.run(req.message, history=history, structured_output=req.structured_output, hooks=hooks)
        )
        heartbeat = asyncio.create_task(self.heartbeat(task))
        succeeded = False
        try:
            try:
                result: AgentResult = await task
                succeeded = True
            finally:
                heartbeat.cancel()
                await agent.tools.aclose()
                await hooks.settle()
                # Buffered events go out before any outcome is written, so the terminal frame stays
                # last; a completed run stores them in the completing transaction instead.
                if not succeeded:
                    await hooks.flush()
        except asyncio.CancelledError:
            if self.stop_reason == "cancel":
                await db(self._finish)(Request.Status.CANCELLED, "Request cancelled", "cancelled", False)
                return "cancelled"
            if self.stop_reason == "lease_lost":
                return "lease_lost"
            raise
        except Park as park:
            await db(self._park)(park.reason)
            return f"parked:{park.reason}"
        except LLMError as exc:
            await db(self._finish)(Request.Status.FAILED, str(exc), exc.code, exc.transient)
            return "failed"
        except StructuredOutputError as exc:
            await db(self._finish)(Request.Status.FAILED, str(exc), StructuredOutputError.code, False)
            return "failed"
        except Exception as exc:
            logger.exception("request %s failed", req.pk)
            await db(self._finish)(Request.Status.FAILED, f"{type(exc).__name__}: {exc}", "INTERNAL_ERROR", True)
            return "failed"
        created = await db(self._complete)(result, hosted, *hooks.take())
        if created is None:
            return "lease_lost"
        await ring_for(req, hooks.take_unrung() + created)
        return "completed"

    async def heartbeat(self, task: asyncio.Task) -> None:
        """Renew the lease and watch for cancel; interrupt the run when either says stop."""
        renew_every = max(1.0, lease_seconds() / 3)
        last_renew = time.monotonic()
        while not task.done():
            await asyncio.sleep(HEARTBEAT_SECONDS)
            renew = time.monotonic() - last_renew >= renew_every
            try:
                state = await db(self._heartbeat_once)(renew)
            except Exception:
                logger.warning("heartbeat for %s failed", self.request.pk, exc_info=True)
                continue
            if renew:
                last_renew = time.monotonic()
            if state != "ok":
                self.stop_reason = state
                task.cancel()
                return

    def _heartbeat_once(self, renew: bool) -> str:
        qs = Request.objects.filter(pk=self.request.pk, lease_owner=self.owner)
        if renew and not qs.update(lease_expires_at=timezone.now() + timedelta(seconds=lease_seconds())):
            return "lease_lost"
        row = qs.values_list("cancel_requested", flat=True).first()
        if row is None:
            return "lease_lost"
        return "cancel" if row else "ok"

    # -- outcomes (sync, run in the db thread) --

    def _finish(self, status: str, error: str, code: str, retryable: bool) -> None:
        finish_request(self.request, status, error=error, error_code=code, retryable=retryable, lease_owner=self.owner)

    def _park(self, reason: str) -> None:
        status = Request.Status.AWAITING_INPUT if reason == "input" else Request.Status.AWAITING_SUBAGENT
        Request.objects.filter(pk=self.request.pk, lease_owner=self.owner).update(
            status=status, lease_owner="", lease_expires_at=None
        )
        # An answer (or the child's end) may have landed while we still held the lease, and its
        # enqueue found the request leased: look once more so the request cannot stall here.
        if parked_requests_ready(self.request.pk):
            enqueue_request(self.request.pk)

    def _complete(self, result: AgentResult, hosted: HostedAgent, steps: list, items: list) -> list | None:
        """Store the last steps and events, the outcome, the memory turn and the terminal
        event in one transaction; returns the new events, or None when the lease was lost."""
        req = self.request
        usage = result.usage
        now = timezone.now()
        turn = build_turn(req, result)
        response: dict[str, Any] = {"text": result.text, "signals": turn.signals, "metadata": turn.metadata}
        if result.structured_output is not None:
            response["structured_output"] = result.structured_output
        with transaction.atomic():
            # The outcome, and the seqs of the events appended below (the buffered ones, the
            # turn, the terminal event), in one statement.
            row = update_row(Request, {"pk": req.pk, "lease_owner": self.owner, "status": Request.Status.RUNNING},
                             values={"status": Request.Status.COMPLETED, "finished_at": now, "lease_owner": "",
                                     "lease_expires_at": None, "input_tokens": usage.input_tokens,
                                     "output_tokens": usage.output_tokens, "cache_read_tokens": usage.cache_read_tokens,
                                     "cache_write_tokens": usage.cache_write_tokens, "response": response},
                             add={"last_seq": len(items) + 2}, returning=("last_seq",))
            if row is None:
                return None
            store_steps(req, steps)
            total, last_in_session = Session.add_tokens(req.session_id, usage.total, now)
            turn.session_total_tokens = total
            insert_rows([turn])
            persisted = {"turn_id": str(turn.turn_id), "session_total_tokens": total, "token_usage": usage.to_dict()}
            completed = {**base_payload(req), "status": "completed", "trace_id": str(req.trace_id),
                         "turn_id": str(turn.turn_id), "response": response, "session_total_tokens": total}
            results = append_events(req, [
                *items,
                ("runtime.turn.persisted", persisted, "turn.persisted", None, "turn"),
                ("request.completed", completed, f"terminal.{req.run_attempt}", None, ""),
            ], ring=False, reserved_to=row[0])
            queued_behind = last_in_session > req.session_seq
            transaction.on_commit(lambda: after_terminal(req, queued_behind=queued_behind))
            from mash_runtime.compaction import schedule_auto_compaction

            schedule_auto_compaction(req, hosted, total)
        return [event for event, created in results if created]


def parked_requests_ready(request_id=None) -> list:
    """Parked requests (or just `request_id`) whose cause is gone: no pending question, no
    unfinished child. One query per kind of parking, whatever the number of requests."""
    pending = Interaction.objects.filter(request=OuterRef("pk"), status=Interaction.Status.PENDING)
    running_child = Request.objects.filter(parent=OuterRef("pk")).exclude(status__in=Request.TERMINAL)
    ready_input = Request.objects.filter(status=Request.Status.AWAITING_INPUT).exclude(Exists(pending))
    ready_child = Request.objects.filter(status=Request.Status.AWAITING_SUBAGENT).exclude(Exists(running_child))
    if request_id is not None:
        ready_input, ready_child = ready_input.filter(pk=request_id), ready_child.filter(pk=request_id)
    return [*ready_input.values_list("pk", flat=True), *ready_child.values_list("pk", flat=True)]


def prepare_run(req: Request, hosted: HostedAgent):
    """Everything a run needs from the database and the spec, in one trip to the db thread."""
    checkpoints = {} if getattr(req, "first_start", False) else load_checkpoints(req)
    return build_agent(hosted, req), load_history(req, hosted.config.conversation_history_turns), checkpoints


def load_checkpoints(req: Request) -> dict[str, dict[str, Any]]:
    return dict(StepCheckpoint.objects.filter(request=req).values_list("step_key", "output"))


def build_agent(hosted: HostedAgent, request: Request | None = None) -> Agent:
    """A fresh agent for one run: tools hold per-run state (a bash shell), so never share them.

    With `enable_runtime_tools()`, the memory tools are added, bound to `request` (its agent,
    session and event stream)."""
    tools = hosted.spec.build_tools()
    if hosted.spec.enable_runtime_tools():
        from mash_runtime.runtime_tools import register_runtime_tools

        register_runtime_tools(tools, hosted, request)
    suffix = ""
    host = get_host()
    if hosted.role == "primary" and host.subagent_ids:
        subagents = [host.get(i) for i in host.subagent_ids]
        tools.register(InvokeSubagentTool([s.agent_id for s in subagents]))
        suffix = routing_block(subagents)
    from mash_runtime.publishing import add_published_skills

    skills = add_published_skills(hosted.agent_id, hosted.spec.build_skills())
    return Agent(hosted.config, hosted.spec.build_llm(), tools, skills, system_suffix=suffix)
