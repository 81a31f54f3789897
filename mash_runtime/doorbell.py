"""Doorbells: "something new for request X" on the channel layer.

The database is the source of truth; a doorbell only wakes readers early. Losing one
(or having no cross-process layer at all, as with the in-memory default) delays a
frame until the reader's fallback poll, never loses it. So ringing never raises.
"""

from __future__ import annotations

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


async def ring_async(request_id, agent_id: str, seq: int) -> None:
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    if layer is None:
        return
    message = {"type": MESSAGE_TYPE, "request_id": str(request_id), "agent_id": agent_id, "seq": seq}
    for group in (request_group(request_id), agent_group(agent_id), ALL_EVENTS_GROUP):
        try:
            await layer.group_send(group, message)
        except Exception:  # a doorbell is an optimisation; the reader polls anyway
            logger.warning("doorbell for %s on %s failed", request_id, group, exc_info=True)


def ring(request_id, agent_id: str, seq: int) -> None:
    """Ring from sync code (call it after the event's transaction committed)."""
    try:
        async_to_sync(ring_async)(request_id, agent_id, seq)
    except Exception:
        logger.warning("doorbell for %s failed", request_id, exc_info=True)
