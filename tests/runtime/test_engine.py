import json
from datetime import timedelta

import pytest
from django.utils import timezone

from mash_runtime.errors import Conflict, Gone, NotFound, ServiceError
from mash_runtime.models import Interaction, MemoryTurn, Request, Session, StepCheckpoint
from mash_runtime.services import (
    answer_interaction,
    cancel_request,
    get_request_status,
    resume_request,
    submit_request,
)


def tool(name, **arguments):
    return {"name": name, "arguments": arguments}


def assert_contiguous(engine, rid):
    seqs = [e.seq for e in engine.events(rid)]
    assert seqs == list(range(1, len(seqs) + 1))
    terminal = [t for t in engine.types(rid) if t in ("request.completed", "request.error")]
    assert len(terminal) == 1, terminal


def pending_interaction(rid) -> Interaction:
    return Interaction.objects.get(request_id=rid, status="pending")


def test_it_runs_a_request_to_completion(engine):
    req = engine.run({"script": ["hello there"]}, session_id="s1")
    assert req.status == "completed"
    types = engine.types(req.pk)
    assert types[:3] == ["request.accepted", "request.started", "runtime.context.loaded"]
    assert types[-2:] == ["runtime.turn.persisted", "request.completed"]
    assert "runtime.llm.think.completed" in types and "llm.request.complete" in types
    completed = engine.events(req.pk)[-1].payload
    assert completed["response"]["text"] == "hello there"
    assert completed["turn_id"] == str(req.trace_id) == completed["trace_id"]
    turn = MemoryTurn.objects.get(turn_id=req.trace_id)
    assert turn.agent_response == "hello there" and turn.session.session_id == "s1"
    assert completed["session_total_tokens"] == Session.objects.get(pk=req.session_id).session_total_tokens > 0
    assert set(turn.signals) == {"unused_tools", "unused_tool_tokens"}
    assert "append_line" in turn.signals["unused_tools"]
    assert_contiguous(engine, req.pk)


def test_it_uses_the_agents_default_session(engine):
    rid = engine.submit({"script": ["x"]})
    assert engine.request(rid).session.session_id == "primary:default"


def test_it_rejects_bad_submissions(engine):
    with pytest.raises(NotFound) as info:
        submit_request("ghost", "hi")
    assert info.value.code == "AGENT_NOT_FOUND"
    # A blank message is the API serializer's to refuse (tests/api): the service takes it checked.
    with pytest.raises(ServiceError) as info:
        submit_request("primary", "hi", structured_output={"type": "string"})
    assert info.value.code == "INVALID_STRUCTURED_OUTPUT"
    assert Request.objects.count() == 0


def test_it_sends_history_of_earlier_turns(engine, tmp_path):
    engine.run({"script": ["first answer"]}, session_id="h")
    req = engine.run("second question", session_id="h")
    # The echo script answers with the current message; history reached the model as context.
    loaded = [e for e in engine.events(req.pk) if e.event_type == "runtime.context.loaded"][0]
    assert loaded.payload["history_turns"] == 1


def test_it_runs_tools_and_checkpoints_each_step(engine, tmp_path):
    out = tmp_path / "out.txt"
    req = engine.run({"script": [{"tool_calls": [tool("append_line", path=str(out), line="one")]}, "done"]})
    assert req.status == "completed"
    assert out.read_text() == "one\n"
    keys = set(StepCheckpoint.objects.filter(request=req).values_list("step_key", flat=True))
    assert keys == {"plan.0", "tool.0.0", "plan.1"}
    completed = [e for e in engine.events(req.pk) if e.event_type == "runtime.tool.call.completed"][0]
    assert completed.payload["tool_name"] == "append_line"
    assert completed.payload["result"]["content"] == "appended one"
    assert req.input_tokens > 0


def test_it_replays_finished_steps_after_parking_for_approval(engine, tmp_path):
    out, target = tmp_path / "out.txt", tmp_path / "approved.txt"
    rid = engine.submit({"script": [
        {"tool_calls": [tool("append_line", path=str(out), line="one")]},
        {"tool_calls": [tool("write_file", path=str(target), text="yes")]},
        "finished",
    ]})
    assert engine.drain() == ["parked:input"]
    req = engine.request(rid)
    assert req.status == "awaiting_input" and not req.lease_owner
    assert get_request_status(rid)["status"] == "waiting_input"
    itr = pending_interaction(rid)
    create = [e for e in engine.events(rid) if e.event_type == "request.interaction.create"][0].payload
    assert create["interaction_id"] == itr.interaction_id and create["type"] == "approval"
    assert create["schema"] == {"type": "enum", "options": ["approve", "deny", "skip"]}
    assert create["timeout_seconds"] == 300
    assert answer_interaction(rid, itr.interaction_id, "approve") == {"ok": True, "interaction_id": itr.interaction_id}
    assert engine.drain() == ["completed"]
    assert out.read_text() == "one\n", "the finished tool must not run again"
    assert target.read_text() == "yes"
    types = engine.types(rid)
    assert types.count("request.started") == 1 and types.count("runtime.tool.call.completed") == 2
    assert types.index("request.interaction.create") < types.index("request.interaction.ack")
    assert_contiguous(engine, rid)


def test_it_denies_only_the_gated_call(engine, tmp_path):
    out, target = tmp_path / "out.txt", tmp_path / "never.txt"
    rid = engine.submit({"script": [
        {"tool_calls": [tool("write_file", path=str(target), text="no"), tool("append_line", path=str(out), line="ran")]},
        "ok",
    ]})
    engine.drain()
    answer_interaction(rid, pending_interaction(rid).interaction_id, "deny")
    engine.drain()
    assert engine.request(rid).status == "completed"
    assert not target.exists() and out.read_text() == "ran\n"
    results = [e.payload["result"] for e in engine.events(rid) if e.event_type == "runtime.tool.call.completed"]
    assert results[0] == {"content": "Tool execution denied by user (deny)", "is_error": True, "metadata": {}}
    assert results[1]["is_error"] is False


def test_it_validates_interaction_answers(engine, tmp_path):
    rid = engine.submit({"script": [{"tool_calls": [tool("write_file", path=str(tmp_path / "f"), text="x")]}, "ok"]})
    engine.drain()
    itr = pending_interaction(rid)
    with pytest.raises(NotFound):
        answer_interaction(rid, "itr_000000000000", "approve")
    with pytest.raises(ServiceError) as info:
        answer_interaction(rid, itr.interaction_id, "maybe")
    assert info.value.code == "INVALID_INTERACTION_RESPONSE"
    answer_interaction(rid, itr.interaction_id, "skip")
    with pytest.raises(Conflict):
        answer_interaction(rid, itr.interaction_id, "approve")
    engine.drain()
    results = [e.payload["result"] for e in engine.events(rid) if e.event_type == "runtime.tool.call.completed"]
    assert results[0]["content"] == "Tool execution denied by user (skip)"


def test_it_times_out_interactions_with_the_default_answer(engine, tmp_path):
    from mash_runtime.sweeper import sweep

    target = tmp_path / "f"
    rid = engine.submit({"script": [{"tool_calls": [tool("write_file", path=str(target), text="x")]}, "ok"]})
    engine.drain()
    itr = pending_interaction(rid)
    Interaction.objects.filter(pk=itr.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(Gone):
        answer_interaction(rid, itr.interaction_id, "approve")
    assert sweep()["interactions_timed_out"] == 0  # the late answer already timed it out
    engine.drain()
    ack = [e for e in engine.events(rid) if e.event_type == "request.interaction.ack"]
    assert len(ack) == 1 and ack[0].payload["timed_out"] is True and ack[0].payload["response"] == "deny"
    assert engine.request(rid).status == "completed" and not target.exists()


def test_the_sweeper_times_out_expired_interactions(engine, tmp_path):
    from mash_runtime.sweeper import sweep

    rid = engine.submit({"script": [{"tool_calls": [tool("AskUser", question="Name?")]}, "thanks"]})
    engine.drain()
    Interaction.objects.filter(request_id=rid).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert sweep()["interactions_timed_out"] == 1
    engine.drain()
    assert engine.request(rid).status == "completed"
    result = [e for e in engine.events(rid) if e.event_type == "runtime.tool.call.completed"][0].payload["result"]
    assert result["metadata"]["timed_out"] is True


def test_it_asks_the_user_and_passes_the_answer_on(engine):
    rid = engine.submit({"script": [
        {"tool_calls": [tool("AskUser", question="Pick", options=["red", "blue"])]},
        {"tool_calls": [tool("AskUser", question="Why?")]},
        "noted",
    ]})
    engine.drain()
    choice = pending_interaction(rid)
    assert choice.type == "choice" and choice.schema == {"type": "multi_select", "options": ["red", "blue"]}
    with pytest.raises(ServiceError):
        answer_interaction(rid, choice.interaction_id, ["green"])
    answer_interaction(rid, choice.interaction_id, ["blue"])
    engine.drain()
    info = pending_interaction(rid)
    assert info.type == "info" and info.timeout_seconds == 3600
    answer_interaction(rid, info.interaction_id, "because")
    engine.drain()
    results = [e.payload["result"]["content"] for e in engine.events(rid) if e.event_type == "runtime.tool.call.completed"]
    assert results == ["blue", "because"]
    assert engine.request(rid).status == "completed"


def test_it_fails_with_the_provider_error_and_resumes_from_checkpoints(engine, tmp_path):
    out, marker = tmp_path / "out.txt", tmp_path / "marker"
    plan = {
        "script": [{"tool_calls": [tool("append_line", path=str(out), line="one")]}, "recovered"],
        "llm_error": {"marker": str(marker), "times": 1, "transient": False},
    }
    req = engine.run(plan)
    assert req.status == "failed" and req.error_code == "LLM_UNAVAILABLE" and req.retryable is False
    error = engine.events(req.pk)[-1]
    assert error.event_type == "request.error"
    assert error.payload == {"request_id": str(req.pk), "agent_id": "primary", "session_id": "primary:default",
                             "status": "error", "error": "scripted failure", "error_code": "LLM_UNAVAILABLE",
                             "retryable": False}
    assert get_request_status(req.pk)["status"] == "failed"
    resumed = resume_request(req.pk)
    assert resumed["status"] == "resumed" and resumed["previous_status"] == "failed"
    engine.drain()
    req.refresh_from_db()
    assert req.status == "completed" and out.read_text() == "one\n"
    assert resume_request(req.pk)["status"] == "completed"


def test_it_retries_transient_provider_errors_inside_the_step(engine, tmp_path):
    marker = tmp_path / "marker"
    req = engine.run({"script": ["fine"], "llm_error": {"marker": str(marker), "times": 2, "transient": True}})
    assert req.status == "completed" and marker.read_text() == "3"


def test_it_returns_valid_structured_output(engine):
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    rid = engine.submit({"script": ["five"], "structured": {"n": 5}}, structured_output=schema)
    engine.drain()
    completed = engine.events(rid)[-1]
    assert completed.event_type == "request.completed"
    assert completed.payload["response"]["structured_output"] == {"n": 5}


def test_it_fails_invalid_structured_output(engine):
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    rid = engine.submit({"script": ["five"], "structured": {"n": "five"}}, structured_output=schema)
    engine.drain()
    req = engine.request(rid)
    assert req.status == "failed" and req.error_code == "INVALID_STRUCTURED_OUTPUT"


def test_it_runs_a_session_one_request_at_a_time_in_order(engine):
    first = engine.submit({"script": ["1"]}, session_id="q")
    second = engine.submit({"script": ["2"]}, session_id="q")
    other = engine.submit({"script": ["x"]}, session_id="other")
    engine.queue.clear()
    from tests.runtime.conftest import run_now

    assert run_now(second) == "waiting"
    assert run_now(second) == "waiting"
    assert engine.types(second).count("request.waiting") == 1
    assert run_now(other) == "completed"  # other sessions are not held up
    assert run_now(first) == "completed"
    # finishing `first` enqueued `second`
    assert engine.drain() == ["completed"]
    assert engine.request(second).status == "completed"
    assert "request.waiting" not in engine.types(first)


def test_it_cancels_a_request_that_is_not_running(engine, tmp_path):
    rid = engine.submit({"script": [{"tool_calls": [tool("write_file", path=str(tmp_path / "f"), text="x")]}, "ok"]})
    engine.drain()
    assert cancel_request(rid) == {"request_id": rid, "status": "cancelled"}
    req = engine.request(rid)
    assert req.status == "cancelled"
    error = engine.events(rid)[-1].payload
    assert error["error_code"] == "cancelled" and error["status"] == "error"
    assert Interaction.objects.get(request_id=rid).status == "cancelled"
    with pytest.raises(Gone):
        answer_interaction(rid, Interaction.objects.get(request_id=rid).interaction_id, "approve")
    assert cancel_request(rid)["status"] == "cancelled"
    assert engine.types(rid).count("request.error") == 1
    assert engine.drain() == []


def test_it_recovers_a_request_whose_worker_lease_expired(engine, tmp_path):
    from mash_runtime.run.lifecycle import claim
    from mash_runtime.run.state import RunState
    from mash_runtime.sweeper import sweep

    rid = engine.submit({"script": ["ok"]})
    engine.queue.clear()
    claimed = claim(rid, "otherhost:1:dead")
    assert isinstance(claimed, RunState)
    assert claim(rid, "me") == "leased"
    assert sweep()["recovered"] == 0  # lease still valid, owner on another host
    Request.objects.filter(pk=rid).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert sweep()["recovered"] == 1
    assert engine.drain() == ["completed"]
    req = engine.request(rid)
    assert req.recovery_attempts == 1
    assert get_request_status(rid)["recovery_attempts"] == 1


def test_it_recovers_at_once_when_the_lease_owner_process_is_dead(engine):
    import socket
    import subprocess

    from mash_runtime.run.lifecycle import claim
    from mash_runtime.sweeper import sweep

    dead = subprocess.Popen(["true"])
    dead.wait()
    rid = engine.submit({"script": ["ok"]})
    engine.queue.clear()
    claim(rid, f"{socket.gethostname()}:{dead.pid}:abcd")
    assert sweep()["recovered"] == 1
    assert engine.drain() == ["completed"]


def test_it_delegates_to_a_subagent_and_surfaces_its_questions(engine):
    child_plan = {"script": [{"tool_calls": [tool("AskUser", question="Which file?")]}, "helper done"]}
    rid = engine.submit({"script": [
        {"tool_calls": [tool("InvokeSubagent", agent_id="helper", prompt=json.dumps(child_plan))]},
        "primary done",
    ]}, session_id="main")
    engine.drain()
    parent = engine.request(rid)
    assert parent.status == "awaiting_subagent"
    child = Request.objects.get(parent=parent)
    assert child.status == "awaiting_input"
    assert child.session.session_id.startswith("subagent:helper:") and len(child.session.session_id.split(":")[2]) == 24
    surfaced = [e for e in engine.events(rid) if e.event_type == "request.interaction.create"]
    assert len(surfaced) == 1 and surfaced[0].payload["subagent_request_id"] == str(child.pk)
    # Answered through the parent's route.
    answer_interaction(rid, surfaced[0].payload["interaction_id"], "README.md")
    engine.drain()
    parent.refresh_from_db()
    child.refresh_from_db()
    assert child.status == "completed" and parent.status == "completed"
    types = engine.types(rid)
    assert "subagent.request.completed" in types and "runtime.subagent.call.completed" in types
    call = [e for e in engine.events(rid) if e.event_type == "runtime.subagent.call.completed"][0]
    assert call.payload["result"]["content"] == "helper done"
    assert engine.events(rid)[-1].payload["response"]["text"] == "primary done"
    # A second delegation from the same primary session reuses the subagent session.
    rid2 = engine.submit({"script": [
        {"tool_calls": [tool("InvokeSubagent", agent_id="helper", prompt=json.dumps({"script": ["again"]}))]}, "ok",
    ]}, session_id="main")
    engine.drain()
    assert Request.objects.get(parent_id=rid2).session_id == child.session_id
    assert_contiguous(engine, rid)


def test_it_reports_max_steps_as_an_answer(engine, tmp_path):
    loop = {"tool_calls": [tool("append_line", path=str(tmp_path / "f"), line="x")]}
    req = engine.run({"script": [loop] * 20})
    assert req.status == "completed"
    assert req.response["text"] == "Stopped after 8 steps without a final answer."


def test_it_renews_its_lease_through_a_step_longer_than_the_lease(engine, settings, tmp_path):
    from mash_runtime.sweeper import sweep

    settings.MASH_LEASE_SECONDS = 3
    out = tmp_path / "out.txt"
    rid = engine.submit({"script": [{"tool_calls": [tool("append_line", path=str(out), line="slow", sleep=4.5)]}, "ok"]})
    engine.queue.clear()
    import threading

    from tests.runtime.conftest import run_now

    outcome: list[str] = []
    worker = threading.Thread(target=lambda: outcome.append(run_now(rid)))
    worker.start()
    import time

    time.sleep(3.8)  # past the first lease's expiry: only renewal keeps it
    assert sweep()["recovered"] == 0
    worker.join(15)
    assert outcome == ["completed"]
    assert out.read_text() == "slow\n"


class GroupListener:
    """Joins a request's doorbell group and collects its rings, on one event loop of its own:
    a layer may keep its listener on the loop that joined (PostgreSQL's NOTIFY layer does;
    a web process streams on one loop)."""

    def __init__(self, rid: str) -> None:
        import asyncio

        from channels.layers import get_channel_layer

        from mash_runtime.doorbell import request_group

        self.layer = get_channel_layer()
        self.loop = asyncio.new_event_loop()
        self.channel = self.loop.run_until_complete(self.layer.new_channel())
        self.loop.run_until_complete(self.layer.group_add(request_group(rid), self.channel))

    def rings(self) -> list[dict]:
        """Every ring that arrives until none has for half a second."""
        import asyncio

        async def collect():
            seen = []
            while True:
                try:
                    seen.append(await asyncio.wait_for(self.layer.receive(self.channel), 0.5))
                except asyncio.TimeoutError:
                    return seen

        try:
            return self.loop.run_until_complete(collect())
        finally:
            if hasattr(self.layer, "close"):
                self.loop.run_until_complete(self.layer.close())
            self.loop.close()


def test_it_rings_the_doorbell_after_its_commits(engine):
    """A step slower than the linger: the claim's events and those before the step ring
    while it runs, the rest at the end; each ring carries its events, in order."""
    rid = engine.submit({"script": [{"text": "ding", "delay": 0.3}]})
    listener = GroupListener(rid)
    engine.drain()

    rings = listener.rings()
    assert all(ring["type"] == "mash.doorbell" and ring["request_id"] == rid for ring in rings)
    events = engine.events(rid)
    assert len(rings) == 2 and rings[-1]["seq"] == events[-1].seq
    carried = [event["seq"] for ring in rings for event in ring["events"]]
    assert carried == [event.seq for event in events[1:]]  # all but "accepted", each once, in order
    assert rings[0]["events"][0]["event_type"] == "request.started"


def test_a_primary_with_subagents_gets_a_routing_block_and_the_delegate_tool(engine):
    from mash_runtime.host import get_host
    from mash_runtime.run.prepare import build_agent

    agent = build_agent(get_host().get("primary"))
    assert "InvokeSubagent" in agent.tools
    prompt = agent.system_prompt()
    assert "## Subagents" in prompt and "- helper (Helper): Runs helper scripts" in prompt
    helper = build_agent(get_host().get("helper"))
    assert "InvokeSubagent" not in helper.tools and helper.system_prompt() == "You follow scripts."


def test_a_request_queued_behind_another_sees_its_turn_in_history(engine):
    first = engine.submit({"script": ["first answer"]}, session_id="q-hist")
    second = engine.submit("what did you say?", session_id="q-hist")  # submitted before `first` ran
    engine.drain()
    loaded = [e for e in engine.events(second) if e.event_type == "runtime.context.loaded"][0]
    assert loaded.payload["history_turns"] == 1
    assert engine.request(first).status == engine.request(second).status == "completed"


def test_the_sweeper_wakes_a_parked_request_whose_wake_up_was_lost(engine, tmp_path):
    from mash_runtime.sweeper import sweep

    waiting = engine.submit({"script": [{"tool_calls": [tool("write_file", path=str(tmp_path / "a"), text="x")]},
                                        "ok"]}, session_id="w1")
    still = engine.submit({"script": [{"tool_calls": [tool("write_file", path=str(tmp_path / "b"), text="x")]},
                                      "ok"]}, session_id="w2")
    engine.drain()
    answer_interaction(waiting, pending_interaction(waiting).interaction_id, "approve")
    engine.queue.clear()  # the answer's enqueue is lost
    assert sweep()["requeued"] == 1  # only the answered one; the other still waits for a person
    assert engine.drain() == ["completed"]
    assert engine.request(waiting).status == "completed" and engine.request(still).status == "awaiting_input"


def test_events_before_a_quick_step_share_its_checkpoint_transaction(engine):
    """Events buffered before a step need no commit of their own when the step is quick:
    they go out with that step's checkpoint, so a one-answer run commits twice (claim, end)
    and rings once, at the end, for the claim's events too."""
    rid = engine.submit({"script": ["quick"]})
    listener = GroupListener(rid)
    engine.drain()

    events = engine.events(rid)
    assert [e.event_type for e in events][:3] == ["request.accepted", "request.started", "runtime.context.loaded"]
    assert [ring["seq"] for ring in listener.rings()] == [events[-1].seq]


def test_events_before_a_slow_step_are_written_while_it_runs(engine):
    import threading
    import time

    from mash_runtime.models import RuntimeEvent, StepCheckpoint

    rid = engine.submit({"script": [{"text": "slow", "delay": 1.0}]})
    worker = threading.Thread(target=engine.drain)
    worker.start()
    try:
        while not RuntimeEvent.objects.filter(request_id=rid, event_type="runtime.context.loaded").exists():
            assert worker.is_alive(), "the run ended before its first events were written"
            time.sleep(0.01)
        # Seen while the model was still answering: its step has no checkpoint yet.
        assert not StepCheckpoint.objects.filter(request_id=rid, step_key="plan.0").exists()
    finally:
        worker.join()
    assert engine.request(rid).status == "completed"


def test_a_quick_run_never_waits_for_the_linger(engine, monkeypatch, tmp_path):
    """The delayed flush is cancelled, not awaited, when the run writes first: with a linger
    far longer than the test, a quick run must still finish (and write no extra batch)."""
    import threading

    from mash_runtime.run import hooks

    monkeypatch.setattr(hooks, "LINGER_SECONDS", 600)
    out = tmp_path / "out.txt"
    rid = engine.submit({"script": [{"tool_calls": [tool("append_line", path=str(out), line="one")]}, "quick"]})
    worker = threading.Thread(target=engine.drain, daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "the run waited for the delayed flush"
    assert engine.request(rid).status == "completed"


def test_the_sweep_keeps_exactly_one_schedule_of_itself(engine):
    """Two processes sweeping at once could each create the schedule; with two rows every
    later sweep failed (get() returned 2) and nothing was recovered again."""
    from django_q.models import Schedule

    from mash_runtime.sweeper import SWEEP_SCHEDULE, sweep

    Schedule.objects.filter(name=SWEEP_SCHEDULE).delete()
    sweep()
    assert Schedule.objects.filter(name=SWEEP_SCHEDULE).count() == 1
    first = Schedule.objects.get(name=SWEEP_SCHEDULE)
    Schedule.objects.create(name=SWEEP_SCHEDULE, func="mash_runtime.sweeper.sweep", schedule_type=Schedule.MINUTES,
                            minutes=1, repeats=-1)
    rid = engine.submit({"script": ["ok"]})
    engine.queue.clear()
    Request.objects.filter(pk=rid).update(created_at=timezone.now() - timedelta(minutes=5))
    assert sweep()["requeued"] == 1  # the sweep still works
    assert list(Schedule.objects.filter(name=SWEEP_SCHEDULE)) == [first]
