"""SSE: a request's event stream (replay, cursors, interactions while open) and the telemetry tail."""

from __future__ import annotations

import asyncio
import json

import pytest
from asgiref.sync import async_to_sync, sync_to_async

from mash_runtime.models import Interaction
from tests.api.conftest import assert_error, data, parse_sse, post_json, read_stream, script, tool

UNKNOWN_RID = "00000000-0000-4000-8000-000000000000"
TRACE_KEYS = {"event_type", "trace_id", "session_id", "loop_index", "step_key", "created_at", "payload"}


def submit(api, message, **body) -> str:
    return data(post_json(api, "/api/v1/agent/primary/request", {"message": message, **body}), 202)["request_id"]


async def drain_elsewhere(engine):
    """Run the captured tasks in a plain worker thread, as a worker process would, while the
    stream stays open here (the engine runs its own event loop, so not on this thread)."""
    return await asyncio.get_running_loop().run_in_executor(None, engine.drain)


def events_url(rid, agent="primary", prefix="/api/v1/agent", word="request") -> str:
    return f"{prefix}/{agent}/{word}/{rid}/events"


def stream(api, url, **headers) -> list[dict]:
    response = api.get(url, **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "text/event-stream"
    assert response["Cache-Control"] == "no-cache"
    return parse_sse(read_stream(response))


@pytest.mark.parametrize("prefix,word", [("/api/v1/agent", "request"), ("/api/v1/agents", "requests")])
def test_it_replays_a_completed_request_from_its_first_event(api, engine, prefix, word, tmp_path):
    rid = submit(api, script({"tool_calls": [tool("append_line", path=str(tmp_path / "o"), line="1")]}, "caf\u00e9 ok"),
                 session_id="sse")
    engine.drain()
    frames = stream(api, events_url(rid, prefix=prefix, word=word))
    stored = engine.events(rid)
    assert [f["id"] for f in frames] == [e.seq for e in stored] == list(range(1, len(stored) + 1))
    assert [f["event"] for f in frames] == [e.stream_name for e in stored]
    base = {"request_id": rid, "agent_id": "primary", "session_id": "sse"}
    assert frames[0]["event"] == "request.accepted" and frames[0]["data"] == {**base, "status": "accepted"}
    assert frames[1]["event"] == "request.started" and frames[1]["data"]["status"] == "started"
    last = frames[-1]
    assert last["event"] == "request.completed"
    req = engine.request(rid)
    assert {k: last["data"][k] for k in ("request_id", "agent_id", "session_id", "status", "trace_id", "turn_id")} == {
        **base, "status": "completed", "trace_id": str(req.trace_id), "turn_id": str(req.trace_id)}
    assert last["data"]["response"]["text"] == "caf\u00e9 ok"
    assert set(last["data"]["response"]) >= {"text", "signals", "metadata"}
    assert last["data"]["session_total_tokens"] == req.session.session_total_tokens > 0
    # JSON on one line, ASCII-escaped
    assert all(f["raw_data"].isascii() and "\n" not in f["raw_data"] for f in frames)
    assert "caf\\u00e9 ok" in last["raw_data"]
    traces = [f for f in frames if f["event"] == "agent.trace"]
    assert traces and all(set(f["data"]) == TRACE_KEYS for f in traces)
    types = [f["data"]["event_type"] for f in traces]
    for expected in ["runtime.context.loaded", "runtime.llm.think.completed", "runtime.tool.call.completed",
                     "runtime.step.completed", "runtime.turn.persisted", "llm.request.complete"]:
        assert expected in types, expected
    think = next(f["data"] for f in traces if f["data"]["event_type"] == "runtime.llm.think.completed")
    assert think["trace_id"] == str(req.trace_id) and think["session_id"] == "sse" and think["loop_index"] == 0
    assert think["payload"]["action_type"] == "tool_call"
    assert think["payload"]["tool_calls"][0]["name"] == "append_line"
    called = next(f["data"]["payload"] for f in traces if f["data"]["event_type"] == "runtime.tool.call.completed")
    assert called["tool_name"] == "append_line" and called["result"]["content"] == "appended 1"
    # Each GET replays from the start again.
    assert [f["id"] for f in stream(api, events_url(rid))] == [f["id"] for f in frames]


def test_it_resumes_after_a_cursor(api, engine):
    rid = submit(api, script("done"))
    engine.drain()
    total = len(engine.events(rid))
    after = stream(api, events_url(rid) + "?after=3")
    assert [f["id"] for f in after] == list(range(4, total + 1))
    header = stream(api, events_url(rid), HTTP_LAST_EVENT_ID="5")
    assert [f["id"] for f in header] == list(range(6, total + 1))
    assert header[-1]["event"] == "request.completed"
    # Last-Event-ID wins over ?after=
    assert [f["id"] for f in stream(api, events_url(rid) + "?after=1", HTTP_LAST_EVENT_ID=str(total - 1))] == [total]


def test_a_read_the_database_cannot_serve_is_retried_not_the_end_of_the_stream(api, engine, monkeypatch):
    from django.db import OperationalError

    from mash_api import stream_readers

    rid = submit(api, script("done"))
    engine.drain()
    real, failures = stream_readers._fetch_request_events, []

    def flaky(*args, **kwargs):
        if not failures:
            failures.append(1)
            raise OperationalError("couldn't get a connection after 10.00 sec")
        return real(*args, **kwargs)

    monkeypatch.setattr(stream_readers, "_fetch_request_events", flaky)
    frames = stream(api, events_url(rid))
    assert failures == [1]
    assert [f["id"] for f in frames] == list(range(1, len(engine.events(rid)) + 1))
    assert frames[-1]["event"] == "request.completed"


@pytest.mark.parametrize("cursor", ["x", "-1"])
def test_it_rejects_a_bad_cursor(api, engine, cursor):
    rid = submit(api, script("done"))
    engine.drain()
    error = assert_error(api.get(events_url(rid) + f"?after={cursor}"), 422, "VALIDATION_ERROR")
    assert error["details"]["errors"][0]["loc"] == ["query", "after"]


def test_it_answers_404_json_for_an_unknown_request(api, engine):
    rid = submit(api, "hi")
    for url in [events_url(UNKNOWN_RID), events_url("not-a-uuid"), events_url(rid, agent="helper"),
                events_url(UNKNOWN_RID, prefix="/api/v1/agents", word="requests")]:
        response = api.get(url)
        assert not response.streaming
        assert_error(response, 404, "REQUEST_NOT_FOUND")


def test_it_ends_a_failed_request_with_request_error(api, engine, tmp_path):
    rid = submit(api, script("x", llm_error={"marker": str(tmp_path / "m"), "times": 1, "transient": False}))
    engine.drain()
    frames = stream(api, events_url(rid))
    assert frames[0]["event"] == "request.accepted"
    assert [f["event"] for f in frames].count("request.error") == 1
    assert frames[-1]["event"] == "request.error"
    assert frames[-1]["data"] == {"request_id": rid, "agent_id": "primary", "session_id": "primary:default",
                                  "status": "error", "error": "scripted failure", "error_code": "LLM_UNAVAILABLE",
                                  "retryable": False}


def test_it_streams_a_resumed_request_to_its_new_terminal(api, engine, tmp_path):
    rid = submit(api, script("second time", llm_error={"marker": str(tmp_path / "m"), "times": 1, "transient": False}))
    engine.drain()
    data(api.post(f"/api/v1/agent/primary/request/{rid}/resume"))
    engine.drain()
    names = [f["event"] for f in stream(api, events_url(rid))]
    assert names[0] == "request.accepted" and names[-1] == "request.completed"
    assert names.count("request.error") == 1 and names.index("request.error") < names.index("request.completed")


def test_it_streams_interactions_and_takes_answers_while_open(api, engine, tmp_path):
    target = tmp_path / "f"
    rid = submit(api, script({"tool_calls": [tool("write_file", path=str(target), text="yes")]}, "written"))
    assert engine.drain() == ["parked:input"]
    response = api.get(events_url(rid))
    assert response.status_code == 200

    def answer(interaction_id):
        body = data(post_json(api, f"/api/v1/agent/primary/request/{rid}/interaction",
                              {"interaction_id": interaction_id, "response": "approve"}))
        assert body == {"ok": True, "interaction_id": interaction_id}

    async def follow():
        chunks = response.streaming_content
        text = ""
        while "event: request.interaction.create" not in text:
            text += (await chunks.__anext__()).decode()
        # Everything stored so far is sent: the stream now idles, waiting for the next event.
        waiting = asyncio.ensure_future(chunks.__anext__())
        await asyncio.sleep(0.2)
        assert not waiting.done()
        create = [f for f in parse_sse(text) if f["event"] == "request.interaction.create"][0]["data"]
        await sync_to_async(answer)(create["interaction_id"])
        assert await drain_elsewhere(engine) == ["completed"]
        text += (await waiting).decode()
        async for chunk in chunks:  # ends by itself after the terminal event
            text += chunk.decode()
        return text

    async def bounded():
        return await asyncio.wait_for(follow(), 15)

    frames = parse_sse(async_to_sync(bounded)())
    names = [f["event"] for f in frames]
    assert names[0] == "request.accepted" and names[-1] == "request.completed"
    create = frames[names.index("request.interaction.create")]["data"]
    ack = frames[names.index("request.interaction.ack")]["data"]
    itr = Interaction.objects.get(request_id=rid)
    assert create["interaction_id"] == itr.interaction_id and create["type"] == "approval"
    assert create["schema"] == {"type": "enum", "options": ["approve", "deny", "skip"]}
    assert create["timeout_seconds"] == 300 and create["prompt"]
    assert (create["request_id"], create["agent_id"], create["session_id"]) == (rid, "primary", "primary:default")
    assert ack["interaction_id"] == itr.interaction_id and ack["response"] == "approve"
    assert names.index("request.interaction.create") < names.index("request.interaction.ack")
    assert [f["id"] for f in frames] == list(range(1, len(frames) + 1))
    assert target.read_text() == "yes"


def test_it_tails_telemetry_events(api, engine):
    response = api.get("/api/v1/telemetry/events/stream?agent_id=primary")
    assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
    inner = response._iterator  # the view's async generator, closed explicitly below

    async def tail():
        chunks = response.streaming_content
        pending = asyncio.ensure_future(chunks.__anext__())
        await asyncio.sleep(0.3)  # the tail starts at "now": let it take its cursor first
        rid = await sync_to_async(submit)(api, script("tailed"))
        await drain_elsewhere(engine)
        seen = []
        try:
            while True:
                chunk = (await asyncio.wait_for(pending, 10)).decode()
                seen.append(chunk)
                if '"event_type":"request.completed"' in chunk:
                    return rid, seen
                pending = asyncio.ensure_future(chunks.__anext__())
        finally:
            await chunks.aclose()
            await inner.aclose()

    rid, chunks = async_to_sync(tail)()
    events = []
    for chunk in chunks:
        assert chunk.startswith("data: ") and chunk.endswith("\n\n") and chunk.count("\n") == 2, chunk
        events.append(json.loads(chunk[len("data: "):]))
    assert all(e["request_id"] == rid for e in events)
    assert [e["event_type"] for e in events][0] == "request.accepted"
    assert set(events[0]) == {"event_id", "request_id", "request_seq", "trace_id", "app_id", "agent_id", "session_id",
                              "event_type", "loop_index", "step_key", "payload", "created_at"}
    assert [e["request_seq"] for e in events] == list(range(1, len(events) + 1))


def test_it_closes_at_once_when_resuming_past_the_end_of_a_finished_request(engine, api):
    from tests.api.conftest import read_stream

    rid = engine.submit({"script": ["done"]})
    engine.drain()
    last = engine.events(rid)[-1].seq
    for cursor in (last, last + 5):
        body = read_stream(api.get(f"/api/v1/agent/primary/request/{rid}/events", HTTP_LAST_EVENT_ID=str(cursor)))
        assert body == ""  # no frames, and the response ended instead of idling on keep-alives


# -- doorbells that carry their events -------------------------------------------------------


def test_carried_frames_follow_the_cursor_without_gaps():
    from mash_api.stream_readers import carried_frames

    def event(seq):
        return {"id": seq, "seq": seq, "event_type": "runtime.x", "agent_id": "a", "session_id": "s",
                "loop_index": None, "step_key": "", "created_at": 1.0, "request_id": UNKNOWN_RID,
                "trace_id": UNKNOWN_RID, "payload": json.dumps({"n": seq})}

    rung = [{"seq": 4, "events": [event(3), event(4)]}, {"seq": 2, "events": [event(2)]}]
    frames, read = carried_frames(rung, 1)
    assert [f.event.seq for f in frames] == [2, 3, 4] and read is False
    assert frames[0].event.payload == {"n": 2}
    # A bell past what it carried (too big to carry, or rung by an older writer): read.
    frames, read = carried_frames([{"seq": 6, "events": [event(5)]}], 4)
    assert [f.event.seq for f in frames] == [5] and read is True
    # Carried events that do not follow the cursor are not sent out of order.
    frames, read = carried_frames([{"seq": 9, "events": [event(9)]}], 4)
    assert frames == [] and read is True
    assert carried_frames([{"type": "mash.doorbell"}], 0) == ([], True)


def test_a_caught_up_stream_sends_carried_events_without_reading_the_database(engine, monkeypatch):
    from mash_api import stream_readers
    from mash_runtime import doorbell
    from mash_runtime.events import append_events
    from mash_runtime.models import Request
    from mash_runtime.run.lifecycle import finish
    from mash_runtime.host_sync import get_agent_row
    from mash_runtime.services import create_request

    class NoPoll(stream_readers.Backoff):  # only doorbells may wake the reader in this test
        def __init__(self):
            super().__init__()
            self.floor = self.current = self.ceiling = 60.0

    reads = []
    real_fetch = stream_readers._fetch_request_events
    monkeypatch.setattr(stream_readers, "Backoff", NoPoll)
    monkeypatch.setattr(stream_readers, "_fetch_request_events", lambda *a: reads.append(a[1]) or real_fetch(*a))
    req = create_request(get_agent_row("primary"), "hi", session_id="carry")

    async def scenario():
        frames = stream_readers.request_frames(req.pk, 0)
        seen = [(await frames.__anext__()).event.event_type]  # "accepted", from the one read

        def append(items):
            row = Request.objects.select_related("agent", "session").get(pk=req.pk)
            return [event for event, created in append_events(row, items, ring=False) if created]

        created = await sync_to_async(append)([("runtime.a", {"n": 1}, "a", 0, "s"), ("runtime.b", {"n": 2}, "b", 0, "s")])
        await doorbell.ring_async(req.pk, "primary", created[-1].seq, created)
        seen += [(await frames.__anext__()).event.event_type for _ in created]
        # The terminal event rings from the committing thread (append_events' on_commit).
        await sync_to_async(lambda: finish(Request.objects.get(pk=req.pk), Request.Status.FAILED,
                                                  error="stop", error_code="TEST"))()
        last = await frames.__anext__()
        seen.append(last.event.event_type)
        assert (last.event.payload["error"], last.event.payload["error_code"]) == ("stop", "TEST")
        with pytest.raises(StopAsyncIteration):
            await frames.__anext__()
        return seen

    assert async_to_sync(scenario)() == ["request.accepted", "runtime.a", "runtime.b", "request.error"]
    assert reads == [0]  # one read at the start; everything after rode on the doorbells


def test_a_bare_doorbell_makes_the_stream_read(engine, monkeypatch):
    from mash_api import stream_readers
    from mash_runtime import doorbell
    from mash_runtime.events import append_events
    from mash_runtime.models import Request
    from mash_runtime.host_sync import get_agent_row
    from mash_runtime.services import create_request

    class NoPoll(stream_readers.Backoff):
        def __init__(self):
            super().__init__()
            self.floor = self.current = self.ceiling = 60.0

    monkeypatch.setattr(stream_readers, "Backoff", NoPoll)
    req = create_request(get_agent_row("primary"), "hi", session_id="bare")

    async def scenario():
        frames = stream_readers.request_frames(req.pk, 0)
        await frames.__anext__()

        def append():
            row = Request.objects.select_related("agent", "session").get(pk=req.pk)
            return [event for event, created in append_events(row, [("runtime.big", {"x": "y"}, None, 0, "")],
                                                              ring=False) if created]

        created = await sync_to_async(append)()
        await doorbell.ring_async(req.pk, "primary", created[-1].seq)  # nothing carried
        return (await frames.__anext__()).event.event_type

    assert async_to_sync(scenario)() == "runtime.big"


def test_streams_of_one_loop_share_one_channel_and_get_only_their_groups_bells():
    from channels.layers import get_channel_layer

    from mash_runtime.doorbell import Doorbell
    from mash_runtime.doorbell import request_group

    async def scenario():
        layer = get_channel_layer()
        first, second = Doorbell([request_group("a")]), Doorbell([request_group("b")])
        async with first, second:
            bells = first.bells
            assert bells is second.bells and set(bells.listeners) == {request_group("a"), request_group("b")}
            await layer.group_send(request_group("a"), {"type": "mash.doorbell", "group": request_group("a"), "seq": 7})
            assert [bell["seq"] for bell in await first.wait(2)] == [7]
            assert await second.wait(0.05) == []
        assert bells.listeners == {}
        # The channel stays for the loop's life: the next stream subscribes nothing new.
        channel = await bells.channel
        async with Doorbell([request_group("a")]) as third:
            assert third.bells is bells and await bells.channel == channel and not bells.receiver.done()
            await layer.group_send(request_group("a"), {"type": "mash.doorbell", "group": request_group("a"), "seq": 8})
            assert [bell["seq"] for bell in await third.wait(2)] == [8]

    async_to_sync(scenario)()


def test_http_requests_share_a_few_sync_threads_however_many_are_open():
    import threading

    from mash_project.asgi import shared_threads
    from mash_runtime.run.dbthreads import DbThreads

    seen = []
    busy, most = [0], [0]

    def sync_part():
        busy[0] += 1
        most[0] = max(most[0], busy[0])
        threading.Event().wait(0.01)
        busy[0] -= 1
        return threading.get_ident()

    async def app(scope, receive, send):  # a request with two sync calls and a wait between them
        seen.append(await sync_to_async(sync_part)())
        await asyncio.sleep(0.05)
        seen.append(await sync_to_async(sync_part)())

    async def scenario():
        threads = DbThreads(3, name="test-http")
        wrapped = shared_threads(app, threads)
        await asyncio.gather(*(wrapped({}, None, None) for _ in range(50)))
        threads.executor.shutdown()

    async_to_sync(scenario)()
    assert len(seen) == 100
    assert len(set(seen)) <= 3  # 50 open requests, three threads
    assert most[0] <= 3


def test_the_web_process_sends_request_started_without_a_thread_hop():
    """mash_project.asgi disconnects Django's two sync receivers of request_started (nothing
    for them to do there); request_finished still gives the connections back."""
    from django.core import signals
    from django.db import close_old_connections, reset_queries

    from mash_project.asgi import quiet_request_started

    # What importing mash_project.asgi did (again: a test's CaptureQueriesContext reconnects
    # reset_queries when it ends).
    quiet_request_started()

    def connected(signal):
        return {receiver() for _, receiver, *_ in signal.receivers}

    assert not {reset_queries, close_old_connections} & connected(signals.request_started)
    assert close_old_connections in connected(signals.request_finished)
    # No receiver left to run on a thread: asend has nothing to hop for.
    assert not [r for r in connected(signals.request_started) if not asyncio.iscoroutinefunction(r)]
