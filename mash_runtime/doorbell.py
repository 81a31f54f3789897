"""Doorbells: "something new for request X" on the channel layer.

The database is the source of truth; a doorbell only wakes readers early. Losing one
(or having no cross-process layer at all, as with the in-memory default) delays a
frame until the reader's fallback poll, never loses it. So ringing never raises.

A request's doorbell also carries the events that were just committed (when they are
small), so a reader that is caught up sends them on without reading the database; a
reader that sees a gap reads the database as usual (mash_api.streams).
"""

from __future__ import annotations

import json
import logging

from asgiref.sync import async_to_sync

logger = logging.getLogger("mash_runtime.doorbell")

MESSAGE_TYPE = "mash.doorbell"


def request_group(request_id) -> str:
    return f"mash.req.{str(request_id).replace('-', '')}"


def agent_group(agent_id: str) -> str:
    return f"mash.agent.{agent_id}"[:99]


ALL_EVENTS_GROUP = "mash.events"


def run_group(run_id: str) -> str:
    # Run ids may hold characters group names may not (':'), so name the group by a digest.
    import hashlib

    return f"mash.run.{hashlib.sha1(run_id.encode()).hexdigest()}"


def ring_run(run_id: str) -> None:
    from channels.layers import get_channel_layer

    try:
        layer = get_channel_layer()
        if layer is not None:
            async_to_sync(layer.group_send)(run_group(run_id), {"type": MESSAGE_TYPE, "run_id": run_id})
    except Exception:
        logger.warning("doorbell for run %s failed", run_id, exc_info=True)


# Events ride along only while their payloads stay this small (bytes of JSON, all
# together); bigger batches ring a bare doorbell and readers fetch them.
CARRY_LIMIT = 32 * 1024
EVENT_FIELDS = ("id", "seq", "event_type", "agent_id", "session_id", "loop_index", "step_key", "created_at")


def carried_events(events) -> list[dict] | None:
    """The committed events as doorbell data, or None when they are too big to carry."""
    carried, size = [], 0
    for event in events:
        payload = json.dumps(event.payload, separators=(",", ":"))
        size += len(payload)
        if size > CARRY_LIMIT:
            return None
        carried.append({**{name: getattr(event, name) for name in EVENT_FIELDS},
                        "request_id": str(event.request_id), "trace_id": str(event.trace_id), "payload": payload})
    return carried


async def ring_async(request_id, agent_id: str, seq: int, events=()) -> None:
    """Ring after commit; `events` are the rows just committed (their seqs end at `seq`)."""
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    if layer is None:
        return
    message = {"type": MESSAGE_TYPE, "request_id": str(request_id), "agent_id": agent_id, "seq": seq}
    carried = carried_events(events) if events else None
    # Tails filter across requests and read the database anyway: they get the bare ring.
    rings = [(request_group(request_id), {**message, "events": carried} if carried else message),
             (agent_group(agent_id), message), (ALL_EVENTS_GROUP, message)]
    for group, sent in rings:
        try:
            await layer.group_send(group, sent)
        except Exception:  # a doorbell is an optimisation; the reader polls anyway
            logger.warning("doorbell for %s on %s failed", request_id, group, exc_info=True)


def ring(request_id, agent_id: str, seq: int, events=()) -> None:
    """Ring from sync code (call it after the event's transaction committed)."""
    try:
        async_to_sync(ring_async)(request_id, agent_id, seq, events)
    except Exception:
        logger.warning("doorbell for %s failed", request_id, exc_info=True)
