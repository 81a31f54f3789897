"""Doorbells: "something new for request X" on the channel layer, rung (`ring_async`,
`ring_run`, `TailBells`) and listened for (`Doorbell`, through one `_Bells` per event loop).

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
from channels.layers import get_channel_layer

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


# -- listening -----------------------------------------------------------------------------


class _Bells:
    """Every doorbell of one event loop's streams, received on one channel.

    A stream used to take a channel of its own (a Redis SUBSCRIBE when it opened, an
    UNSUBSCRIBE when it closed, and a task receiving on it) besides joining its group
    (another pair). Here one channel joins each group that has listeners in this
    process (channels_redis subscribes a group once per process, however many channels
    join it), and one task hands each message to the listeners of the group it names
    (mash_runtime.doorbell). The channel stays for the loop's life, listeners or not:
    dropping it with the last listener cost a SUBSCRIBE and an UNSUBSCRIBE per stream
    when streams came one at a time, and channels_redis's reader naps 0.1 s at a time
    while nothing is subscribed, so the first stream after a quiet spell got its
    doorbells up to 0.1 s late.

    One task receives for the channel's whole life: waiting with a timeout directly on
    `layer.receive` would cancel it at every timeout, and channels_redis treats a
    cancelled receive as the consumer leaving (it unsubscribes the channel, and
    doorbells rung before the next receive are dropped).
    """

    def __init__(self, layer) -> None:
        self.layer = layer
        self.channel: asyncio.Task | None = None  # resolves to the channel's name
        self.receiver: asyncio.Task | None = None
        self.listeners: dict[str, set[asyncio.Queue]] = {}

    async def join(self, group: str, inbox: asyncio.Queue) -> None:
        if self.channel is None:
            loop = asyncio.get_running_loop()
            self.channel = loop.create_task(self.layer.new_channel(prefix="bells."))
            self.receiver = loop.create_task(self._receive(self.channel))
        channel_task = self.channel
        try:
            channel = await channel_task
        except Exception:
            if self.channel is channel_task:
                self.channel = self.receiver = None  # the next stream tries again
            raise
        listeners = self.listeners.setdefault(group, set())
        listeners.add(inbox)
        if len(listeners) == 1:
            await self.layer.group_add(group, channel)

    async def leave(self, group: str, inbox: asyncio.Queue) -> None:
        listeners = self.listeners.get(group)
        if listeners is None or inbox not in listeners:
            return
        listeners.discard(inbox)
        if not listeners:
            del self.listeners[group]
            if self.channel is None:  # the receiver failed: the layer dropped the channel already
                return
            try:
                await self.layer.group_discard(group, await self.channel)
            except Exception:
                pass

    async def _receive(self, channel_task: asyncio.Task) -> None:
        try:
            channel = await channel_task
            while True:
                message = await self.layer.receive(channel)
                for inbox in self.listeners.get(message.get("group"), ()):
                    inbox.put_nowait(message)
        except asyncio.CancelledError:
            raise
        except Exception:  # the layer failed: streams go on polling, and a new listener starts afresh
            logger.warning("doorbell receiver stopped", exc_info=True)
            if self.receiver is asyncio.current_task():
                self.channel = self.receiver = None
                self.listeners.clear()


_listening: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Bells]" = weakref.WeakKeyDictionary()


def _loop_bells(layer) -> _Bells:
    loop = asyncio.get_running_loop()
    bells = _listening.get(loop)
    if bells is None or bells.layer is not layer:
        bells = _listening[loop] = _Bells(layer)
    return bells


class Doorbell:
    """A stream's wake-up signal: the doorbells of its groups, through the loop's `_Bells`."""

    def __init__(self, groups: list[str]):
        self.groups = groups
        self.layer = get_channel_layer()
        self.bells: _Bells | None = None
        self.inbox: asyncio.Queue = asyncio.Queue()

    async def __aenter__(self) -> "Doorbell":
        if self.layer is not None:
            bells = _loop_bells(self.layer)
            try:
                for group in self.groups:
                    await bells.join(group, self.inbox)
                self.bells = bells
            except Exception:  # no doorbell: the poll alone keeps the stream correct
                for group in self.groups:
                    await bells.leave(group, self.inbox)
        return self

    async def __aexit__(self, *exc) -> None:
        if self.bells is not None:
            for group in self.groups:
                try:
                    await self.bells.leave(group, self.inbox)
                except Exception:
                    pass

    async def wait(self, timeout: float) -> list[dict]:
        """The doorbells rung before the timeout passed (empty when none was)."""
        if self.bells is None or self.bells.receiver is None or self.bells.receiver.done():
            await asyncio.sleep(timeout)
            return []
        try:
            rung = [await asyncio.wait_for(self.inbox.get(), timeout)]
        except asyncio.TimeoutError:
            return []
        # Take the doorbells that piled up too: they are answered together.
        while not self.inbox.empty():
            rung.append(self.inbox.get_nowait())
        return rung
