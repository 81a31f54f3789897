"""One run of a claimed request, on the process's event loop: the agent loop with durable
hooks, and the outcome it leads to (completed, failed, cancelled, parked, released)."""

from __future__ import annotations

import asyncio
import logging

from mash_core.agent import AgentResult
from mash_core.errors import ConfigError
from mash_core.llm.base import LLMError
from mash_core.structured import StructuredOutputError
from mash_runtime import dbfaults, mcp_tools
from mash_runtime.host import get_host
from mash_runtime.models import Request
from mash_runtime.run import lifecycle
from mash_runtime.run.hooks import Db, DurableHooks, Park, Release, ring_for
from mash_runtime.run.prepare import prepare_run
from mash_runtime.run.state import Outcome, RunState, Stop

logger = logging.getLogger("mash_runtime.run")


async def execute(state: RunState, db: Db, draining=lambda: False) -> Outcome:
    """Run `state`'s request until it ends, parks or is handed back. The caller interrupts
    it by setting `state.stop` and cancelling `state.task`."""
    req = state.request

    async def fail(status: str, error: str, code: str, retryable: bool) -> None:
        state.finishing = True
        await db(lifecycle.finish_run)(state, status, error, code, retryable)

    if req.cancel_requested:
        await fail(Request.Status.CANCELLED, "Request cancelled", "cancelled", False)
        return Outcome.CANCELLED
    hosted = get_host().get(req.agent.agent_id)
    if hosted is None:
        await fail(Request.Status.FAILED, f"Agent '{req.agent.agent_id}' is not defined by this host",
                   "AGENT_NOT_FOUND", False)
        return Outcome.FAILED
    prepared = state.prepared or await db(prepare_run)(req, hosted, first_start=state.first_start)
    if state.stop is not None:  # asked to stop before the loop started
        return await stopped(state, db, fail)
    agent = prepared.agent
    hooks = DurableHooks(state, prepared.checkpoints, db=db, draining=draining)
    run = agent.run(req.message, history=prepared.history, structured_output=req.structured_output, hooks=hooks)
    if mcp_tools.has_mcp_servers(hosted):
        run = mcp_tools.with_mcp_tools(run, agent, hosted, hooks.emit, attempt=req.run_attempt)
    state.task = asyncio.get_running_loop().create_task(run)
    succeeded = False
    try:
        try:
            result: AgentResult = await state.task
            succeeded = True
        finally:
            await agent.tools.aclose()
            await hooks.settle()
            # Buffered events go out before any outcome is written, so the terminal frame stays
            # last; a completed run stores them in the completing transaction instead.
            if not succeeded:
                await hooks.flush()
    except asyncio.CancelledError:
        if state.stop is None:  # the loop itself is going away
            raise
        return await stopped(state, db, fail)
    except Release:
        await db(lifecycle.release)(state.owner, [state.key])
        return Outcome.RELEASED
    except Park as park:
        state.finishing = True
        await db(lifecycle.park)(state, park.outcome)
        return park.outcome
    except LLMError as exc:
        await fail(Request.Status.FAILED, str(exc), exc.code, exc.transient)
        return Outcome.FAILED
    except StructuredOutputError as exc:
        await fail(Request.Status.FAILED, str(exc), StructuredOutputError.code, False)
        return Outcome.FAILED
    except ConfigError as exc:  # the agent's definition is wrong (an MCP tool name clash): no retry helps
        await fail(Request.Status.FAILED, f"ConfigError: {exc}", "CONFIG_ERROR", False)
        return Outcome.FAILED
    except Exception as exc:
        if dbfaults.was_dropped(exc):
            return await handed_back(state, db, exc)
        logger.exception("request %s failed", req.pk)
        await fail(Request.Status.FAILED, f"{type(exc).__name__}: {exc}", "INTERNAL_ERROR", True)
        return Outcome.FAILED
    state.finishing = True
    try:
        created = await db(lifecycle.complete)(state, result, hosted, *hooks.take())
    except Exception as exc:
        if not dbfaults.was_dropped(exc):
            raise
        # Committed or not (the connection died on the way): if it did, the lease is gone and
        # nothing is handed back; if not, the next run replays every step but the last.
        return await handed_back(state, db, exc)
    if created is None:
        return Outcome.LEASE_LOST
    await ring_for(req, hooks.take_unrung() + created)
    return Outcome.COMPLETED


async def handed_back(state: RunState, db: Db, exc: BaseException) -> Outcome:
    """A database connection dropped under the run: that is no failure of the request. Its
    finished steps are stored (or are run again: whatever did not commit did not happen), so it
    is handed back (lease cleared, delivered again) and continues from its checkpoints at
    once, as a drained run does. If the database cannot take even that, the lease expires
    and the sweeper recovers it."""
    logger.warning("request %s: the database connection dropped (%s); handing it back", state.key,
                   " ".join(str(exc).split()))
    await db(lifecycle.release)(state.owner, [state.key])
    return Outcome.RELEASED


async def stopped(state: RunState, db: Db, fail) -> Outcome:
    """The outcome of a run the runner interrupted (`state.stop`)."""
    if state.stop == Stop.CANCEL:
        await fail(Request.Status.CANCELLED, "Request cancelled", "cancelled", False)
        return Outcome.CANCELLED
    if state.stop == Stop.LEASE_LOST:
        return Outcome.LEASE_LOST
    await db(lifecycle.release)(state.owner, [state.key])
    return Outcome.RELEASED
