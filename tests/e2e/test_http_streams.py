"""SSE and WebSocket streams over real sockets: daphne + a django-q2 cluster on the test database.

Every request is submitted over HTTP to the daphne process, executed by a `qcluster`
process, and read back over SSE or WebSocket, as a real client would. On SQLite the
in-memory channel layer does not cross processes, so the readers' fallback poll is
what delivers frames there (slower, same frames).
"""

from __future__ import annotations

import json
import re

import httpx
import pytest
from websockets.exceptions import ConnectionClosedOK, InvalidStatus
from websockets.sync.client import connect as ws_connect

from mash_runtime.models import Request, RuntimeEvent
from tests.e2e.conftest import TERMINAL_EVENTS, sse_frames, wait_for

pytestmark = pytest.mark.e2e

# Keep-alive comments come every 15 s, so a read waiting 60 s means a stuck stream.
TIMEOUT = httpx.Timeout(30.0, read=60.0)
APPROVAL_SCHEMA = {"type": "enum", "options": ["approve", "deny", "skip"]}


def tool(name, **arguments):
    return {"name": name, "arguments": arguments}


def submit(server, plan, session_id=None) -> str:
    body = {"message": json.dumps(plan)}
    if session_id:
        body["session_id"] = session_id
    response = httpx.post(f"{server.url}/api/v1/agent/primary/request", json=body, headers=server.headers,
                          timeout=TIMEOUT)
    assert response.status_code == 202, response.text
    data = response.json()["data"]
    assert data["status"] == "accepted" and data["agent_id"] == "primary"
    return data["request_id"]


def events_url(server, rid) -> str:
    return f"{server.url}/api/v1/agent/primary/request/{rid}/events"


def assert_sse_headers(response) -> None:
    assert response.status_code == 200, response.read()
    assert response.headers["content-type"].split(";")[0].strip() == "text/event-stream"
    assert response.headers["cache-control"] == "no-cache"


def read_stream(server, rid, headers=None, params=None) -> list:
    """One GET of a request's events, read until the server closes; only events returned.

    Fails when anything (even a keep-alive) follows the terminal event, or when the
    server keeps the response open after it (the read times out).
    """
    with httpx.stream("GET", events_url(server, rid), headers={**server.headers, **(headers or {})}, params=params,
                      timeout=TIMEOUT) as response:
        assert_sse_headers(response)
        frames = list(sse_frames(response, comments=True))
    events = [f for f in frames if f.comment is None]
    assert events, "the stream sent no event"
    assert frames[-1] is events[-1], f"the response must close right after the terminal event: {frames[-3:]}"
    assert events[-1].event in TERMINAL_EVENTS, [f.event for f in events]
    return events


def keys(frames) -> list:
    return [f.key for f in frames]


def db_stream(rid) -> list[tuple[int, str]]:
    return [(e.seq, e.stream_name) for e in RuntimeEvent.objects.filter(request_id=rid).order_by("seq")]


def assert_well_formed(events, rid) -> None:
    names = [f.event for f in events]
    assert [f.id for f in events] == list(range(1, len(events) + 1)), [f.id for f in events]
    assert names[0] == "request.accepted" and names[1] == "request.started", names
    assert sum(n in TERMINAL_EVENTS for n in names) == 1 and names[-1] in TERMINAL_EVENTS, names
    for frame in events:
        assert [line.split(": ", 1)[0] for line in frame.raw.split("\n")] == ["id", "event", "data"], frame.raw
        assert isinstance(frame.data, dict)
        if frame.event.startswith("request."):
            assert frame.data["request_id"] == rid, frame.data
    assert [(f.id, f.event) for f in events] == db_stream(rid)


def test_it_streams_one_request_end_to_end_over_sse_and_the_telemetry_tail(clusters, web_servers, tmp_path):
    cluster = clusters.start()  # boots while daphne does
    web_server = web_servers.start()
    out = tmp_path / "out.txt"
    tail_url = f"{web_server.url}/api/v1/telemetry/events/stream"
    with httpx.Client(timeout=TIMEOUT) as tail_client, tail_client.stream("GET", tail_url) as tail:
        # The tail is open (headers received) before the request exists.
        assert_sse_headers(tail)
        rid = submit(web_server, {"script": [{"tool_calls": [tool("append_line", path=str(out), line="one")]},
                                             "all done"]})

        events = read_stream(web_server, rid)

        tailed = []
        for frame in sse_frames(tail):
            assert frame.id is None and frame.event is None, f"data-only frames: {frame.raw!r}"
            if frame.data["request_id"] == rid:
                tailed.append(frame.data)
                if frame.data["event_type"] in TERMINAL_EVENTS:
                    break

    names = [f.event for f in events]
    assert names[0] == "request.accepted" and names[1] == "request.started", names
    assert names[-1] == "request.completed", (names, cluster.log()[-2000:])
    assert set(names[2:-1]) == {"agent.trace"}, names
    assert [f.id for f in events] == list(range(1, len(events) + 1))
    assert_well_formed(events, rid)

    accepted, started, completed = events[0].data, events[1].data, events[-1].data
    assert accepted == {"request_id": rid, "agent_id": "primary", "session_id": accepted["session_id"],
                        "status": "accepted"}
    assert started["status"] == "started" and started["session_id"] == accepted["session_id"]
    assert completed["status"] == "completed"
    assert completed["response"]["text"] == "all done"
    assert completed["turn_id"] == completed["trace_id"]

    traces = [f.data for f in events if f.event == "agent.trace"]
    for trace in traces:
        assert set(trace) >= {"event_type", "trace_id", "session_id", "loop_index", "step_key", "created_at", "payload"}
        assert trace["trace_id"] == completed["trace_id"]
    types = [t["event_type"] for t in traces]
    thinks = [t["payload"] for t in traces if t["event_type"] == "runtime.llm.think.completed"]
    assert thinks[0]["action_type"] == "tool_call" and thinks[0]["tool_calls"][0]["name"] == "append_line"
    tool_done = [t["payload"] for t in traces if t["event_type"] == "runtime.tool.call.completed"]
    assert len(tool_done) == 1 and tool_done[0]["tool_name"] == "append_line"
    assert tool_done[0]["result"]["is_error"] is False and "appended one" in tool_done[0]["result"]["content"]
    assert "runtime.step.completed" in types
    assert out.read_text() == "one\n"

    # The telemetry tail, opened before the submit, carried every event of the request as RuntimeEvents.
    assert set(tailed[0]) >= {"event_id", "request_id", "request_seq", "trace_id", "app_id", "agent_id",
                              "session_id", "event_type", "loop_index", "step_key", "payload", "created_at"}
    assert [(e["request_seq"], e["event_type"]) for e in tailed] == [
        (e.seq, e.event_type) for e in RuntimeEvent.objects.filter(request_id=rid).order_by("seq")]
    assert tailed[0]["event_type"] == "request.accepted" and tailed[-1]["event_type"] == "request.completed"


def test_it_resumes_with_last_event_id_after_a_forced_disconnect(clusters, web_servers, tmp_path):
    clusters.start()  # boots while daphne does
    web_server = web_servers.start()
    out, gate = tmp_path / "out.txt", tmp_path / "gate"
    # The bash step holds the request mid-stream until the test opens the gate.
    rid = submit(web_server, {"script": [
        {"tool_calls": [tool("append_line", path=str(out), line="one")]},
        {"tool_calls": [tool("bash", command=f"while [ ! -e {gate} ]; do sleep 0.05; done; echo through",
                             timeout=120)]},
        {"tool_calls": [tool("append_line", path=str(out), line="two", sleep=0.5)]},
        {"tool_calls": [tool("append_line", path=str(out), line="three", sleep=0.5)]},
        "resumed fine",
    ]})

    first: list = []
    with httpx.stream("GET", events_url(web_server, rid), timeout=TIMEOUT) as response:
        assert_sse_headers(response)
        for frame in sse_frames(response):
            first.append(frame)
            payload = frame.data.get("payload", {}) if frame.event == "agent.trace" else {}
            if frame.data.get("event_type") == "runtime.llm.think.completed" and \
                    payload["tool_calls"][0]["name"] == "bash":
                break
        # Leaving the block closes the socket mid-stream.
    assert first[-1].event == "agent.trace"
    assert all(f.event not in TERMINAL_EVENTS for f in first)
    last_seen = first[-1].id
    assert not Request.objects.get(pk=rid).is_terminal, "the gate holds the request: the disconnect is mid-stream"

    # Let the request go on while nobody listens, so the resume must replay missed frames.
    gate.write_text("open")
    wait_for(lambda: RuntimeEvent.objects.filter(request_id=rid, seq__gt=last_seen + 2).exists(), timeout=60,
             what="events produced while disconnected")

    second = read_stream(web_server, rid, headers={"Last-Event-ID": str(last_seen)})
    assert second[0].id == last_seen + 1, (last_seen, second[:2])
    assert second[-1].event == "request.completed", [f.event for f in second]
    assert second[-1].data["response"]["text"] == "resumed fine"

    full = read_stream(web_server, rid)
    assert_well_formed(full, rid)
    union = first + second
    assert len({f.id for f in union}) == len(union), "no frame twice"
    assert keys(union) == keys(full), "the two connections together are exactly the full stream"
    # `?after=` is the same cursor for clients that cannot set headers.
    assert keys(read_stream(web_server, rid, params={"after": str(last_seen)})) == keys(second)
    assert out.read_text().split() == ["one", "two", "three"]
    assert "Traceback" not in web_server.log(), web_server.log()[-3000:]


def test_it_delivers_an_answered_approval_on_the_open_stream(clusters, web_servers, tmp_path):
    clusters.start()  # boots while daphne does
    web_server = web_servers.start()
    target = tmp_path / "approved.txt"
    rid = submit(web_server, {"script": [{"tool_calls": [tool("write_file", path=str(target), text="ok")]}, "written"]})

    seen: list = []
    with httpx.stream("GET", events_url(web_server, rid), timeout=TIMEOUT) as response:
        assert_sse_headers(response)
        frames = sse_frames(response, comments=True)
        for frame in frames:
            seen.append(frame)
            if frame.event == "request.interaction.create":
                break
        create = seen[-1].data
        assert seen[-1].event == "request.interaction.create", seen
        assert create["type"] == "approval" and create["schema"] == APPROVAL_SCHEMA, create
        assert re.fullmatch(r"itr_[0-9a-f]{12}", create["interaction_id"]), create
        assert create["timeout_seconds"] == 300 and create["request_id"] == rid and create["prompt"]
        # The request parks (no worker holds it) while this stream stays open.
        wait_for(lambda: Request.objects.get(pk=rid).status == "awaiting_input", timeout=60, what="request to park")
        assert not target.exists()

        with httpx.Client(base_url=web_server.url, timeout=TIMEOUT) as other:
            url = f"/api/v1/agent/primary/request/{rid}/interaction"
            answer = other.post(url, json={"interaction_id": create["interaction_id"], "response": "approve"})
            assert answer.status_code == 200, answer.text
            assert answer.json()["data"] == {"ok": True, "interaction_id": create["interaction_id"]}
            again = other.post(url, json={"interaction_id": create["interaction_id"], "response": "deny"})
            assert again.status_code == 409 and again.json()["error"]["code"], again.text

        seen.extend(frames)  # the same, still open response

    assert seen[-1].event in TERMINAL_EVENTS, "the response closes right after the terminal event"
    events = [f for f in seen if f.comment is None]
    assert_well_formed(events, rid)
    names = [f.event for f in events]
    assert names.count("request.interaction.create") == 1 and names.count("request.interaction.ack") == 1
    assert names.index("request.interaction.create") < names.index("request.interaction.ack")
    ack = events[names.index("request.interaction.ack")].data
    assert ack["interaction_id"] == create["interaction_id"] and ack["response"] == "approve"
    assert not ack.get("timed_out")
    assert names[-1] == "request.completed" and events[-1].data["response"]["text"] == "written"
    tool_done = [f.data["payload"] for f in events
                 if f.event == "agent.trace" and f.data["event_type"] == "runtime.tool.call.completed"]
    assert len(tool_done) == 1 and tool_done[0]["tool_name"] == "write_file"
    assert tool_done[0]["result"]["is_error"] is False
    assert target.read_text() == "ok"


def ws_messages(ws, on_event=None):
    """Messages until the terminal event: (events, other replies); `on_event(ws, event, replies)` may answer."""
    events, replies = [], []
    while True:
        message = json.loads(ws.recv(timeout=60))
        if "id" not in message:
            replies.append(message)
        else:
            assert set(message) == {"id", "event", "data"}, message
            events.append(message)
        if on_event is not None:
            on_event(ws, message, replies)
        if message.get("event") in TERMINAL_EVENTS:
            return events, replies


def assert_closed_by_server(ws) -> None:
    with pytest.raises(ConnectionClosedOK):
        ws.recv(timeout=30)


def as_frames(messages) -> list:
    return [(m["id"], m["event"], json.dumps(m["data"], sort_keys=True)) for m in messages]


def test_it_streams_and_answers_over_websocket_like_sse(clusters, web_servers, tmp_path):
    clusters.start()  # boots while daphne does
    web_server = web_servers.start()
    target, gate = tmp_path / "approved.txt", tmp_path / "gate"
    rid = submit(web_server, {"script": [
        {"tool_calls": [tool("write_file", path=str(target), text="ws")]},
        # Holds the request after the approval until both in-band replies arrived.
        {"tool_calls": [tool("bash", command=f"while [ ! -e {gate} ]; do sleep 0.05; done", timeout=120)]},
        "ws done",
    ]})
    url = f"{web_server.ws_url}/ws/v1/agent/primary/request/{rid}/"

    def answer(ws, message, replies):
        if message.get("event") == "request.interaction.create":
            itr = message["data"]["interaction_id"]
            ws.send(json.dumps({"type": "interaction", "interaction_id": itr, "response": "approve"}))
            ws.send(json.dumps({"type": "interaction", "interaction_id": itr, "response": "deny"}))
        if len(replies) == 2 and not gate.exists():
            gate.write_text("open")

    with ws_connect(url, open_timeout=30) as ws:
        messages, replies = ws_messages(ws, answer)
        assert_closed_by_server(ws)

    create = next(m["data"] for m in messages if m["event"] == "request.interaction.create")
    assert create["type"] == "approval" and create["schema"] == APPROVAL_SCHEMA
    itr_id = create["interaction_id"]
    assert replies[0] == {"type": "interaction.result", "data": {"ok": True, "interaction_id": itr_id}}, replies
    assert replies[1]["type"] == "error" and replies[1]["error"]["status"] == 409, replies
    ack = next(m["data"] for m in messages if m["event"] == "request.interaction.ack")
    assert ack["interaction_id"] == itr_id and ack["response"] == "approve"
    assert messages[-1]["event"] == "request.completed" and messages[-1]["data"]["response"]["text"] == "ws done"
    assert target.read_text() == "ws"

    sse = read_stream(web_server, rid)
    assert_well_formed(sse, rid)
    assert as_frames(messages) == keys(sse), "the WebSocket carries exactly the SSE frames"

    # ?after=N: only the frames after seq N, then the server closes.
    after = next(m["id"] for m in messages if m["event"] == "request.interaction.create")
    with ws_connect(f"{url}?after={after}", open_timeout=30) as ws:
        tail, _ = ws_messages(ws)
        assert_closed_by_server(ws)
    assert tail[0]["id"] == after + 1
    assert as_frames(tail) == keys(sse)[after:]


def test_it_refuses_unauthorised_websockets_when_a_key_is_set(clusters, web_servers):
    server = web_servers.start(MASH_API_KEY="e2e-secret-key")
    rid = submit(server, {"script": ["keyed"]})
    url = f"{server.ws_url}/ws/v1/agent/primary/request/{rid}/"

    assert httpx.get(events_url(server, rid), timeout=TIMEOUT).status_code == 401
    for headers, suffix in (({}, ""), ({"Authorization": "Bearer wrong"}, ""), ({}, "?api_key=e2e-secret-key"),
                            ({"Authorization": "Bearer wrong", "X-API-Key": "e2e-secret-key"}, "")):
        with pytest.raises(InvalidStatus) as refused:
            with ws_connect(url + suffix, additional_headers=headers, open_timeout=30) as ws:
                ws.recv(timeout=10)
        assert refused.value.response.status_code == 403, (headers, suffix)

    for headers in ({"Authorization": "Bearer e2e-secret-key"}, {"X-API-Key": "e2e-secret-key"}):
        with ws_connect(url, additional_headers=headers, open_timeout=30) as ws:
            first = json.loads(ws.recv(timeout=60))
        assert first["id"] == 1 and first["event"] == "request.accepted" and first["data"]["request_id"] == rid
