"""Appending events: the one way frames enter a request's stream.

`append_event` writes the row (deduplicated by key), mirrors a subagent's events into
its parent's trace, and rings the doorbells once the transaction has committed.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from mash_runtime import doorbell
from mash_runtime.db import insert_rows
from mash_runtime.models import Request, RuntimeEvent, WorkflowRunEvent


def base_payload(request: Request) -> dict[str, Any]:
    return {
        "request_id": str(request.pk),
        "agent_id": request.agent.agent_id,
        "session_id": request.session.session_id,
    }


EventItem = tuple  # (event_type, payload, dedupe_key, loop_index, step_key)


def append_events(request: Request, items: list[EventItem], *, ring: bool = True, reserved_to: int | None = None,
                  along: list = ()) -> list[tuple[RuntimeEvent, bool]]:
    """Append events in one transaction; returns (event, created) per item.

    With `ring`, doorbells ring once after commit; callers inside the event loop pass
    False and ring there themselves, which saves a thread hop per append. `reserved_to`:
    see RuntimeEvent.append_many. `along`: rows of other models stored with the events
    (a run's checkpoints; one that exists already is kept).

    Outside a transaction, a request whose events need no mirroring takes the one-statement
    path when it can (RuntimeEvent.append_in_one_statement); otherwise, or when that says
    no, the ordinary one.
    """
    if reserved_to is None and not request.parent_id and not request.workflow_run_id:
        events = RuntimeEvent.append_in_one_statement(request, items, along=along)
        if events is not None:
            if events and ring:
                doorbell.ring(request.pk, events[-1].agent_id, events[-1].seq, events)
            return [(event, True) for event in events]
    # No savepoint: nobody recovers from a failed append inside a larger transaction, and
    # two savepoint statements per append were a measurable share of a run's round trips.
    with transaction.atomic(savepoint=False):
        if along:
            insert_rows(list(along), ignore_conflicts=True)
        results = RuntimeEvent.append_many(request, items, reserved_to=reserved_to)
        created = [event for event, was_created in results if was_created]
        if created and request.parent_id:
            _mirror_to_parent(request, created)
        if created and request.workflow_run_id:
            _mirror_to_run(request, created)
        if created and ring:
            last = created[-1]
            transaction.on_commit(lambda: doorbell.ring(request.pk, last.agent_id, last.seq, created))
    return results


def append_event(
    request: Request,
    event_type: str,
    payload: dict[str, Any],
    *,
    dedupe_key: str | None = None,
    loop_index: int | None = None,
    step_key: str = "",
) -> RuntimeEvent:
    return append_events(request, [(event_type, payload, dedupe_key, loop_index, step_key)])[0][0]


def _mirror_to_run(request: Request, events: list[RuntimeEvent]) -> None:
    meta = request.metadata or {}
    keys = {"workflow_id": meta.get("workflow_id"), "run_id": request.workflow_run_id,
            "task_id": meta.get("task_id"), "task_agent_id": request.agent.agent_id}
    rang = False
    for event in events:
        rang |= WorkflowRunEvent.append(request.workflow_run_id, event.event_type, {**event.wire_data(), **keys},
                                        f"req:{request.pk}:{event.seq}")
    if rang:
        run_id = request.workflow_run_id
        transaction.on_commit(lambda: doorbell.ring_run(run_id))


def _mirror_to_parent(child: Request, events: list[RuntimeEvent]) -> None:
    """One append to the parent for a batch of the child's events (one parent read)."""
    parent = Request.objects.select_related("agent", "session").get(pk=child.parent_id)
    items: list[EventItem] = []
    for event in events:
        data = {
            "agent_id": child.agent.agent_id,
            "primary_session_id": parent.session.session_id,
            "subagent_session_id": child.session.session_id,
            "request_id": str(child.pk),
            "event": event.event_type,
            "data": event.payload,
        }
        items.append((f"subagent.{event.event_type}", data, f"sub:{child.pk}:{event.seq}", event.loop_index,
                      event.step_key))
        # A child's question is the parent's question too: surface it as a first-class
        # interaction frame so a client that only follows the parent can answer it.
        if event.event_type in ("request.interaction.create", "request.interaction.ack"):
            surfaced = {**base_payload(parent), **{k: v for k, v in event.payload.items()
                                                   if k not in ("request_id", "agent_id", "session_id")}}
            surfaced["subagent_request_id"] = str(child.pk)
            surfaced["subagent_id"] = child.agent.agent_id
            items.append((event.event_type, surfaced, f"sub:{child.pk}:{event.seq}:surfaced", None, ""))
    append_events(parent, items)
