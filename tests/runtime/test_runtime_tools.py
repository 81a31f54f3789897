"""The runtime memory tools (`search_conversations`, `get_full_turn_message`) through a
scripted agent in the in-process engine."""

from __future__ import annotations

import json
import uuid

import pytest

from mash_runtime import HostBuilder, SubAgentMetadata
from mash_runtime.host import set_host
from mash_runtime.models import MemoryTurn
from mash_runtime.services import answer_interaction
from tests.apps.engine_host import HelperSpec, ScriptedSpec


class MemorySpec(ScriptedSpec):
    agent_id = "primary"

    def enable_runtime_tools(self) -> bool:
        return True


class MemoryHelperSpec(HelperSpec):
    def enable_runtime_tools(self) -> bool:
        return True


def build_host():
    return (
        HostBuilder()
        .primary(MemorySpec())
        .subagent(MemoryHelperSpec(), metadata=SubAgentMetadata(display_name="Helper", description="Helps"))
        .build()
    )


@pytest.fixture
def engine(engine, settings):
    settings.MASH_HOST_APP = "tests.runtime.test_runtime_tools:build_host"
    set_host(None)
    return engine


def tool(name, **arguments):
    return {"name": name, "arguments": arguments}


def tool_results(engine, rid, name):
    return [e.payload["result"] for e in engine.events(rid)
            if e.event_type == "runtime.tool.call.completed" and e.payload["tool_name"] == name]


def seed(engine):
    fox = engine.run({"script": ["The red fox lives at the edge of the forest."]}, session_id="s1")
    pool = engine.run({"script": ["Size the connection pool at twice the cores."]}, session_id="s1")
    other = engine.run({"script": ["A fox was also seen in another session."]}, session_id="s2")
    assert fox.status == pool.status == other.status == "completed"
    return fox, pool, other


def test_the_tools_are_registered_only_when_the_spec_enables_them(engine, settings):
    from mash_runtime.run.prepare import build_agent
    from mash_runtime.host import get_host

    agent = build_agent(get_host().get("primary"))
    assert {"search_conversations", "get_full_turn_message"} <= set(agent.tools.names)
    settings.MASH_HOST_APP = "tests.apps.engine_host:build_host"
    set_host(None)
    assert "search_conversations" not in build_agent(get_host().get("primary")).tools


def test_search_conversations_through_a_scripted_agent(engine):
    fox, pool, other = seed(engine)
    req = engine.run({"script": [
        {"tool_calls": [tool("search_conversations", query="fox"),
                        tool("search_conversations", query="@agent: fox", scope="app", limit=5),
                        tool("search_conversations", query="@user: fox")]},
        "done",
    ]}, session_id="s1")
    assert req.status == "completed"
    session_scope, app_scope, user_only = [json.loads(r["content"]) for r in
                                           tool_results(engine, req.pk, "search_conversations")]
    assert session_scope["scope"] == "session" and session_scope["result_count"] == 1
    hit = session_scope["results"][0]
    assert hit["turn_id"] == str(fox.trace_id) and hit["session_id"] == "s1"
    # "fox" is in both columns of that turn (the user message is its JSON script): the best one counts.
    turn = MemoryTurn.objects.get(turn_id=fox.trace_id)
    assert hit["score"] == 1.0 and hit["preview"] == getattr(turn, hit["matched_in"])
    assert {r["session_id"] for r in app_scope["results"]} == {"s1", "s2"}
    assert all(0.0 <= r["score"] <= 1.0 and len(r["preview"]) <= 200 for r in app_scope["results"])
    # The user messages are JSON scripts; "fox" is in the current session's first one.
    assert [r["turn_id"] for r in user_only["results"]] == [str(fox.trace_id)]

    events = engine.events(req.pk)
    types = [e.event_type for e in events]
    assert types.count("memory.search.started") == 3 and types.count("memory.search.completed") == 3
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    started = next(e for e in events if e.event_type == "memory.search.started")
    completed = next(e for e in events if e.event_type == "memory.search.completed")
    assert started.payload["query"] == "fox" and started.payload["scope"] == "session"
    assert completed.payload["result_count"] == 1 and completed.payload["scope"] == "session"
    assert isinstance(completed.payload["duration_ms"], int)
    # Reported inside the step, before the tool's own completion event.
    first_tool_done = types.index("runtime.tool.call.completed")
    assert types.index("runtime.llm.think.completed") < types.index("memory.search.started") < first_tool_done
    assert started.wire_data()["event_type"] == "memory.search.started"  # an agent.trace frame


def test_search_errors_are_tool_errors(engine):
    seed(engine)
    req = engine.run({"script": [
        {"tool_calls": [tool("search_conversations", query="@bot: fox"),
                        tool("search_conversations", query="@agent:"),
                        tool("search_conversations", query="fox", scope="galaxy"),
                        tool("search_conversations", query="'; DROP TABLE mash_runtime_memoryturn; --"),
                        tool("search_conversations", query="C++ && (fox) -- 東京 ☕", limit="3")]},
        "done",
    ]}, session_id="s1")
    assert req.status == "completed"
    results = tool_results(engine, req.pk, "search_conversations")
    assert [r["is_error"] for r in results] == [True, True, True, False, False]
    assert results[0]["metadata"]["error_code"] == "SEARCH_VALIDATION_ERROR" and "@user:" in results[0]["content"]
    assert json.loads(results[3]["content"])["result_count"] == 0
    assert json.loads(results[4]["content"])["result_count"] == 1
    assert MemoryTurn.objects.filter(session__session_id="s1").count() == 3


def test_get_full_turn_message_with_missing_pairs(engine):
    fox, pool, other = seed(engine)
    long_text = "x" * 5000
    long_req = engine.run({"script": [long_text]}, session_id="s1")
    unknown = str(uuid.uuid4())
    pairs = [
        {"session_id": "s1", "turn_id": str(fox.trace_id)},
        {"session_id": "s2", "turn_id": str(other.trace_id)},
        {"session_id": "s1", "turn_id": str(long_req.trace_id)},
        {"session_id": "s1", "turn_id": unknown},  # no such turn
        {"session_id": "s1", "turn_id": str(other.trace_id)},  # turn of another session
        {"session_id": "s1", "turn_id": "not-a-uuid"},
        {"session_id": "s1", "turn_id": str(fox.trace_id)},  # repeated
    ]
    req = engine.run({"script": [{"tool_calls": [tool("get_full_turn_message", pairs=pairs),
                                                 tool("get_full_turn_message", pairs=[])]}, "done"]},
                     session_id="s1")
    assert req.status == "completed"
    result, empty = tool_results(engine, req.pk, "get_full_turn_message")
    assert empty["is_error"] is True
    body = json.loads(result["content"])
    assert set(body) == {"requested_count", "found_count", "turns", "missing_pairs"}
    assert (body["requested_count"], body["found_count"]) == (6, 3)
    assert [t["turn_id"] for t in body["turns"]] == [str(fox.trace_id), str(other.trace_id), str(long_req.trace_id)]
    first = body["turns"][0]
    assert first["session_id"] == "s1" and first["kind"] == "turn"
    assert first["agent_response"] == "The red fox lives at the edge of the forest."
    assert json.loads(first["user_message"]) == {"script": ["The red fox lives at the edge of the forest."]}
    assert body["turns"][2]["agent_response"] == long_text  # full text, not a preview
    assert body["missing_pairs"] == [
        {"session_id": "s1", "turn_id": unknown},
        {"session_id": "s1", "turn_id": str(other.trace_id)},
        {"session_id": "s1", "turn_id": "not-a-uuid"},
    ]


def test_turns_of_other_agents_are_not_readable(engine):
    fox, _, _ = seed(engine)
    # The helper agent (a subagent with the tools) cannot read the primary's turns.
    helper = engine.run({"script": [
        {"tool_calls": [tool("get_full_turn_message", pairs=[{"session_id": "s1", "turn_id": str(fox.trace_id)}]),
                        tool("search_conversations", query="fox", scope="app")]},
        "done"]}, agent_id="helper", session_id="s1")
    fetched, searched = [json.loads(r["content"]) for r in
                         tool_results(engine, helper.pk, "get_full_turn_message")
                         + tool_results(engine, helper.pk, "search_conversations")]
    assert fetched["found_count"] == 0 and len(fetched["missing_pairs"]) == 1
    assert searched["result_count"] == 0


def test_a_replayed_search_step_emits_no_second_events(engine, tmp_path):
    seed(engine)
    target = tmp_path / "approved.txt"
    rid = engine.submit({"script": [
        {"tool_calls": [tool("search_conversations", query="fox")]},
        {"tool_calls": [tool("write_file", path=str(target), text="ok")]},
        "done",
    ]}, session_id="s1")
    engine.drain()
    assert engine.request(rid).status == "awaiting_input"
    from mash_runtime.models import Interaction

    itr = Interaction.objects.get(request_id=rid, status="pending")
    answer_interaction(rid, itr.interaction_id, "approve")
    engine.drain()
    assert engine.request(rid).status == "completed" and target.read_text() == "ok"
    types = engine.types(rid)
    assert types.count("memory.search.started") == 1 and types.count("memory.search.completed") == 1
