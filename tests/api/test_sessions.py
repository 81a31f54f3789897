"""Sessions, history, signals, reasoning traces, telemetry events and memory search."""

from __future__ import annotations

import json

import pytest

from mash_runtime.models import MemoryTurn, Session
from tests.api.conftest import assert_error, data, post_json, script, tool

TURN_KEYS = {"turn_id", "user_message", "agent_response", "session_total_tokens", "signals", "metadata", "created_at"}


def run(api, engine, message, session_id=None, agent="primary") -> str:
    body = {"message": message}
    if session_id is not None:
        body["session_id"] = session_id
    rid = data(post_json(api, f"/api/v1/agent/{agent}/request", body), 202)["request_id"]
    engine.drain()
    return rid


# -- sessions -------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["/api/v1/agent", "/api/v1/agents"])
def test_it_lists_sessions_newest_activity_first(api, engine, prefix):
    run(api, engine, script("a1"), "a")
    run(api, engine, script("b1"), "b")
    run(api, engine, script("a2"), "a")
    data(post_json(api, "/api/v1/agent/primary/request", {"message": "queued only", "session_id": "c"}), 202)
    sessions = data(api.get(f"{prefix}/primary/sessions"))["sessions"]
    assert [s["session_id"] for s in sessions] == ["c", "a", "b"]
    for s in sessions:
        assert set(s) == {"session_id", "turn_count", "last_activity_at", "session_total_tokens"}
        assert isinstance(s["last_activity_at"], float)
    by_id = {s["session_id"]: s for s in sessions}
    assert (by_id["a"]["turn_count"], by_id["b"]["turn_count"], by_id["c"]["turn_count"]) == (2, 1, 0)
    assert by_id["a"]["session_total_tokens"] == Session.objects.get(session_id="a").session_total_tokens > 0
    assert by_id["c"]["session_total_tokens"] == 0
    assert sessions[0]["last_activity_at"] >= sessions[1]["last_activity_at"] >= sessions[2]["last_activity_at"]


def test_it_lists_only_the_agents_own_sessions(api, engine):
    run(api, engine, script("x"), "mine")
    assert data(api.get("/api/v1/agent/helper/sessions")) == {"sessions": []}
    assert_error(api.get("/api/v1/agent/ghost/sessions"), 404, "AGENT_NOT_FOUND")


def test_it_describes_a_session(api, engine):
    run(api, engine, script("x"), "s:1")
    info = data(api.get("/api/v1/agent/primary/sessions/s%3A1"))
    assert info == {"app_id": "primary", "agent_id": "primary", "session_id": "s:1", "primary_agent_id": "primary",
                    "subagent_ids": ["helper"], "model": "scripted", "max_steps": 8,
                    "session_total_tokens": Session.objects.get(session_id="s:1").session_total_tokens}
    assert info["session_total_tokens"] > 0
    assert data(api.get("/api/v1/agents/primary/sessions/%20s:1%20"))["session_id"] == "s:1"


def test_it_describes_an_unused_session_with_zero_tokens(api, engine):
    info = data(api.get("/api/v1/agent/helper/sessions/never-used"))
    assert info["session_id"] == "never-used" and info["session_total_tokens"] == 0 and info["agent_id"] == "helper"
    assert not Session.objects.filter(session_id="never-used").exists()
    assert_error(api.get("/api/v1/agent/ghost/sessions/never-used"), 404, "AGENT_NOT_FOUND")


# -- history --------------------------------------------------------------------------------


def test_it_returns_the_last_turns_oldest_first(api, engine):
    rids = [run(api, engine, script(f"answer {i}"), "h") for i in range(3)]
    turns = data(api.get("/api/v1/agent/primary/sessions/h/history?limit=2"))["turns"]
    assert [t["agent_response"] for t in turns] == ["answer 1", "answer 2"]
    for turn, rid in zip(turns, rids[1:]):
        assert set(turn) == TURN_KEYS
        assert turn["turn_id"] == str(engine.request(rid).trace_id)
        assert turn["user_message"] == engine.request(rid).message
        assert isinstance(turn["created_at"], float) and isinstance(turn["session_total_tokens"], int)
        assert set(turn["signals"]) == {"unused_tools", "unused_tool_tokens"}
        assert turn["metadata"]["request_id"] == rid
    assert turns[0]["created_at"] <= turns[1]["created_at"]
    assert turns[0]["session_total_tokens"] < turns[1]["session_total_tokens"]
    everything = data(api.get("/api/v1/agents/primary/sessions/h/history"))["turns"]
    assert [t["agent_response"] for t in everything] == ["answer 0", "answer 1", "answer 2"]
    assert data(api.get("/api/v1/agent/primary/sessions/other/history")) == {"turns": []}


def test_it_uses_the_trace_id_as_the_turn_id(api, engine):
    rid = run(api, engine, script("done"), "t")
    completed = engine.events(rid)[-1].payload
    turn = data(api.get("/api/v1/agent/primary/sessions/t/history"))["turns"][0]
    assert turn["turn_id"] == completed["turn_id"] == completed["trace_id"]


@pytest.mark.parametrize("limit", ["0", "-1", "abc", "1001"])
def test_it_rejects_a_bad_history_limit(api, engine, limit):
    error = assert_error(api.get(f"/api/v1/agent/primary/sessions/h/history?limit={limit}"), 422, "VALIDATION_ERROR")
    assert error["details"]["errors"][0]["loc"] == ["query", "limit"]


# -- signals --------------------------------------------------------------------------------


def test_it_returns_signal_definitions_and_per_turn_values(api, engine):
    rids = [run(api, engine, script(f"s{i}"), "sig") for i in range(3)]
    body = data(api.get("/api/v1/agent/primary/sessions/sig/signals?limit=2"))
    assert set(body) == {"agent_id", "session_id", "definitions", "turns"}
    assert (body["agent_id"], body["session_id"]) == ("primary", "sig")
    assert set(body["definitions"]) == {"unused_tools", "unused_tool_tokens"}
    newest = MemoryTurn.objects.get(turn_id=engine.request(rids[-1]).trace_id)
    for name, definition in body["definitions"].items():
        assert set(definition) == {"name", "value_type", "description", "computed_at", "persisted"}
        assert definition["name"] == name and definition["persisted"] is True and definition["description"]
        assert definition["computed_at"] == pytest.approx(newest.created_at.timestamp())
    assert body["definitions"]["unused_tools"]["value_type"] == "list[str]"
    assert [t["turn_id"] for t in body["turns"]] == [str(engine.request(r).trace_id) for r in rids[1:]]
    for turn in body["turns"]:
        assert set(turn) == {"turn_id", "created_at", "signals"} and isinstance(turn["created_at"], float)
        assert "append_line" in turn["signals"]["unused_tools"]


def test_it_returns_empty_signals_for_an_unused_session(api, engine):
    body = data(api.get("/api/v1/agents/primary/sessions/empty/signals"))
    assert body["turns"] == [] and body["session_id"] == "empty"
    assert all(d["computed_at"] is None for d in body["definitions"].values())
    assert_error(api.get("/api/v1/agent/ghost/sessions/empty/signals"), 404, "AGENT_NOT_FOUND")


# -- reasoning traces -----------------------------------------------------------------------


@pytest.mark.parametrize("prefix,word", [("/api/v1/agent", "session"), ("/api/v1/agents", "session"),
                                         ("/api/v1/agent", "sessions")])
def test_it_rebuilds_the_reasoning_trace(api, engine, tmp_path, prefix, word):
    out = tmp_path / "out.txt"
    rid = run(api, engine, script({"text": "writing", "tool_calls": [tool("append_line", path=str(out), line="one")]},
                                  "all done"), "r")
    req = engine.request(rid)
    trace = data(api.get(f"{prefix}/primary/{word}/r/trace/{req.trace_id}/reasoning"))
    assert {k: trace[k] for k in ("source", "agent_id", "session_id", "trace_id", "status")} == {
        "source": "runtime_events", "agent_id": "primary", "session_id": "r", "trace_id": str(req.trace_id),
        "status": "completed"}
    assert "error" not in trace
    steps = trace["steps"]
    assert len(steps) == 2
    step_keys = {"step", "step_index", "action_type", "title", "assistant_text", "tool_calls", "token_usage",
                 "think_duration_ms", "act_duration_ms", "total_duration_ms"}
    assert all(set(s) == step_keys for s in steps)
    first, second = steps
    assert (first["step"], first["step_index"], first["action_type"]) == (1, 0, "tool_call")
    assert first["assistant_text"] == "writing"
    [call] = first["tool_calls"]
    assert set(call) == {"name", "arguments", "preview"}
    assert call["name"] == "append_line" and call["arguments"] == {"path": str(out), "line": "one"}
    # a JSON preview of the arguments (key order may follow the database's JSON storage)
    assert json.loads(call["preview"]) == call["arguments"]
    assert first["title"] == "Called append_line"
    assert first["token_usage"]["input"] > 0
    assert (second["step"], second["action_type"], second["assistant_text"], second["tool_calls"]) == (
        2, "response", "all done", [])
    assert trace["summary"] == {"total_steps": 2, "total_tools": 1, "total_tokens": req.total_tokens,
                                "total_duration_ms": trace["summary"]["total_duration_ms"]}
    assert req.total_tokens > 0 and trace["summary"]["total_duration_ms"] >= 0


def test_it_includes_the_error_of_a_failed_trace(api, engine, tmp_path):
    rid = run(api, engine, script("x", llm_error={"marker": str(tmp_path / "m"), "times": 1, "transient": False}))
    req = engine.request(rid)
    trace = data(api.get(f"/api/v1/agent/primary/session/primary:default/trace/{req.trace_id}/reasoning"))
    assert trace["status"] == "failed" and trace["error"] == "scripted failure"


def test_it_answers_404_for_an_unknown_trace(api, engine):
    rid = run(api, engine, script("x"), "r")
    trace_id = engine.request(rid).trace_id
    for path in ["/api/v1/agent/primary/session/r/trace/00000000-0000-4000-8000-000000000000/reasoning",
                 "/api/v1/agent/primary/session/r/trace/not-a-uuid/reasoning",
                 f"/api/v1/agent/primary/session/other/trace/{trace_id}/reasoning",
                 f"/api/v1/agent/primary/session/r/trace/{rid}/reasoning"]:
        assert_error(api.get(path), 404, "TRACE_NOT_FOUND")
    assert_error(api.get(f"/api/v1/agent/ghost/session/r/trace/{trace_id}/reasoning"), 404, "AGENT_NOT_FOUND")


# -- telemetry events -----------------------------------------------------------------------


EVENT_KEYS = {"event_id", "request_id", "request_seq", "trace_id", "app_id", "agent_id", "session_id", "event_type",
              "loop_index", "step_key", "payload", "created_at"}


def test_it_lists_the_newest_events_oldest_first(api, engine):
    first = run(api, engine, script("one"), "e1")
    second = run(api, engine, script("two"), "e2")
    everything = data(api.get("/api/v1/telemetry/events"))
    assert set(everything) == {"events", "source", "agent_id", "session_id", "trace_id", "limit"}
    assert (everything["source"], everything["limit"], everything["agent_id"]) == ("runtime_events", 200, None)
    events = everything["events"]
    assert len(events) == len(engine.events(first)) + len(engine.events(second))
    assert all(set(e) == EVENT_KEYS for e in events)
    ids = [e["event_id"] for e in events]
    assert ids == sorted(ids)
    newest = data(api.get("/api/v1/telemetry/events?limit=3"))
    assert newest["limit"] == 3
    assert [e["event_id"] for e in newest["events"]] == ids[-3:]
    assert newest["events"][-1]["event_type"] == "request.completed"
    assert newest["events"][-1]["request_id"] == second
    accepted = events[0]
    assert (accepted["event_type"], accepted["request_seq"], accepted["request_id"]) == ("request.accepted", 1, first)
    assert accepted["app_id"] == accepted["agent_id"] == "primary" and accepted["session_id"] == "e1"
    assert isinstance(accepted["created_at"], float)


def test_it_filters_events(api, engine):
    first = run(api, engine, script("one"), "e1")
    second = run(api, engine, script("two"), "e2")
    by_session = data(api.get("/api/v1/telemetry/events?session_id=e2"))
    assert by_session["session_id"] == "e2"
    assert {e["request_id"] for e in by_session["events"]} == {second}
    trace = str(engine.request(first).trace_id)
    by_trace = data(api.get(f"/api/v1/telemetry/events?trace_id={trace}"))
    assert len(by_trace["events"]) == len(engine.events(first)) and by_trace["trace_id"] == trace
    assert {e["trace_id"] for e in by_trace["events"]} == {trace}
    assert data(api.get("/api/v1/telemetry/events?agent_id=helper"))["events"] == []
    assert len(data(api.get("/api/v1/telemetry/events?agent_id=primary&session_id=e1"))["events"]) == len(
        engine.events(first))
    assert data(api.get("/api/v1/telemetry/events?trace_id=nonsense"))["events"] == []


@pytest.mark.parametrize("limit", ["20001", "0", "x"])
def test_it_rejects_an_event_limit_out_of_range(api, engine, limit):
    error = assert_error(api.get(f"/api/v1/telemetry/events?limit={limit}"), 422, "VALIDATION_ERROR")
    assert error["details"]["errors"][0]["loc"] == ["query", "limit"]


def test_it_accepts_the_maximum_event_limit(api, engine):
    assert data(api.get("/api/v1/telemetry/events?limit=20000"))["limit"] == 20000


# -- memory search --------------------------------------------------------------------------


def test_it_searches_memory_by_user_or_agent_text(api, engine):
    first = run(api, engine, script("the red fox"), "m1")
    run(api, engine, script("a blue whale"), "m2")
    found = data(api.get("/api/v1/telemetry/memory/search", {"q": "@agent: red"}))
    assert set(found) == {"results", "app_id", "session_id", "query", "limit"}
    assert (found["query"], found["limit"], found["app_id"], found["session_id"]) == ("@agent: red", 10, None, None)
    assert found["results"] == [{"turn_id": str(engine.request(first).trace_id), "session_id": "m1",
                                 "similarity_score": 1.0, "preview": "the red fox"}]
    by_user = data(api.get("/api/v1/telemetry/memory/search", {"q": "@user:whale"}))["results"]
    assert [r["session_id"] for r in by_user] == ["m2"]
    assert by_user[0]["preview"] == script("a blue whale")
    assert data(api.get("/api/v1/telemetry/memory/search", {"q": "@agent:red", "session_id": "m2"}))["results"] == []
    assert data(api.get("/api/v1/telemetry/memory/search", {"q": "@agent:red", "app_id": "helper"}))["results"] == []
    scoped = data(api.get("/api/v1/telemetry/memory/search", {"q": "@agent:a", "app_id": "primary", "limit": "1"}))
    assert scoped["limit"] == 1 and len(scoped["results"]) == 1 and scoped["app_id"] == "primary"


@pytest.mark.parametrize("q", ["red", "", "@agent:", "@bot: red", "user: red"])
def test_it_requires_a_search_prefix(api, engine, q):
    assert_error(api.get("/api/v1/telemetry/memory/search", {"q": q}), 400, "SEARCH_VALIDATION_ERROR")


def test_it_requires_a_search_query(api, engine):
    assert_error(api.get("/api/v1/telemetry/memory/search"), 400, "SEARCH_VALIDATION_ERROR")
