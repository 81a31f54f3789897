"""Doorbells: "something new for request X" on the channel layer.

The database is the source of truth; a doorbell only wakes readers early. Losing one
(or having no cross-process layer at all, as with the in-memory default) delays a
frame until the reader's fallback poll, never loses it. So ringing never raises.

Every doorbell names the group it was rung for (`group`): a web process receives all
of its streams' doorbells on one channel and sorts them by that (mash_api.stream_readers).

A request's doorbell also carries the events that were just committed (when they are
small), so a reader that is caught up sends them on without reading the database; a
reader that sees a gap reads the database as usual (mash_api.stream_readers).
"""

from __future__ import annotations

import asyncio
import json
import logging
import weakref

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
            group = run_group(run_id)
            async_to_sync(layer.group_send)(group, {"type": MESSAGE_TYPE, "group": group, "run_id": run_id})
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
    try:
        group = request_group(request_id)
        await layer.group_send(group, {**message, "group": group, **({"events": carried} if carried else {})})
    except Exception:  # a doorbell is an optimisation; the reader polls anyway
        logger.warning("doorbell for %s failed", request_id, exc_info=True)
    # Tails filter across requests and read the database anyway: a bare ring, throttled.
    for group in (agent_group(agent_id), ALL_EVENTS_GROUP):
        await _tail_bells().ring(layer, group, message)


TAIL_RING_SECONDS = 0.1


class TailBells:
    """Rings for tails (an agent's group, all events), at most one per group per
    TAIL_RING_SECONDS: a tail wakes, then reads everything new, so ringing it for every
    commit of every request was two publishes per commit for nothing. A ring that comes
    too soon is sent when the interval ends, so a tail learns of a commit within it."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}
        self.held: dict[str, tuple[object, dict]] = {}
        self.timers: dict[str, asyncio.Task] = {}

    async def ring(self, layer, group: str, message: dict) -> None:
        loop = asyncio.get_running_loop()
        wait = self.last.get(group, float("-inf")) + TAIL_RING_SECONDS - loop.time()
        if wait <= 0 and group not in self.timers:
            await self._send(layer, group, message)
            return
        self.held[group] = (layer, message)
        if group not in self.timers:
            self.timers[group] = loop.create_task(self._send_later(group, max(wait, 0.0)))

    async def _send_later(self, group: str, wait: float) -> None:
        await asyncio.sleep(wait)
        self.timers.pop(group, None)
        layer, message = self.held.pop(group)
        await self._send(layer, group, message)

    async def _send(self, layer, group: str, message: dict) -> None:
        self.last[group] = asyncio.get_running_loop().time()
        try:
            await layer.group_send(group, {**message, "group": group})
        except Exception:
            logger.warning("doorbell on %s failed", group, exc_info=True)

    async def flush(self) -> None:
        """Send held rings now (a draining worker calls this before its loop stops)."""
        for group in list(self.held):
            held = self.held.pop(group, None)
            if held is None:
                # Its timer fired while an earlier send of this loop awaited, and is sending it.
                # (Cancelling that timer lost the ring; the old per-task flush failed with a
                # KeyError instead.)
                continue
            timer = self.timers.pop(group, None)
            if timer is not None:
                timer.cancel()  # still asleep: a woken timer takes its held ring at once
            await self._send(held[0], group, held[1])


_bells: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, TailBells]" = weakref.WeakKeyDictionary()


def _tail_bells() -> TailBells:
    loop = asyncio.get_running_loop()
    bells = _bells.get(loop)
    if bells is None:
        bells = _bells[loop] = TailBells()
    return bells


async def flush_tail_rings() -> None:
    await _tail_bells().flush()


def ring(request_id, agent_id: str, seq: int, events=()) -> None:
    """Ring from sync code (call it after the event's transaction committed)."""
    try:
        async_to_sync(ring_async)(request_id, agent_id, seq, events)
    except Exception:
        logger.warning("doorbell for %s failed", request_id, exc_info=True)
