"""Event readers shared by the SSE views and the WebSocket consumers.

One follow loop (`_follow`) serves every stream: a request's or a run's events (numbered
by `seq`, ending with their final event) and the tails of a table read by ascending id
(runtime events, the API request log). It replays rows after its cursor from the database,
then waits for a doorbell on the channel layer or for its fallback poll, whichever comes
first. The database is the truth; doorbells only make the wait short. Polls back off while
nothing happens (`Backoff`), so idle streams cost little and busy ones stay snappy even on
the in-memory layer, whose doorbells do not cross processes.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import OperationalError

from mash_api.connections import release_connection
from mash_runtime import tokens
from mash_runtime.conf import conf
from mash_runtime.doorbell import ALL_EVENTS_GROUP, Doorbell, agent_group, request_group
from mash_runtime.tokens import DELTA_EVENT
from mash_runtime.db import select_rows
from mash_runtime.models import Request, RuntimeEvent

logger = logging.getLogger("mash_api.stream_readers")

KEEPALIVE_SECONDS = 15.0
BATCH = 500
TERMINAL_EVENTS = ("request.completed", "request.error")


class Backoff:
    """How long a reader waits for a doorbell before it reads the database anyway.

    On the in-memory layer (SQLite) doorbells never cross processes, so the poll is the real
    delivery path: start at 20 ms, back off (x1.6) to 0.5 s while nothing happens. With Redis
    or PostgreSQL's NOTIFY the doorbell is the delivery path and the poll only covers a lost one (a Redis
    reconnect; the stream joins its group before its first read, so none is lost at the
    start), so it starts at 2 s and doubles up to 15 s, the keep-alive interval: a
    request whose model takes seconds then costs a read or two while it waits instead
    of one every few hundred milliseconds, and a thousand idle streams about seventy
    reads a second.
    """

    def __init__(self) -> None:
        # Redis, or PostgreSQL's NOTIFY (mash_runtime.notify_layer): doorbells cross processes.
        cross_process = bool(conf.REDIS_URL) or getattr(get_channel_layer(), "crosses_processes", False)
        self.floor = 2.0 if cross_process else 0.02
        self.growth = 2.0 if cross_process else 1.6
        self.ceiling = float(conf.STREAM_POLL_MAX or (15.0 if cross_process else 0.5))
        self.current = self.floor

    def reset(self) -> None:
        self.current = self.floor

    def next_wait(self) -> float:
        # +-25% jitter: streams opened together would otherwise poll together forever,
        # and a thousand reads arriving at once stall everything else the process serves.
        return self.current * random.uniform(0.75, 1.25)

    def after_wait(self, rung: bool) -> None:
        self.current = self.floor if rung else min(self.current * self.growth, self.ceiling)


class PollBackoff(Backoff):
    """For a table no doorbell rings for (the API request log): its poll is the delivery path
    on every layer, so it stays short: 50 ms growing x1.5 to `MASH_STREAM_POLL_MAX` (0.5 s)."""

    def __init__(self) -> None:
        self.floor = 0.05
        self.growth = 1.5
        self.ceiling = float(conf.STREAM_POLL_MAX or 0.5)
        self.current = self.floor


@dataclass
class Frame:
    """One stream item: an event, a token delta (`delta`, never stored: mash_runtime.tokens),
    or a keep-alive when both are None. `more` says another frame of the same batch follows
    at once, so a writer may send them together."""

    event: RuntimeEvent | None = None
    more: bool = False
    delta: dict | None = None


def batch(events) -> list[Frame]:
    frames = [Frame(event, more=True) for event in events]
    if frames:
        frames[-1].more = False
    return frames


def sse_frame(event: RuntimeEvent) -> str:
    data = json.dumps(event.wire_data(), separators=(",", ":"))  # ASCII-escaped, one line
    return f"id: {event.seq}\nevent: {event.stream_name}\ndata: {data}\n\n"


def sse_delta(delta: dict) -> str:
    # No `id:`: a delta is not a stored event, so Last-Event-ID never points at one.
    return f"event: {DELTA_EVENT}\ndata: {json.dumps(delta, separators=(',', ':'))}\n\n"


def ws_delta(delta: dict) -> dict[str, Any]:
    return {"event": DELTA_EVENT, "data": delta}


def ws_message(event: RuntimeEvent) -> dict[str, Any]:
    return {"id": event.seq, "event": event.stream_name, "data": event.wire_data()}


def _fetch_sequence(read, owner, finished_statuses, final_events, first: bool) -> tuple[list, bool]:
    """The next rows after a cursor (`read()`), and whether the sequence is over: its owner
    (request or run) has finished and either the last row read is a final event, or, on a
    stream's first read, nothing is left past the cursor. A resumed owner has a later run,
    so a final event alone never ends the stream."""
    try:
        events = read()
        finished = False
        if (not events and first) or (events and events[-1].event_type in final_events):
            finished = owner.values_list("status", flat=True).first() in finished_statuses
        return events, finished
    finally:
        release_connection()


def _fetch_request_events(request_id, cursor: int, first: bool = False) -> tuple[list[RuntimeEvent], bool]:
    return _fetch_sequence(
        lambda: select_rows(RuntimeEvent, {"request": request_id, "seq__gt": cursor}, order_by="seq", limit=BATCH),
        Request.objects.filter(pk=request_id), Request.TERMINAL, TERMINAL_EVENTS, first)


def latest_id(model) -> int:
    """Where a tail of `model`'s table opened now starts: take it before the client can see
    the stream open (a row committed after that must be delivered).

    Called by the view/consumer on the stream's thread, which then releases the connection.
    """
    try:
        return model.objects.order_by("-id").values_list("id", flat=True).first() or 0
    finally:
        release_connection()


def latest_event_id() -> int:
    return latest_id(RuntimeEvent)


# How long a hole below a tail's cursor is asked for again, and how many are kept.
GAP_SECONDS = 5.0
MAX_GAPS = 1000
# Ids just below where a tail starts that it watches too: a row taken before "now" may
# commit after it.
START_WINDOW = 256


class IdCursor:
    """A tail's place in a table read by ascending id, and the ids below it that may still
    show up.

    PostgreSQL hands out ids at insert but shows rows at commit, so a row can appear
    below a cursor that has already passed its id: a transaction that took id 10
    commits after one that took id 11 has been read. A read that passes a hole in the
    ids (no row at all has that id, whatever the tail's filter) keeps the missing ids and
    asks for them again on each read for GAP_SECONDS; their rows are sent when they
    show, late rather than never. A rolled-back insert's id never shows and is forgotten
    then. SQLite's writers take turns, so there the holes are only ever deletions.
    """

    def __init__(self, position: int | None = None) -> None:
        self.position = position
        self.started = False
        self.gaps: dict[int, float] = {}  # id -> when it was first missed

    def read(self, rows, batch: int = BATCH) -> list:
        """The rows of `rows` (a filtered queryset) that are new to this cursor, in id
        order, holes that filled first; the first read of a cursor without a position
        only takes "now"."""
        table = rows.model._base_manager
        newest = table.order_by("-id").values_list("id", flat=True).first() or 0
        if self.position is None:
            self.position = newest
        if not self.started:
            self.started = True
            self._note_holes(table, max(0, self.position - START_WINDOW), self.position)
        found = []
        now = time.monotonic()
        self.gaps = {pk: since for pk, since in self.gaps.items() if now - since < GAP_SECONDS}
        if self.gaps:
            filled = list(table.filter(id__in=list(self.gaps)).values_list("id", flat=True))
            for pk in filled:
                del self.gaps[pk]
            if filled:
                found += list(rows.filter(id__in=filled).order_by("id"))
        if newest > self.position:
            new = list(rows.filter(id__gt=self.position, id__lte=newest).order_by("id")[:batch])
            # Past the rows the filter left out too, but only up to `newest`: later rows are read next time.
            upto = new[-1].id if len(new) >= batch else newest
            self._note_holes(table, self.position, upto)
            self.position = upto
            found += new
        return found

    def _note_holes(self, table, low: int, high: int) -> None:
        """Keep the ids in (low, high] that no row has."""
        if high <= low or table.filter(id__gt=low, id__lte=high).count() == high - low:
            return
        present = set(table.filter(id__gt=low, id__lte=high).values_list("id", flat=True))
        now = time.monotonic()
        for pk in range(high, low, -1):  # the newest first: they are the likeliest to fill
            if len(self.gaps) >= MAX_GAPS:
                break
            if pk not in present:
                self.gaps.setdefault(pk, now)


def carried_frames(rung: list[dict], cursor: int) -> tuple[list[Frame], bool]:
    """The events the doorbells carried that follow `cursor` without a gap, and whether
    the database must still be read (a bell rang past them, or carried nothing)."""
    carried: dict[int, dict] = {}
    newest = cursor
    for message in rung:
        seq = message.get("seq")
        if not isinstance(seq, int):
            return [], True  # a bell that does not say how far: read
        newest = max(newest, seq)
        for fields in message.get("events") or ():
            carried[fields["seq"]] = fields
    events = []
    while cursor + 1 in carried:
        cursor += 1
        fields = carried[cursor]
        events.append(RuntimeEvent(**{**fields, "payload": json.loads(fields["payload"])}))
    return batch(events), newest > cursor


# The stored events that end an LLM step: a delta of that step arriving after one is stale.
STEP_STORED_EVENTS = ("llm.request.complete", "runtime.llm.think.completed")


class _Sequence:
    """What `_follow` reads for rows numbered by `seq` (a request's events, a run's):
    `fetch(cursor, first) -> (rows, finished)`; the doorbells of its group carry its newest
    rows, so a caught-up reader needs no read."""

    def __init__(self, fetch, group: str, after: int, final_events=(), tokens_of=None) -> None:
        self.fetch = fetch
        self.groups = [group]
        self.cursor = after
        self.first = True
        self.final_events = final_events
        self.tokens_of = tokens_of

    def read(self) -> tuple[list, bool]:
        rows, finished = self.fetch(self.cursor, self.first)
        self.first = False
        return rows, finished

    def advance(self, frame: Frame) -> None:
        self.cursor = frame.event.seq

    def carried(self, rung: list[dict]) -> tuple[list[Frame], bool]:
        return carried_frames(rung, self.cursor)

    def read_again(self, rows: list) -> bool:
        return len(rows) >= BATCH  # more may be waiting; anything committed later rings


class _Table:
    """What `_follow` reads for a tail: the rows of `rows` (a filtered queryset) by ascending id
    (`IdCursor`) after `after_id` (default: "now", at the first read); never finished. Its
    doorbells only wake it."""

    final_events = ()
    tokens_of = None

    def __init__(self, rows, after_id: int | None, groups: list[str], batch_size: int = BATCH) -> None:
        self.rows = rows
        self.cursor = IdCursor(after_id)
        self.groups = groups
        self.batch_size = batch_size

    def read(self) -> tuple[list, bool]:
        try:
            return self.cursor.read(self.rows, self.batch_size), False
        finally:
            release_connection()

    def advance(self, frame: Frame) -> None:
        pass  # the cursor moved as it read

    def carried(self, rung: list[dict]) -> tuple[list[Frame], bool]:
        return [], True

    def read_again(self, rows: list) -> bool:
        return bool(rows)  # tails' rings are throttled: read on while rows keep coming


async def _follow(source, backoff: Backoff) -> AsyncIterator[Frame]:
    """The one follow loop: rows from `source` (`_Sequence` or `_Table`) as they commit, a
    keep-alive frame every KEEPALIVE_SECONDS while idle; ends right after a sequence's final
    row (or at once when resumed past it). With `source.tokens_of` (a request id), the token
    deltas of its running steps come in between."""
    tokens_of = source.tokens_of
    last_sent = time.monotonic()
    read = True
    stored_steps: set[str] = set()

    def seen(frame: Frame) -> Frame:
        source.advance(frame)
        if tokens_of is not None and frame.event.event_type in STEP_STORED_EVENTS:
            stored_steps.add(frame.event.step_key)
        return frame

    if tokens_of is not None:
        await tokens.mark_listening(tokens_of)
    async with Doorbell(source.groups) as bell:
        while True:
            if read:
                try:
                    rows, finished = await sync_to_async(source.read)()
                except OperationalError as exc:
                    # The database is the truth and the cursor has not moved: read again after
                    # the wait, rather than end a stream the client cannot tell from a finished one.
                    logger.warning("stream read failed, retrying: %s", " ".join(str(exc).split()))
                    rows, finished = [], False
                for frame in batch(rows):
                    yield seen(frame)
                if finished:
                    return
                if rows:
                    last_sent = time.monotonic()
                    backoff.reset()
                    if source.read_again(rows):
                        continue
            if time.monotonic() - last_sent >= KEEPALIVE_SECONDS:
                last_sent = time.monotonic()
                if tokens_of is not None:
                    await tokens.mark_listening(tokens_of)
                yield Frame(None)
            rung = await bell.wait(min(backoff.next_wait(), KEEPALIVE_SECONDS - (time.monotonic() - last_sent)))
            deltas = [m["delta"] for m in rung if "delta" in m]
            if deltas:
                rung = [m for m in rung if "delta" not in m]
                if tokens_of is not None:
                    for delta in deltas:
                        if delta.get("step_key") not in stored_steps:
                            yield Frame(delta=delta)
                    last_sent = time.monotonic()
                if not rung:
                    read = False  # text of a running step: nothing new is stored yet
                    continue
            backoff.after_wait(bool(rung))
            # A caught-up reader sends what the doorbells carried; the database is read when
            # they skipped something, carried nothing, or none rang (the fallback poll).
            frames, read = source.carried(rung) if rung else ([], True)
            for frame in frames:
                yield seen(frame)
            if frames:
                last_sent = time.monotonic()
                backoff.reset()
                # Carried events were committed a moment ago, the terminal one with its
                # request's final state: no status read is needed to end the stream.
                if frames[-1].event.event_type in source.final_events:
                    return


def request_frames(request_id, after: int = 0, *, tokens: bool = False) -> AsyncIterator[Frame]:
    """Frames of one request after seq `after`, ending right after its terminal event; with
    `tokens`, also the deltas of its running LLM steps (`agent.delta`)."""
    source = _Sequence(lambda cursor, first: _fetch_request_events(request_id, cursor, first),
                       request_group(request_id), after, TERMINAL_EVENTS, tokens_of=request_id if tokens else None)
    return _follow(source, Backoff())


def table_frames(rows, after_id: int | None = None, *, groups: list[str] | None = None,
                 backoff: Backoff | None = None, batch_size: int = BATCH) -> AsyncIterator[Frame]:
    """Every new row of `rows` (a filtered queryset of a table read by ascending id) after id
    `after_id` (default: from the first read on, i.e. "now"); never ends. Without `groups`
    no doorbell wakes it: give it a `PollBackoff`."""
    return _follow(_Table(rows, after_id, groups or [], batch_size), backoff or Backoff())


def tail_frames(agent_id: str | None = None, session_id: str | None = None,
                trace_id: str | None = None, after_id: int | None = None) -> AsyncIterator[Frame]:
    """Every new event of the host (or one agent/session/trace) after event id `after_id`
    (default: from the first read on, i.e. "now"); never ends."""
    filters: dict[str, str] = {}
    if agent_id:
        filters["agent_id"] = agent_id
    if session_id:
        filters["session_id"] = session_id
    if trace_id:
        filters["trace_id"] = trace_id
    groups = [agent_group(agent_id)] if agent_id else [ALL_EVENTS_GROUP]
    return table_frames(RuntimeEvent.objects.filter(**filters), after_id, groups=groups)


RUN_TERMINAL_EVENTS = ("workflow.completed", "workflow.error")


def _fetch_run_events(run_id: str, cursor: int, first: bool = False):
    from mash_runtime.models import WorkflowRun, WorkflowRunEvent

    rows = WorkflowRunEvent.objects.filter(run_id=run_id, seq__gt=cursor).order_by("seq")
    return _fetch_sequence(lambda: list(rows[:BATCH]), WorkflowRun.objects.filter(pk=run_id), WorkflowRun.TERMINAL,
                           RUN_TERMINAL_EVENTS, first)


def run_sse_frame(event) -> str:
    data = json.dumps(event.payload, separators=(",", ":"))
    return f"id: {event.seq}\nevent: {event.stream_name}\ndata: {data}\n\n"


async def run_frames(run_id: str, after: int = 0):
    """SSE text of a workflow run after seq `after`, ending right after its final workflow event."""
    from mash_runtime.doorbell import run_group

    frames = _follow(_Sequence(lambda cursor, first: _fetch_run_events(run_id, cursor, first), run_group(run_id),
                               after), Backoff())
    async for frame in frames:
        yield run_sse_frame(frame.event) if frame.event is not None else ": keep-alive\n\n"
