"""Compaction: automatic past the token threshold, manual through the service, and the
history that follows a checkpoint."""

from __future__ import annotations

import pytest

from mash_core.config import AgentConfig
from mash_core.llm import ScriptedProvider
from mash_core.llm.base import TokenUsage
from mash_runtime import HostBuilder
from mash_runtime.memory.compaction import (
    SECTIONS,
    NothingToCompact,
    compact_session,
    compact_session_task,
    ensure_sections,
    plan_compaction,
    store_summary,
)
from mash_runtime.errors import Conflict
from mash_runtime.host import get_host, set_host
from mash_runtime.memory.history import SUMMARY_USER_MESSAGE
from mash_runtime.models import MemoryTurn, Session
from mash_runtime.tasks import COMPACT_SESSION
from tests.apps.engine_host import ScriptedSpec, play, structured_for

CANNED_SUMMARY = (
    "## Summary\nThe user asked for three long answers about x.\n\n"
    "## Decisions\n- Keep answering with x.\n\n"
    "## Open questions\n- Why x?\n\n"
    "## User preferences\n- Likes long answers."
)
CALLS: list[tuple[str, object]] = []


def play_or_summarise(request):
    if request.metadata.get("purpose") == "compaction":
        CALLS.append(("compaction", request))
        return CANNED_SUMMARY
    CALLS.append(("turn", request))
    return play(request)


class CompactingSpec(ScriptedSpec):
    agent_id = "primary"

    def build_llm(self):
        return ScriptedProvider(play_or_summarise, structured=structured_for)

    def build_agent_config(self) -> AgentConfig:
        # Each request below costs 10 input + 100 output tokens: the 3rd reaches 300.
        return AgentConfig(app_id=self.agent_id, system_prompt="You follow scripts.", max_steps=8,
                           compaction_token_threshold=300, compaction_turn_limit=2, conversation_history_turns=5)


def build_host():
    return HostBuilder().primary(CompactingSpec()).build()


class Tasks:
    """Diverts compaction tasks from the engine harness (whose drain ignores them)."""

    def __init__(self, engine):
        self.engine = engine
        self.compactions: list[tuple] = []

    def record(self, func, *args, **kwargs):
        if func == COMPACT_SESSION:
            self.compactions.append(args)
            return "captured"
        return self.engine.record(func, *args, **kwargs)

    def run_compactions(self) -> list[str]:
        outcomes = []
        while self.compactions:
            outcomes.append(compact_session_task(*self.compactions.pop(0)))
        return outcomes


@pytest.fixture
def tasks(engine, settings, monkeypatch):
    settings.MASH_HOST_APP = "tests.runtime.test_compaction:build_host"
    set_host(None)
    CALLS.clear()
    tasks = Tasks(engine)
    monkeypatch.setattr("django_q.tasks.async_task", tasks.record)
    return tasks


LONG = "x" * 400  # 100 output tokens


def ask(engine, text=LONG, session_id="s1"):
    req = engine.run({"script": [text]}, session_id=session_id)
    assert req.status == "completed", req.error
    return req


def session_total(session_id="s1") -> int:
    return Session.objects.get(session_id=session_id).session_total_tokens


def test_auto_compaction_triggers_at_the_threshold(engine, tasks):
    _first, second = ask(engine, "first " + LONG[:394]), ask(engine, "second " + LONG[:393])
    assert session_total() == 220 and tasks.compactions == []
    third = ask(engine, "third " + LONG[:394])
    assert session_total() == 330
    session_pk = Session.objects.get(session_id="s1").pk
    assert tasks.compactions == [(session_pk, "auto")]
    assert tasks.run_compactions() == ["compacted"]

    summary = MemoryTurn.objects.get(kind=MemoryTurn.Kind.SUMMARY)
    assert summary.agent_response == CANNED_SUMMARY
    assert summary.user_message == SUMMARY_USER_MESSAGE and summary.session.session_id == "s1"
    assert summary.metadata["reason"] == "auto" and summary.metadata["compacted_turns"] == 2  # compaction_turn_limit
    assert summary.metadata["first_turn_id"] == str(second.trace_id)
    assert summary.metadata["last_turn_id"] == str(third.trace_id)
    assert summary.metadata["session_total_tokens_before"] == 330
    assert summary.session_total_tokens == 0 and session_total() == 0  # reset
    assert summary.created_at > MemoryTurn.objects.get(turn_id=third.trace_id).created_at

    # One LLM call with the agent's own provider; the prompt carries the turns and asks for the sections.
    [(kind, request)] = [c for c in CALLS if c[0] == "compaction"]
    prompt = request.messages[0].text
    assert "second" in prompt and "third" in prompt and "first " not in prompt
    assert all(f"## {section}" in request.system for section in SECTIONS)

    # The next request's history starts from the summary.
    CALLS.clear()
    fourth = ask(engine, "fourth")
    turn_request = next(r for kind, r in CALLS if kind == "turn")
    texts = [m.text for m in turn_request.messages]
    assert texts[:2] == [SUMMARY_USER_MESSAGE, CANNED_SUMMARY]
    assert not any("first" in t or "second" in t or "third" in t for t in texts[2:])
    loaded = next(e for e in engine.events(fourth.pk) if e.event_type == "runtime.context.loaded")
    assert loaded.payload["history_turns"] == 1
    assert session_total() == fourth.total_tokens  # counted from the reset
    assert tasks.compactions == []

    # ... and later turns follow it.
    CALLS.clear()
    ask(engine, "fifth")
    texts = [m.text for m in next(r for kind, r in CALLS if kind == "turn").messages]
    assert texts[:3] == [SUMMARY_USER_MESSAGE, CANNED_SUMMARY, '{"script": ["fourth"]}']

    # The history route still lists every turn, the checkpoint in its place.
    from mash_runtime.read_services import session_history

    kinds = [t["metadata"].get("kind", "turn") for t in session_history("primary", "s1")["turns"]]
    assert kinds == ["turn", "turn", "turn", "summary", "turn", "turn"]


def test_a_second_task_for_the_same_crossing_does_nothing(engine, tasks):
    for _ in range(3):
        ask(engine)
    session_pk = Session.objects.get(session_id="s1").pk
    tasks.compactions.append((session_pk, "auto"))  # e.g. a duplicate delivery
    assert tasks.run_compactions() == ["compacted", "below_threshold"]
    assert MemoryTurn.objects.filter(kind=MemoryTurn.Kind.SUMMARY).count() == 1


def test_threshold_zero_never_compacts(engine, settings, monkeypatch):
    enqueued = []
    monkeypatch.setattr("django_q.tasks.async_task",
                        lambda func, *a, **k: enqueued.append(func) or engine.record(func, *a, **k))
    for _ in range(4):
        engine.run({"script": [LONG]}, session_id="s1")
    assert COMPACT_SESSION not in enqueued
    assert not MemoryTurn.objects.filter(kind=MemoryTurn.Kind.SUMMARY).exists()


def test_manual_compaction_and_a_second_checkpoint(engine, tasks):
    ask(engine, "alpha")
    result = compact_session("primary", "s1", reason="manual", session_total_tokens_reset=7)
    first = MemoryTurn.objects.get(turn_id=result["turn_id"])
    assert result["summary_text"] == CANNED_SUMMARY == first.agent_response
    assert first.metadata["reason"] == "manual" and session_total() == 7
    with pytest.raises(NothingToCompact) as info:
        compact_session("primary", "s1")
    assert info.value.status == 409 and info.value.code == "NOTHING_TO_COMPACT"

    ask(engine, "beta")
    CALLS.clear()
    second = compact_session("primary", "s1")
    prompt = next(r for kind, r in CALLS if kind == "compaction").messages[0].text
    assert "<previous_summary>" in prompt and "Likes long answers" in prompt and "beta" in prompt
    assert "alpha" not in prompt
    summary = MemoryTurn.objects.get(turn_id=second["turn_id"])
    assert summary.metadata["previous_summary_id"] == result["turn_id"] and session_total() == 0

    CALLS.clear()
    ask(engine, "gamma")
    texts = [m.text for m in next(r for kind, r in CALLS if kind == "turn").messages]
    assert texts[:2] == [SUMMARY_USER_MESSAGE, CANNED_SUMMARY] and len(texts) == 3  # newest summary only


def test_turns_arriving_during_the_summary_call_stay_after_the_checkpoint(engine, tasks):
    ask(engine, "one")
    hosted = get_host().get("primary")
    session = Session.objects.get(session_id="s1")
    plan = plan_compaction(hosted, session)
    late = ask(engine, "late")  # completes while the summary is being written
    arrived = late.total_tokens
    summary = store_summary(plan, CANNED_SUMMARY, TokenUsage(5, 5), "scripted", reason="auto", reset=0)
    assert session_total() == arrived
    late_turn = MemoryTurn.objects.get(turn_id=late.trace_id)
    assert summary.created_at < late_turn.created_at
    CALLS.clear()
    ask(engine, "next")
    texts = [m.text for m in next(r for kind, r in CALLS if kind == "turn").messages]
    assert texts[:3] == [SUMMARY_USER_MESSAGE, CANNED_SUMMARY, '{"script": ["late"]}']


def test_a_concurrent_checkpoint_wins(engine, tasks):
    ask(engine, "one")
    hosted = get_host().get("primary")
    session = Session.objects.get(session_id="s1")
    plan_a, plan_b = plan_compaction(hosted, session), plan_compaction(hosted, session)
    store_summary(plan_a, CANNED_SUMMARY, TokenUsage(), "m", reason="auto", reset=0)
    with pytest.raises(Conflict):
        store_summary(plan_b, CANNED_SUMMARY, TokenUsage(), "m", reason="auto", reset=0)
    assert MemoryTurn.objects.filter(kind=MemoryTurn.Kind.SUMMARY).count() == 1


def test_unknown_sessions_and_agents(engine, tasks):
    from mash_runtime.errors import NotFound

    with pytest.raises(NotFound) as info:
        compact_session("primary", "nope")
    assert info.value.code == "SESSION_NOT_FOUND"
    with pytest.raises(NotFound) as info:
        compact_session("ghost", "s1")
    assert info.value.code == "AGENT_NOT_FOUND"
    assert compact_session_task(999999) == "missing"


@pytest.mark.parametrize("text,expected", [
    (CANNED_SUMMARY, CANNED_SUMMARY),  # already in shape: kept as is
    ("Just prose about the chat.",  # no headings: it all becomes the summary, the rest "None."
     "## Summary\nJust prose about the chat.\n\n## Decisions\nNone.\n\n## Open questions\nNone.\n\n"
     "## User preferences\nNone."),
    # Near-miss headings (bold, a colon, another level) are recognised and put in order.
    ("# summary\nprose\n**Decisions**\n- a\nOpen questions:\n- b",
     "## Summary\nprose\n## Decisions\n- a\n## Open questions\n- b\n\n## User preferences\nNone."),
])
def test_ensure_sections(text, expected):
    out = ensure_sections(text)
    assert out == expected
    assert [line for line in out.splitlines() if line.startswith("## ")] == [f"## {s}" for s in SECTIONS]
