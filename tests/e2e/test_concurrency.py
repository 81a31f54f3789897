"""Many requests in flight per worker process, under real django-q2 clusters: one process
holds tens of model calls at once, survives SIGKILL and SIGTERM with all of them, cancels
one among many, keeps session order, and frees a slot when a request parks."""

import json
import os
import signal
import subprocess
import uuid

import pytest

from mash_runtime.host import set_host
from mash_runtime.models import Interaction, Request, RuntimeEvent, Worker
from mash_runtime.services import answer_interaction, cancel_request, submit_request
from tests.e2e.conftest import wait_for
from tests.fakes.slow_anthropic import run_slow_anthropic

pytestmark = pytest.mark.e2e

LATENCY_HOST = "tests.apps.latency_host:build_host"


def tool(name, **arguments):
    return {"name": name, "arguments": arguments}


def submit(plan, session_id=None):
    return submit_request("primary", json.dumps(plan), session_id=session_id or f"s-{uuid.uuid4().hex[:12]}")[
        "request_id"]


def statuses(ids) -> dict[str, str]:
    return {str(pk): status for pk, status in Request.objects.filter(pk__in=ids).values_list("pk", "status")}


def all_terminal(ids) -> bool:
    return Request.objects.filter(pk__in=ids, status__in=Request.TERMINAL).count() == len(ids)


def terminal_events(rid) -> list[str]:
    return list(RuntimeEvent.objects.filter(request_id=rid, event_type__in=("request.completed", "request.error"))
                .values_list("event_type", flat=True))


def thirty_runs(tmp_path, script) -> list[tuple]:
    """30 requests, each with its own output and pid file: (request id, out, pid file)."""
    runs = []
    for i in range(30):
        out, pid_file = tmp_path / f"out{i}.txt", tmp_path / f"pid{i}"
        runs.append((submit({"script": script(out, pid_file)}), out, pid_file))
    return runs


def worker_pids() -> list[int]:
    return list(Worker.live().values_list("pid", flat=True))


def test_one_worker_process_holds_fifty_model_calls_at_once(clusters, settings, tmp_path):
    settings.MASH_HOST_APP = LATENCY_HOST
    set_host(None)
    with run_slow_anthropic(2.0, log_path=tmp_path / "fake.log") as fake:
        cluster = clusters.start(MASH_WORKERS="1", MASH_HOST_APP=LATENCY_HOST, **fake.env)
        wait_for(worker_pids, what="the worker's heartbeat")
        ids = [submit_request("primary", f"question {i}", session_id=f"s{i}")["request_id"] for i in range(60)]
        wait_for(lambda: all_terminal(ids), timeout=90, what="60 requests to finish")
        stats = fake.stats()
    assert set(statuses(ids).values()) == {"completed"}, cluster.log()[-3000:]
    assert stats["calls"] == 60
    assert stats["max_in_flight"] >= 50, stats
    assert len(worker_pids()) == 1
    assert "database is locked" not in cluster.log()


def test_thirty_runs_of_a_killed_worker_all_complete_and_no_tool_runs_twice(clusters, tmp_path):
    clusters.start(MASH_WORKERS="1")
    runs = thirty_runs(tmp_path, lambda out, pid_file: [
        {"tool_calls": [tool("append_line", path=str(out), line="one")]},
        {"tool_calls": [tool("wait_and_append", path=str(out), line="two", sleep=4, pid_file=str(pid_file))]},
        "survived",
    ])
    wait_for(lambda: all(p.exists() for _, _, p in runs), timeout=60, what="30 runs to be in their second tool")
    pids = {int(p.read_text()) for _, _, p in runs}
    assert len(pids) == 1, "one worker process holds all 30 runs"
    assert all(out.read_text() == "one\n" for _, out, _ in runs)
    os.kill(pids.pop(), signal.SIGKILL)
    ids = [rid for rid, _, _ in runs]
    wait_for(lambda: all_terminal(ids), timeout=120, what="recovered runs to finish")
    assert set(statuses(ids).values()) == {"completed"}
    for rid, out, _ in runs:
        lines = out.read_text().splitlines()
        assert lines.count("one") == 1, "a completed tool must never run twice"
        assert lines.count("two") >= 1
        assert terminal_events(rid) == ["request.completed"]
    assert set(Request.objects.filter(pk__in=ids).values_list("recovery_attempts", flat=True)) == {1}


def test_a_terminated_worker_hands_its_runs_over_and_each_ends_once(clusters, tmp_path):
    clusters.start(MASH_WORKERS="1")
    runs = thirty_runs(tmp_path, lambda out, pid_file: [
        {"tool_calls": [tool("wait_and_append", path=str(out), line="slow", sleep=3, pid_file=str(pid_file))]},
        "handed over",
    ])
    wait_for(lambda: all(p.exists() for _, _, p in runs), timeout=60, what="30 runs to be in their tool")
    pid = int(runs[0][2].read_text())
    os.kill(pid, signal.SIGTERM)
    ids = [rid for rid, _, _ in runs]
    wait_for(lambda: all_terminal(ids), timeout=120, what="handed-over runs to finish")
    assert set(statuses(ids).values()) == {"completed"}
    for rid, out, _ in runs:
        assert out.read_text() == "slow\n", "the tool under way finished in the grace period and was not run again"
        assert terminal_events(rid) == ["request.completed"]
    # Handed back, not recovered: no lease had to expire.
    assert set(Request.objects.filter(pk__in=ids).values_list("recovery_attempts", flat=True)) == {0}
    started = RuntimeEvent.objects.filter(request_id__in=ids, event_type="request.started")
    assert started.count() == 30, "a handed-over run keeps its one started event"
    wait_for(lambda: pid not in worker_pids() and worker_pids(), what="the replacement worker's heartbeat")


def test_cancelling_one_run_among_fifty_in_flight_cancels_only_it(clusters, tmp_path):
    clusters.start(MASH_WORKERS="1")
    ids, markers = [], []
    for i in range(50):
        marker = tmp_path / f"started{i}"
        ids.append(submit({"script": [
            {"tool_calls": [tool("wait_and_append", path=str(tmp_path / f"out{i}"), line="x", sleep=4,
                                 pid_file=str(marker))]},
            "finished",
        ]}))
        markers.append(marker)
    wait_for(lambda: all(m.exists() for m in markers), timeout=60, what="50 runs in flight")
    victim = ids[17]
    assert cancel_request(victim)["status"] == "cancelling"
    wait_for(lambda: all_terminal(ids), timeout=90, what="all 50 to end")
    found = statuses(ids)
    assert found.pop(victim) == "cancelled"
    assert set(found.values()) == {"completed"}
    assert not (tmp_path / "out17").exists(), "the cancelled tool call was interrupted"
    assert terminal_events(victim) == ["request.error"]


def test_requests_of_a_session_never_overlap_while_sessions_run_side_by_side(clusters, tmp_path):
    clusters.start(MASH_WORKERS="1")
    ids = []
    for n in range(8):
        for session in ("a", "b", "c"):
            ids.append(submit({"script": [
                {"tool_calls": [tool("wait_and_append", path=str(tmp_path / session), line=str(n), sleep=0.2)]},
                "ok",
            ]}, session_id=f"order-{session}"))
    wait_for(lambda: all_terminal(ids), timeout=120, what="24 requests to finish")
    rows = list(Request.objects.filter(pk__in=ids).select_related("session").order_by("session_seq"))
    assert {r.status for r in rows} == {"completed"}
    by_session: dict[str, list] = {}
    for r in rows:
        by_session.setdefault(r.session.session_id, []).append(r)
    for session, reqs in by_session.items():
        for earlier, later in zip(reqs, reqs[1:]):
            assert earlier.finished_at <= later.started_at, f"{session}: seq {later.session_seq} overlapped"
        assert (tmp_path / session.removeprefix("order-")).read_text().split() == [str(n) for n in range(8)]
    # The sessions did run side by side: some request of one started before one of another ended.
    spans = [(r.started_at, r.finished_at) for r in rows]
    assert any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1:])


def test_a_request_parked_on_an_approval_frees_its_slot(clusters, tmp_path):
    clusters.start(MASH_WORKERS="1", MASH_WORKER_CONCURRENCY="2")
    wait_for(lambda: Worker.live().filter(slots=2).exists(), what="the worker's heartbeat")
    parked = [submit({"script": [{"tool_calls": [tool("write_file", path=str(tmp_path / f"f{i}"), text="ok")]},
                                 "written"]}) for i in range(2)]
    wait_for(lambda: set(statuses(parked).values()) == {"awaiting_input"}, what="both to park")
    wait_for(lambda: Worker.live().filter(in_use=0).exists(), what="the slots to be free again")
    # Both slots were taken by the parked requests if parking kept them: these could not run.
    quick = [submit({"script": [f"quick {i}"]}) for i in range(3)]
    wait_for(lambda: all_terminal(quick), timeout=60, what="requests after the parked ones")
    assert set(statuses(quick).values()) == {"completed"}
    for rid in parked:
        answer_interaction(rid, Interaction.objects.get(request_id=rid).interaction_id, "approve")
    wait_for(lambda: all_terminal(parked), timeout=60, what="the approved requests")
    assert set(statuses(parked).values()) == {"completed"}
    assert sorted(p.name for p in tmp_path.glob("f*")) == ["f0", "f1"]


def test_recycling_a_worker_hands_its_runs_over_instead_of_killing_them(clusters, tmp_path):
    # django-q2 ends a worker's loop after `recycle` tasks; its runs must not die with it.
    cluster = clusters.start(MASH_WORKERS="1", MASH_WORKER_RECYCLE="4", MASH_QUEUE_LOG_LEVEL="INFO")
    runs = [(submit({"script": [
        {"tool_calls": [tool("wait_and_append", path=str(tmp_path / f"out{i}"), line="x", sleep=2,
                             pid_file=str(tmp_path / f"pid{i}"))]},
        "done",
    ]}), i) for i in range(8)]
    ids = [rid for rid, _ in runs]
    wait_for(lambda: all_terminal(ids), timeout=120, what="8 requests across recycled workers")
    assert set(statuses(ids).values()) == {"completed"}, cluster.log()[-3000:]
    for rid, i in runs:
        assert (tmp_path / f"out{i}").read_text() == "x\n", "a handed-over tool call does not run again"
        assert terminal_events(rid) == ["request.completed"]
    assert "recycled worker" in cluster.log()
    assert len({(tmp_path / f"pid{i}").read_text() for _, i in runs}) >= 2, "more than one process ran them"
    # And the cluster stops: a worker recycled just before (or while) it stops is not
    # replaced, and without a reader the pusher's put or the sentinel's STOP pill blocked on
    # the full task queue for good. Bounded by a drain (20 s) and its stop wait, not a benchmark.
    cluster.terminate()
    try:
        cluster.proc.wait(60)
    except subprocess.TimeoutExpired:
        pytest.fail("the cluster did not exit within 60 s of SIGTERM:\n" + cluster.log()[-3000:])
