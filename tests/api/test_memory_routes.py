"""Memory routes: session compaction, full-text memory search and signal definitions over HTTP."""

from __future__ import annotations

import json

import pytest

from mash_runtime.models import MemoryTurn, Session
from mash_runtime.memory.turn_signals import SignalCollector, register_signal_collector, unregister_signal_collector
from tests.api.conftest import assert_error, data, post_json, script

SEARCH = "/api/v1/telemetry/memory/search"


def run(api, engine, message, session_id=None, agent="primary") -> str:
    body = {"message": message}
    if session_id is not None:
        body["session_id"] = session_id
    rid = data(post_json(api, f"/api/v1/agent/{agent}/request", body), 202)["request_id"]
    engine.drain()
    return rid


def turn_id(engine, rid) -> str:
    return str(engine.request(rid).trace_id)


# -- compact --------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["/api/v1/agent", "/api/v1/agents"])
def test_it_compacts_a_session(api, engine, prefix):
    run(api, engine, script("the red fox"), "c1")
    run(api, engine, script("the blue whale"), "c1")
    assert Session.objects.get(session_id="c1").session_total_tokens > 0
    body = data(post_json(api, f"{prefix}/primary/sessions/c1/compact", {"reason": "manual"}))
    assert set(body) == {"summary_text", "turn_id"}
    for section in ("Summary", "Decisions", "Open questions", "User preferences"):
        assert f"## {section}" in body["summary_text"]
    summary = MemoryTurn.objects.get(turn_id=body["turn_id"])
    assert summary.kind == "summary" and summary.agent_response == body["summary_text"]
    # The scripted test model echoes its prompt: the turns were in it.
    assert "the red fox" in body["summary_text"] and "the blue whale" in body["summary_text"]
    assert Session.objects.get(session_id="c1").session_total_tokens == 0
    info = data(api.get(f"{prefix}/primary/sessions/c1"))
    assert info["session_total_tokens"] == 0
    turns = data(api.get(f"{prefix}/primary/sessions/c1/history"))["turns"]
    assert turns[-1]["turn_id"] == body["turn_id"] and turns[-1]["metadata"]["kind"] == "summary"
    assert turns[-1]["metadata"]["reason"] == "manual" and turns[-1]["metadata"]["compacted_turns"] == 2
    # Session listings count conversation turns only.
    sessions = data(api.get(f"{prefix}/primary/sessions"))["sessions"]
    assert next(s for s in sessions if s["session_id"] == "c1")["turn_count"] == 2


def test_compact_defaults_and_reset_value(api, engine):
    run(api, engine, script("one"), "c2")
    response = api.post("/api/v1/agent/primary/sessions/c2/compact")  # no body at all
    body = data(response)
    assert MemoryTurn.objects.get(turn_id=body["turn_id"]).metadata["reason"] == "manual"
    run(api, engine, script("two"), "c2")
    data(post_json(api, "/api/v1/agent/primary/sessions/c2/compact",
                   {"reason": "before a long task", "session_total_tokens_reset": 42}))
    assert data(api.get("/api/v1/agent/primary/sessions/c2"))["session_total_tokens"] == 42
    # The next request's context starts from the newest summary.
    rid = run(api, engine, script("three"), "c2")
    loaded = next(e for e in engine.events(rid) if e.event_type == "runtime.context.loaded")
    assert loaded.payload["history_turns"] == 1


def test_compact_errors(api, engine):
    run(api, engine, script("one"), "c3")
    url = "/api/v1/agent/primary/sessions/c3/compact"
    for body in ({"session_total_tokens_reset": -1}, {"session_total_tokens_reset": "5"},
                 {"session_total_tokens_reset": True}, {"reason": 5}, {"reason": "x" * 65},
                 {"reason": "a\ud800"}, {"reason": "a\u0000"}, {"session_total_tokens_reset": 2**63}):
        assert_error(post_json(api, url, body), 422, "VALIDATION_ERROR")
    assert_error(post_json(api, "/api/v1/agent/ghost/sessions/c3/compact", {}), 404, "AGENT_NOT_FOUND")
    assert_error(post_json(api, "/api/v1/agent/primary/sessions/nope/compact", {}), 404, "SESSION_NOT_FOUND")
    assert_error(api.get(url), 405, "METHOD_NOT_ALLOWED")
    data(post_json(api, url, {}))
    error = assert_error(post_json(api, url, {}), 409, "NOTHING_TO_COMPACT")
    assert "since the last summary" in error["message"]


def test_compact_is_in_the_openapi_schema(api, engine):
    paths = json.loads(api.get("/api/v1/schema/?format=json").content)["paths"]
    assert "post" in paths["/api/v1/agent/{agent_id}/sessions/{session_id}/compact"]


# -- memory search --------------------------------------------------------------------------


@pytest.fixture
def searchable(api, engine):
    ids = {
        "fox3": run(api, engine, script("fox fox fox"), "m1"),
        "fox1": run(api, engine, script("a long answer that mentions the fox only once among many other words"), "m1"),
        "unicode": run(api, engine, script("Café au lait ☕ 日本語"), "m2"),
        "bobby": run(api, engine, script("Robert'); DROP TABLE students;--"), "m2"),
        "helper": run(api, engine, script("the helper saw a fox"), "m1", agent="helper"),
    }
    return {k: turn_id(engine, v) for k, v in ids.items()}


def search(api, **params):
    return data(api.get(SEARCH, params))


def test_search_ranks_and_normalises_scores(api, searchable):
    found = search(api, q="@agent: fox", app_id="primary")
    results = found["results"]
    assert [r["turn_id"] for r in results] == [searchable["fox3"], searchable["fox1"]]
    assert results[0]["similarity_score"] == 1.0 and 0.0 < results[1]["similarity_score"] < 1.0
    assert all(set(r) == {"turn_id", "session_id", "similarity_score", "preview"} for r in results)
    assert (found["app_id"], found["session_id"], found["query"], found["limit"]) == ("primary", None, "@agent: fox", 10)


def test_search_filters_by_app_and_session(api, searchable):
    everyone = {r["turn_id"] for r in search(api, q="@agent:fox")["results"]}
    assert everyone == {searchable["fox3"], searchable["fox1"], searchable["helper"]}
    assert [r["turn_id"] for r in search(api, q="@agent:fox", app_id="helper")["results"]] == [searchable["helper"]]
    assert search(api, q="@agent:fox", app_id="primary", session_id="m2")["results"] == []
    assert len(search(api, q="@agent:fox", session_id="m1")["results"]) == 3
    assert len(search(api, q="@agent:fox", limit="1")["results"]) == 1


@pytest.mark.parametrize("q", ["@agent: café", "@agent: 日本語", "@agent: CAFÉ"])
def test_search_handles_unicode(api, searchable, q):
    assert [r["turn_id"] for r in search(api, q=q)["results"]] == [searchable["unicode"]]


@pytest.mark.parametrize("q", [
    "@agent: Robert'); DROP TABLE students;--",
    "@agent: ' OR 1=1 --",
    '@user: "; DELETE FROM mash_runtime_memoryturn; --',
    "@agent: C++ && (fox) NEAR/3 -x* ^~ {agent_response}: [] \\",
    "@user: %_%",
    "@agent: ☕☕",
])
def test_search_treats_odd_queries_as_text(api, searchable, q):
    before = MemoryTurn.objects.count()
    found = search(api, q=q)["results"]
    assert MemoryTurn.objects.count() == before
    assert all(0.0 <= r["similarity_score"] <= 1.0 and len(r["preview"]) <= 200 for r in found)


def test_search_finds_injection_shaped_text_literally(api, searchable):
    found = search(api, q="@agent: Robert'); DROP TABLE students;--")["results"]
    assert [r["turn_id"] for r in found] == [searchable["bobby"]]
    assert found[0]["preview"] == "Robert'); DROP TABLE students;--"


def test_search_previews_are_capped(api, engine):
    text = "filler words " * 30 + "the needle sits here " + "more filler " * 30
    run(api, engine, script(text), "m3")
    [hit] = search(api, q="@agent: needle")["results"]
    assert len(hit["preview"]) <= 200 and "needle" in hit["preview"]


@pytest.mark.parametrize("q", ["fox", "@bot: fox", "@agent:", "@user:   ", ""])
def test_search_validation(api, engine, q):
    assert_error(api.get(SEARCH, {"q": q}), 400, "SEARCH_VALIDATION_ERROR")


def test_search_limit_validation(api, engine):
    assert_error(api.get(SEARCH, {"q": "@agent: fox", "limit": "0"}), 422, "VALIDATION_ERROR")
    assert_error(api.get(SEARCH, {"q": "@agent: fox", "limit": "many"}), 422, "VALIDATION_ERROR")


# -- signals --------------------------------------------------------------------------------


class AnswerChars(SignalCollector):
    name = "answer_chars"
    value_type = "int"
    description = "Characters in the answer."

    def collect(self, context):
        return len(context.result.text)


class Broken(SignalCollector):
    name = "broken"
    value_type = "int"
    description = "Always fails."

    def collect(self, context):
        raise RuntimeError("boom")


@pytest.fixture
def custom_collectors():
    register_signal_collector(AnswerChars())
    register_signal_collector(Broken())
    yield
    unregister_signal_collector("answer_chars")
    unregister_signal_collector("broken")


def test_signals_route_exposes_the_builtin_definitions(api, engine):
    run(api, engine, script("hi"), "sg")
    body = data(api.get("/api/v1/agent/primary/sessions/sg/signals"))
    assert set(body["definitions"]) == {"unused_tools", "unused_tool_tokens"}
    assert body["definitions"]["unused_tool_tokens"]["value_type"] == "int"
    turn = body["turns"][0]
    assert isinstance(turn["signals"]["unused_tool_tokens"], int) and turn["signals"]["unused_tool_tokens"] > 0


def test_a_host_app_can_register_signal_collectors(api, engine, custom_collectors):
    rid = run(api, engine, script("twelve chars"), "sg2")
    assert engine.request(rid).status == "completed"  # a failing collector does not fail the request
    body = data(api.get("/api/v1/agent/primary/sessions/sg2/signals"))
    definition = body["definitions"]["answer_chars"]
    assert definition["name"] == "answer_chars" and definition["value_type"] == "int"
    assert definition["description"] == "Characters in the answer." and definition["persisted"] is True
    assert isinstance(definition["computed_at"], float)
    signals = body["turns"][0]["signals"]
    assert signals["answer_chars"] == len("twelve chars") and "broken" not in signals
    assert {"unused_tools", "unused_tool_tokens"} <= set(signals)
    # The completed event carries them too.
    completed = engine.events(rid)[-1].payload
    assert completed["response"]["signals"]["answer_chars"] == 12


def test_signal_collector_decorator_and_duplicates(api, engine):
    from mash_runtime.memory.turn_signals import signal_collector, signal_definitions

    @signal_collector("steps_taken", value_type="int", description="Agent loop steps.")
    def steps_taken(ctx):
        return ctx.result.steps

    try:
        register_signal_collector(AnswerChars())
        with pytest.raises(ValueError):
            register_signal_collector(AnswerChars())
        assert signal_definitions()["steps_taken"] == {"name": "steps_taken", "value_type": "int",
                                                       "description": "Agent loop steps.", "persisted": True}
        run(api, engine, script("hello"), "sg3")
        turn = data(api.get("/api/v1/agent/primary/sessions/sg3/signals"))["turns"][0]
        assert turn["signals"]["steps_taken"] == 1
    finally:
        unregister_signal_collector("steps_taken")
        unregister_signal_collector("answer_chars")
    assert "steps_taken" not in signal_definitions()
