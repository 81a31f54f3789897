"""A request's lifecycle: the only code that writes a request's status and lease.

`accepted -> (waiting) -> running -> (awaiting_input | awaiting_subagent -> running)* ->
completed | failed | cancelled`. Each move is one conditional UPDATE, so whoever moves
the row first wins and everyone else learns it from the row count:

- `claim`: take the lease (not finished, lease free or expired, nothing unfinished earlier
  in its session: that last condition is session order) and append `request.started`.
- `mark_waiting`: a request behind an unfinished earlier one says so, once.
- `park`: free the lease while a person or a child request is awaited.
- `complete`, `finish`: the outcome and the one terminal event.
- `release`: a draining process hands runs back (the lease cleared, the request delivered
  again), so another process continues at once instead of after the lease expires.
- `heartbeat`: one process renews the leases of all its runs in one statement and reads
  their cancel flags in the same trip.
- `take_back`: the sweeper frees the lease of a run whose owner died.
- `reopen`, `request_cancel`: resume and cancel from the API.

Everything here is synchronous ORM work; the runner calls it on its database threads.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import Exists, F, OuterRef
from django.utils import timezone

from mash_runtime.memory.compaction import schedule_auto_compaction
from mash_runtime.conf import conf
from mash_runtime.events import append_event, append_events, base_payload
from mash_runtime.host import get_host
from mash_runtime.memory.history import build_turn
from mash_runtime.db import (claim_first_start, complete_in_one_statement, history_statement, insert_rows,
                             is_postgresql, mark_stored, published_skills_statement, select_rows, take_lease, update_row)
from mash_runtime.models import (Interaction, MemoryTurn, PublishedSkill, Request, RuntimeEvent, Session,
                                 keys_are_new)
from mash_runtime.queue import enqueue_advance, enqueue_request
from mash_runtime.run.checkpoints import checkpoint_rows, store_steps
from mash_runtime.run.prepare import prepare_run
from mash_runtime.run.state import Outcome, RunState
from mash_runtime.signals import request_terminal


def new_lease_owner() -> str:
    """A lease owner name: `host:pid:token`. The sweeper reads the host and pid back to
    recover at once the leases of a dead process on its own host."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def lease_seconds() -> int:
    return int(conf.LEASE_SECONDS)


# -- claim -------------------------------------------------------------------------------


def _take_lease(request_id, owner: str, now) -> int | None:
    """The claim's UPDATE (db.take_lease): running under `owner`'s lease, the started event's
    seq reserved; the request's last_seq after that, or None when it may not run now."""
    return take_lease(Request, request_id, owner, now, lease_seconds())


def claim(request_id: str, owner: str) -> RunState | Outcome:
    """Take the lease, or say why not; a run that will go ahead comes back with what it
    needs from the database (`RunState.prepared`), all in one trip to a database thread."""
    state = _claim(request_id, owner)
    if isinstance(state, RunState) and not state.request.cancel_requested:
        hosted = get_host().get(state.request.agent.agent_id)
        if hosted is not None:
            state.prepared = prepare_run(state.request, hosted, first_start=state.first_start, reads=state.reads)
    return state


def _claim(request_id: str, owner: str, _retry: bool = True) -> RunState | Outcome:
    now = timezone.now()
    if _retry and (state := _claim_first_start(request_id, owner, now)) is not None:
        return state
    with transaction.atomic():
        reserved_to = _take_lease(request_id, owner, now)
        found = select_rows(Request, {"pk": request_id}, related=("agent", "session"))
        if not found:
            return Outcome.MISSING
        req = found[0]
        if reserved_to is not None:
            req.last_seq = reserved_to - 1  # as before the reservation: the append below takes it
            first_start = req.started_at == now
            # The run appends through this object: let it keep its stream's keys. Started for the
            # first time, its stream holds only "accepted".
            req._event_keys = ({"accepted"} if first_start and req.last_seq == 1
                               else RuntimeEvent.stream_keys(req.pk))
            state = RunState(request=req, owner=owner, first_start=first_start)
            if not req.cancel_requested and get_host().get(req.agent.agent_id) is not None:
                # Appended in the claim's transaction (one commit less per run); rung with the
                # run's first write.
                results = append_events(req, [("request.started", {**base_payload(req), "status": "started"},
                                                f"started.{req.run_attempt}", None, "")], ring=False,
                                        reserved_to=reserved_to)
                state.claim_events = [event for event, created in results if created]
            else:
                update_row(Request, {"pk": req.pk}, add={"last_seq": -1})  # no started event: give the seq back
            return state
    if req.is_terminal:
        return Outcome.FINISHED
    if req.lease_owner and req.lease_expires_at and req.lease_expires_at >= now:
        return Outcome.LEASED
    if mark_waiting(req):
        return Outcome.WAITING
    # The request ahead finished between the UPDATE and the check: try once more.
    return _claim(request_id, owner, _retry=False) if _retry else Outcome.WAITING


def _claim_first_start(request_id: str, owner: str, now) -> RunState | None:
    """The usual claim (a first start, nothing in the way) in one statement on PostgreSQL
    (db.claim_first_start); None when it did not apply, and `_claim`'s transaction decides."""
    if not is_postgresql():
        return None
    created_at = time.time()
    host = get_host()
    # The run's reads go along: the history as long as the longest any hosted agent keeps
    # (prepare_run keeps this agent's), and the published skills.
    longest = max(hosted.config.conversation_history_turns for hosted in host.agents.values())
    reads = [history_statement(MemoryTurn, Request, longest, of_request=request_id),
             published_skills_statement(PublishedSkill, of_request=request_id, request_model=Request)]
    found = claim_first_start(Request, RuntimeEvent, request_id, owner, now, lease_seconds(), list(host.agents),
                              created_at, reads)
    if found is None:
        return None
    req, event_pk, read = found
    # The row the statement inserted, as the ordinary path's append makes it (for the ring).
    started = RuntimeEvent._new(req, req.last_seq, ("request.started", {**base_payload(req), "status": "started"},
                                                    f"started.{req.run_attempt}", None, ""))
    started.pk, started.created_at = event_pk, created_at
    mark_stored([started], req._state.db)
    # A first start's stream holds "accepted" (and "waiting" when it queued behind another).
    req._event_keys = ({"accepted", started.dedupe_key} if req.last_seq == 2
                       else RuntimeEvent.stream_keys(req.pk))
    state = RunState(request=req, owner=owner, first_start=True, reads=tuple(read))
    state.claim_events = [started]
    return state


def mark_waiting(req: Request) -> bool:
    """If an earlier request of its session has not ended, say `request.waiting` (once) and
    return True."""
    with transaction.atomic():
        blocked = (
            Request.objects.filter(session_id=req.session_id, session_seq__lt=req.session_seq)
            .exclude(status__in=Request.TERMINAL)
            .exists()
        )
        if not blocked:
            return False
        Request.objects.filter(pk=req.pk, status=Request.Status.ACCEPTED).update(status=Request.Status.WAITING)
        payload = {**base_payload(req), "status": "waiting", "reason": "session_busy"}
        append_event(req, "request.waiting", payload, dedupe_key="waiting")
        return True


# -- while it runs -------------------------------------------------------------------------


def heartbeat(owner: str, request_ids: list[str], renew: bool) -> dict[str, bool]:
    """For the runs this process holds: renew their leases (with `renew`: one UPDATE for
    all) and read, in the same trip, which of them it still holds and which were asked to
    cancel. Returns {request id: cancel requested}; a run missing from it lost its lease."""
    held = Request.objects.filter(pk__in=request_ids, lease_owner=owner, status=Request.Status.RUNNING)
    if renew:
        held.update(lease_expires_at=timezone.now() + timedelta(seconds=lease_seconds()))
    return {str(pk): cancel for pk, cancel in held.values_list("pk", "cancel_requested")}


def park(state: RunState, outcome: Outcome) -> None:
    """Free the lease while the request waits for an answer or a child request."""
    status = Request.Status.AWAITING_INPUT if outcome == Outcome.PARKED_INPUT else Request.Status.AWAITING_SUBAGENT
    Request.objects.filter(pk=state.request.pk, lease_owner=state.owner).update(
        status=status, lease_owner="", lease_expires_at=None
    )
    # An answer (or the child's end) may have landed while we still held the lease, and its
    # enqueue found the request leased: look once more so the request cannot stall here.
    if parked_requests_ready(state.request.pk):
        enqueue_request(state.request.pk)


def release(owner: str, request_ids: list[str]) -> list[str]:
    """Hand runs back: the lease cleared (the status stays running, so the request keeps its
    place in its session) and each delivered again for another process to continue from
    its checkpoints. Returns the ids this owner still held."""
    released = [str(pk) for pk in Request.objects.filter(pk__in=request_ids, lease_owner=owner)
                .values_list("pk", flat=True)]
    if released:
        Request.objects.filter(pk__in=released, lease_owner=owner).update(lease_owner="", lease_expires_at=None)
        for pk in released:
            enqueue_request(pk)
    return released


def take_back(req: Request) -> bool:
    """Free the lease of a run whose owner is gone (the sweeper's call), counting the
    recovery; False when the owner changed meanwhile."""
    return bool(Request.objects.filter(pk=req.pk, lease_owner=req.lease_owner).update(
        lease_owner="", lease_expires_at=None, recovery_attempts=F("recovery_attempts") + 1
    ))


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


# -- outcomes ------------------------------------------------------------------------------


def complete(state: RunState, result, hosted, steps: list, items: list) -> list | None:
    """Store the last steps and events, the outcome, the memory turn and the terminal
    event in one transaction; returns the new events, or None when the lease was lost."""
    req = state.request
    usage = result.usage
    now = timezone.now()
    turn = build_turn(req, result)
    response: dict[str, Any] = {"text": result.text, "signals": turn.signals, "metadata": turn.metadata}
    if result.structured_output is not None:
        response["structured_output"] = result.structured_output
    where = {"pk": req.pk, "lease_owner": state.owner, "status": Request.Status.RUNNING}
    outcome = {"status": Request.Status.COMPLETED, "finished_at": now, "lease_owner": "", "lease_expires_at": None,
               "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
               "cache_read_tokens": usage.cache_read_tokens, "cache_write_tokens": usage.cache_write_tokens,
               "response": response}
    if (created := _complete_in_one_statement(state, where, outcome, steps, items, turn, usage, now,
                                              hosted)) is not None:
        return created
    with transaction.atomic():
        # The outcome, and the seqs of the events appended below (the buffered ones, the
        # turn, the terminal event), in one statement.
        row = update_row(Request, where, values=outcome, add={"last_seq": len(items) + 2}, returning=("last_seq",))
        if row is None:
            return None
        store_steps(req, steps)
        total, last_in_session = Session.add_tokens(req.session_id, usage.total, now)
        turn.session_total_tokens = total
        insert_rows([turn])
        results = append_events(req, [*items, *_completion_events(req, turn, usage, response, total)],
                                ring=False, reserved_to=row[0])
        queued_behind = last_in_session > req.session_seq
        transaction.on_commit(lambda: after_terminal(req, queued_behind=queued_behind))
        schedule_auto_compaction(req, hosted, total)
    return [event for event, created in results if created]


def _completion_events(req: Request, turn, usage, response: dict[str, Any], total: int) -> list[tuple]:
    """The turn's and the terminal event of a completed run, with the session's new total."""
    persisted = {"turn_id": str(turn.turn_id), "session_total_tokens": total, "token_usage": usage.to_dict()}
    completed = {**base_payload(req), "status": "completed", "trace_id": str(req.trace_id),
                 "turn_id": str(turn.turn_id), "response": response, "session_total_tokens": total}
    return [("runtime.turn.persisted", persisted, "turn.persisted", None, "turn"),
            ("request.completed", completed, f"terminal.{req.run_attempt}", None, "")]


def _complete_in_one_statement(state: RunState, where: dict[str, Any], outcome: dict[str, Any], steps: list,
                               items: list, turn, usage, now, hosted) -> list | None:
    """`complete`'s usual case in one statement on PostgreSQL (db.complete_in_one_statement):
    events nobody mirrors, none of whose keys the stream holds, and nobody else appended
    since the run last did. None: not applicable or not matched, nothing written, and
    `complete`'s transaction decides (it also tells a lost lease)."""
    req = state.request
    known = getattr(req, "_event_keys", None)
    if req.parent_id or req.workflow_run_id or known is None:
        return None
    # The total is the database's: the statement writes it into these payloads and the turn.
    added = [*items, *_completion_events(req, turn, usage, outcome["response"], 0)]
    keys = [item[2] for item in added if item[2] is not None]
    if not keys_are_new(known, keys):
        return None
    events = [RuntimeEvent._new(req, req.last_seq + offset, item) for offset, item in enumerate(added, 1)]
    done = complete_in_one_statement(req, where, outcome, events, checkpoint_rows(req, steps), turn, usage.total,
                                     now, [event.seq for event in events[-2:]])
    if done is None:
        return None
    total, last_in_session, ids = done
    for event, pk in zip(events, ids):
        event.pk = pk
    for event in events[-2:]:
        event.payload["session_total_tokens"] = total
    turn.session_total_tokens = total
    mark_stored([*events, turn], req._state.db)
    req.last_seq = events[-1].seq
    known.update(keys)
    # Committed already: what `complete` defers to its commit happens now.
    schedule_auto_compaction(req, hosted, total)
    after_terminal(req, queued_behind=last_in_session > req.session_seq)
    return events


def finish(
    req: Request,
    status: str,
    *,
    error: str = "",
    error_code: str = "",
    retryable: bool = False,
    only_from: tuple[str, ...] | None = None,
    lease_owner: str | None = None,
) -> bool:
    """Move a request to a terminal state and append its one terminal event.

    The conditional UPDATE is the guard: whoever moves the row first writes the
    terminal event; everyone else gets False and writes nothing.
    """
    with transaction.atomic():
        qs = Request.objects.filter(pk=req.pk).exclude(status__in=Request.TERMINAL)
        if only_from is not None:
            qs = qs.filter(status__in=only_from)
        if lease_owner is not None:
            qs = qs.filter(lease_owner=lease_owner)
        now = timezone.now()
        changed = qs.update(
            status=status, error=error, error_code=error_code, retryable=retryable, finished_at=now,
            lease_owner="", lease_expires_at=None,
        )
        if not changed:
            return False
        req.refresh_from_db()
        Interaction.objects.filter(request=req, status=Interaction.Status.PENDING).update(
            status=Interaction.Status.CANCELLED, answered_at=now
        )
        payload = {**base_payload(req), "status": "error", "error": error, "error_code": error_code,
                   "retryable": retryable}
        append_event(req, "request.error", payload, dedupe_key=f"terminal.{req.run_attempt}")
        transaction.on_commit(lambda: after_terminal(req))
    return True


def finish_run(state: RunState, status: str, error: str, code: str, retryable: bool) -> None:
    finish(state.request, status, error=error, error_code=code, retryable=retryable, lease_owner=state.owner)


def after_terminal(req: Request, queued_behind: bool = True) -> None:
    """Wake what waited on this request: the next one of its session, and a parent.

    `queued_behind=False` says the session had no later request when this one ended.
    """
    request_terminal.send_robust(sender=Request, request=req)  # observers (OpenTelemetry export)
    nxt = (
        Request.objects.filter(session_id=req.session_id, session_seq__gt=req.session_seq)
        .exclude(status__in=Request.TERMINAL)
        .order_by("session_seq")
        .values_list("pk", flat=True)
        .first()
    ) if queued_behind else None
    if nxt is not None:
        enqueue_request(nxt)
    if req.parent_id:
        enqueue_request(req.parent_id)
    if req.workflow_run_id:
        enqueue_advance(req.workflow_run_id)


# -- from the API --------------------------------------------------------------------------


def request_cancel(req: Request) -> None:
    """Flag a running request: the heartbeat of the process running it interrupts the LLM
    or tool call under way."""
    Request.objects.filter(pk=req.pk).exclude(status__in=Request.TERMINAL).update(cancel_requested=True)


def reopen(req: Request) -> bool:
    """A failed or cancelled request back to accepted, as a new attempt (its own started
    and terminal events); False when someone changed it first."""
    return bool(Request.objects.filter(pk=req.pk, status=req.status).update(
        status=Request.Status.ACCEPTED, error="", error_code="", retryable=False, cancel_requested=False,
        finished_at=None, run_attempt=F("run_attempt") + 1, lease_owner="", lease_expires_at=None,
    ))
