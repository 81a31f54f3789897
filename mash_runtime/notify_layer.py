"""Doorbells across processes on PostgreSQL alone: a channel layer over LISTEN/NOTIFY.

Without Redis the channel layer was in-memory, so a worker's doorbell never reached the web
process and every stream learned of new events by polling the database (20 ms rising to
0.5 s): at one session that was most of a request's latency (bench/README.md). PostgreSQL
already connects every process, and NOTIFY is made for this.

Scope: this layer carries doorbells (mash_runtime.doorbell), which are hints: the database
stays the truth and a reader polls whatever happens here. So it is lean where a general
layer is not (channels_postgres stores each message and each group membership in tables:
three writes per doorbell): group memberships live in the process that holds them, every
message is one `pg_notify` on one PostgreSQL channel, every listening process hears all of
them and hands each to its own members of the message's group, and a message over
NOTIFY's 8,000 bytes goes without the events it carried (readers then read them) or not
at all.

A process listens once something in it joins a group (web processes); processes that only
ring (workers) never open a listening connection. Sending happens on one thread of the
process with a connection of its own, so it works from any event loop (the runner's, or the
short-lived loops of `async_to_sync`) and keeps rings in order.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
import uuid
import weakref
from typing import Any

from channels.layers import BaseChannelLayer

from mash_runtime import db

logger = logging.getLogger("mash_runtime.notify_layer")

CHANNEL = "mash_doorbell"
RECONNECT_SECONDS = (0.1, 0.5, 1.0, 2.0, 5.0)
START_SECONDS = 5.0  # how long joining a group waits for the listener to listen
SEND_SECONDS = 5.0  # how long a ring waits for its NOTIFY


class _Listener:
    """One event loop's listening connection and the members of groups on that loop."""

    def __init__(self, layer: PostgresNotifyLayer) -> None:
        self.layer = layer
        self.queues: dict[str, asyncio.Queue] = {}
        self.groups: dict[str, set[str]] = {}
        self.ready = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.failed: BaseException | None = None

    async def start(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._listen())
        if not self.ready.is_set():
            waiter = asyncio.ensure_future(self.ready.wait())
            # Bounded: a stream that cannot listen polls instead (its Doorbell joins nothing)
            # rather than wait for a database that may not come back soon.
            done, _ = await asyncio.wait({waiter, self.task}, timeout=START_SECONDS,
                                         return_when=asyncio.FIRST_COMPLETED)
            if waiter not in done:
                waiter.cancel()
                raise RuntimeError("the doorbell listener is not listening") from self.failed

    async def _listen(self) -> None:
        attempt = 0
        params = await asyncio.get_running_loop().run_in_executor(None, db.connect_params)
        while True:
            conn = None
            try:
                conn = await db.async_listen_connection(CHANNEL, params=params)
                attempt = 0
                self.ready.set()
                async for note in conn.notifies():
                    self._deliver(note.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failed = exc
                if not self.ready.is_set() and attempt == 0:
                    # The first join waits on this: fail it now, so its stream polls, and
                    # keep trying for the next ones.
                    logger.warning("doorbell listener: cannot listen on PostgreSQL: %s", exc)
                else:
                    logger.warning("doorbell listener lost its connection (%s); reconnecting", exc)
                self.ready.clear()
            finally:
                if conn is not None:
                    try:
                        await conn.close()
                    except Exception:
                        pass
            await asyncio.sleep(RECONNECT_SECONDS[min(attempt, len(RECONNECT_SECONDS) - 1)])
            attempt += 1

    def _deliver(self, payload: str) -> None:
        try:
            note = json.loads(payload)
            message = note["m"]
        except (ValueError, KeyError, TypeError):
            return  # not ours: some other NOTIFY on the channel
        if "c" in note:
            targets = [note["c"]] if note["c"] in self.queues else []
        else:
            targets = self.groups.get(note.get("g"), ())
        for channel in targets:
            queue = self.queues.get(channel)
            if queue is not None:
                if queue.qsize() >= self.layer.capacity:
                    continue  # a reader this far behind reads the database anyway
                queue.put_nowait(message)


class PostgresNotifyLayer(BaseChannelLayer):
    """A channels layer whose messages cross processes by PostgreSQL NOTIFY (module docstring)."""

    extensions = ("groups",)
    # mash_api.stream_readers polls slowly when doorbells cross processes.
    crosses_processes = True

    def __init__(self, expiry: int = 60, capacity: int = 1000, **kwargs: Any) -> None:
        super().__init__(expiry=expiry, capacity=capacity)
        self.prefix = uuid.uuid4().hex[:12]
        self._listeners: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Listener] = (
            weakref.WeakKeyDictionary())
        self._sender = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mash-notify")
        self._send_conn = None
        self._send_lock = threading.Lock()

    # -- sending --------------------------------------------------------------------------

    def _send_now(self, note: dict[str, Any]) -> None:
        message = note["m"]
        # Over NOTIFY's limit, a doorbell goes bare (readers then read the events themselves).
        bare = {**note, "m": {k: v for k, v in message.items() if k != "events"}} if "events" in message else None
        for attempt in (1, 2):
            try:
                if self._send_conn is None or self._send_conn.closed:
                    self._send_conn = db.sender_connection()
                if not db.notify_on(self._send_conn, CHANNEL, note) and not (
                        bare is not None and db.notify_on(self._send_conn, CHANNEL, bare)):
                    logger.debug("doorbell too big to send: %s", note.get("g") or note.get("c"))
                return
            except Exception as exc:
                if self._send_conn is not None:
                    try:
                        self._send_conn.close()
                    except Exception:
                        pass
                self._send_conn = None
                if attempt == 2:
                    raise
                logger.info("doorbell sender reconnecting: %s", exc)

    async def _send(self, note: dict[str, Any]) -> None:
        # Bounded too: a ring is a hint, and the run that rings must not wait on it for long.
        await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(self._sender, self._send_now, note),
                               SEND_SECONDS)

    async def group_send(self, group: str, message: dict) -> None:
        self.require_valid_group_name(group)
        await self._send({"g": group, "m": message})

    async def send(self, channel: str, message: dict) -> None:
        self.require_valid_channel_name(channel)
        await self._send({"c": channel, "m": message})

    # -- receiving ------------------------------------------------------------------------

    def _listener(self) -> _Listener:
        loop = asyncio.get_running_loop()
        listener = self._listeners.get(loop)
        if listener is None:
            listener = self._listeners[loop] = _Listener(self)
        return listener

    async def new_channel(self, prefix: str = "specific.") -> str:
        listener = self._listener()
        await listener.start()
        name = f"{prefix}{self.prefix}.{uuid.uuid4().hex}"
        listener.queues[name] = asyncio.Queue()
        return name

    async def receive(self, channel: str) -> dict:
        self.require_valid_channel_name(channel)
        listener = self._listener()
        queue = listener.queues.get(channel)
        if queue is None:
            queue = listener.queues[channel] = asyncio.Queue()
        return await queue.get()

    async def group_add(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        listener = self._listener()
        # Listening before this returns: a doorbell rung after a stream joined is never missed.
        await listener.start()
        listener.queues.setdefault(channel, asyncio.Queue())
        listener.groups.setdefault(group, set()).add(channel)

    async def group_discard(self, group: str, channel: str) -> None:
        listener = self._listener()
        members = listener.groups.get(group)
        if members is not None:
            members.discard(channel)
            if not members:
                del listener.groups[group]

    async def flush(self) -> None:
        for listener in list(self._listeners.values()):
            listener.queues.clear()
            listener.groups.clear()

    async def close(self) -> None:
        for listener in list(self._listeners.values()):
            if listener.task is not None:
                listener.task.cancel()
        self._listeners.clear()

    def close_connections(self) -> None:
        """Close this layer's connections from any thread (a test run's end, before its
        database is dropped): listeners stop on their loops, the sender closes its own."""
        for loop, listener in list(self._listeners.items()):
            if listener.task is not None and not loop.is_closed():
                loop.call_soon_threadsafe(listener.task.cancel)
        self._listeners.clear()
        self._sender.submit(self._close_sender).result(10)

    def _close_sender(self) -> None:
        if self._send_conn is not None:
            self._send_conn.close()
            self._send_conn = None
