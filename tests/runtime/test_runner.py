"""The process runner in-process: slots, duplicate deliveries, draining, the heartbeat."""

import threading
from datetime import timedelta

import pytest
from django.utils import timezone

from mash_runtime.models import Request, StepCheckpoint
from mash_runtime.run import lifecycle
from mash_runtime.run import runner as runner_module
from mash_runtime.run.runner import Runner
from mash_runtime.run.state import Outcome
from mash_runtime.tasks import RUN_REQUEST
from tests.e2e.conftest import wait_for


def tool(name, **arguments):
    return {"name": name, "arguments": arguments}


@pytest.fixture
def runner(engine):
    made = Runner(slots=1)
    yield made
    made.close()


def slow_plan(tmp_path, seconds, name="out"):
    return {"script": [{"tool_calls": [tool("wait_and_append", path=str(tmp_path / name), line="done",
                                            sleep=seconds, pid_file=str(tmp_path / f"{name}.started"))]}, "ok"]}


def deliver_in_background(runner, rid):
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(runner.submit(rid, wait=True)))
    thread.start()
    return thread, outcome


def test_a_delivery_waits_for_a_free_slot_then_goes_back_to_the_broker(engine, runner, tmp_path, monkeypatch):
    monkeypatch.setattr(runner_module, "slot_wait_seconds", lambda: 0.2)
    first = engine.submit(slow_plan(tmp_path, 2))
    second = engine.submit({"script": ["quick"]})
    engine.queue.clear()
    thread, outcome = deliver_in_background(runner, first)
    wait_for(lambda: (tmp_path / "out.started").exists(), what="the first run to hold the only slot")
    assert runner.submit(second) == Outcome.REQUEUED
    assert engine.queue == [(RUN_REQUEST, (second,))], "delivered again, for a process with a free slot"
    assert engine.request(second).status == "accepted"
    thread.join(10)
    assert outcome == [Outcome.COMPLETED]
    assert runner.submit(second, wait=True) == Outcome.COMPLETED


def test_a_second_delivery_of_a_run_in_flight_is_refused(engine, runner, tmp_path):
    rid = engine.submit(slow_plan(tmp_path, 1))
    engine.queue.clear()
    thread, outcome = deliver_in_background(runner, rid)
    wait_for(lambda: (tmp_path / "out.started").exists(), what="the run to start")
    assert runner.submit(rid) == Outcome.LEASED
    thread.join(10)
    assert outcome == [Outcome.COMPLETED]
    assert (tmp_path / "out").read_text() == "done\n"


def test_draining_stops_a_run_at_its_next_step_and_hands_it_back(engine, runner, tmp_path):
    rid = engine.submit(slow_plan(tmp_path, 1))
    engine.queue.clear()
    thread, outcome = deliver_in_background(runner, rid)
    wait_for(lambda: (tmp_path / "out.started").exists(), what="the tool to start")
    runner.drain(grace=30)  # the tool under way finishes; the next step is not started
    thread.join(10)
    assert outcome == [Outcome.RELEASED]
    req = engine.request(rid)
    assert (req.status, req.lease_owner, req.lease_expires_at) == ("running", "", None)
    assert StepCheckpoint.objects.filter(request_id=rid, step_key="tool.0.0").exists()
    assert engine.queue == [(RUN_REQUEST, (rid,))]
    assert runner.submit(rid) == Outcome.REQUEUED, "a draining runner takes nothing new"
    engine.queue.clear()
    # Another process continues from the checkpoint: the tool does not run again.
    other = Runner(slots=1)
    try:
        assert other.submit(rid, wait=True) == Outcome.COMPLETED
    finally:
        other.close()
    assert (tmp_path / "out").read_text() == "done\n"
    assert engine.types(rid).count("request.started") == 1
    assert engine.types(rid).count("request.completed") == 1


def test_a_run_still_busy_when_the_grace_ends_is_interrupted_and_handed_back(engine, runner, tmp_path):
    rid = engine.submit(slow_plan(tmp_path, 60))
    engine.queue.clear()
    thread, outcome = deliver_in_background(runner, rid)
    wait_for(lambda: (tmp_path / "out.started").exists(), what="the tool to start")
    runner.drain(grace=0.2)
    thread.join(10)
    assert outcome == [Outcome.RELEASED]
    assert not (tmp_path / "out").exists(), "the interrupted tool call did not finish"
    assert Request.objects.get(pk=rid).lease_owner == ""
    assert engine.queue == [(RUN_REQUEST, (rid,))]


def test_one_heartbeat_renews_every_lease_and_reads_the_cancel_flags(engine):
    ids = [engine.submit({"script": ["x"]}, session_id=f"hb{i}") for i in range(3)]
    engine.queue.clear()
    for rid in ids:
        lifecycle.claim(rid, "me")
    Request.objects.filter(pk=ids[1]).update(cancel_requested=True)
    Request.objects.filter(pk=ids[2]).update(lease_owner="someone-else")
    soon = timezone.now() + timedelta(seconds=1)
    Request.objects.filter(pk__in=ids).update(lease_expires_at=soon)
    assert lifecycle.heartbeat("me", ids, renew=True) == {ids[0]: False, ids[1]: True}
    leases = dict(Request.objects.filter(pk__in=ids).values_list("pk", "lease_expires_at"))
    assert leases[Request.objects.get(pk=ids[0]).pk] > soon + timedelta(seconds=10)
    assert leases[Request.objects.get(pk=ids[2]).pk] == soon, "not ours: left alone"


def test_the_heartbeat_cancels_a_running_tool(engine, runner, tmp_path):
    from mash_runtime.services import cancel_request

    rid = engine.submit(slow_plan(tmp_path, 60))
    engine.queue.clear()
    thread, outcome = deliver_in_background(runner, rid)
    wait_for(lambda: (tmp_path / "out.started").exists(), what="the tool to start")
    assert cancel_request(rid)["status"] == "cancelling"
    thread.join(30)
    assert outcome == [Outcome.CANCELLED], "interrupted, not waited for (the tool sleeps 60 s)"
    assert engine.request(rid).status == "cancelled"
    assert not (tmp_path / "out").exists()


def test_a_delivery_that_fails_before_it_holds_a_slot_raises_instead_of_hanging(engine, runner, monkeypatch):
    from django.db import OperationalError

    async def broker_down(key):
        raise OperationalError("the database is gone")

    rid = engine.submit({"script": ["x"]})
    runner.draining = True  # a draining runner delivers again, through the database
    monkeypatch.setattr(runner, "_deliver_again", broker_down)
    with pytest.raises(OperationalError):
        runner.submit(rid)
