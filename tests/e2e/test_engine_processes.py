"""The durable engine under real django-q2 clusters: crashes, restarts, ordering, cancel."""

import json
import os
import signal
import time
from collections import defaultdict

import pytest

from mash_runtime.models import Interaction, Request, RuntimeEvent
from mash_runtime.services import answer_interaction, cancel_request, submit_request
from tests.e2e.conftest import process_alive, wait_for

pytestmark = pytest.mark.e2e


def tool(name, **arguments):
    return {"name": name, "arguments": arguments}


def submit(plan, session_id=None):
    return submit_request("primary", json.dumps(plan), session_id=session_id)["request_id"]


def terminal(rid):
    req = Request.objects.get(pk=rid)
    return req if req.is_terminal else None


def event_types(rid):
    return list(RuntimeEvent.objects.filter(request_id=rid).order_by("seq").values_list("event_type", flat=True))


def assert_clean_stream(rid):
    seqs = list(RuntimeEvent.objects.filter(request_id=rid).order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, len(seqs) + 1))
    types = event_types(rid)
    assert sum(t in ("request.completed", "request.error") for t in types) == 1, types


def test_it_survives_a_worker_killed_mid_tool(clusters, tmp_path):
    cluster = clusters.start()
    out, pid_file = tmp_path / "out.txt", tmp_path / "worker.pid"
    rid = submit({"script": [
        {"tool_calls": [tool("append_line", path=str(out), line="one")]},
        {"tool_calls": [tool("append_line", path=str(out), line="two", sleep=3, pid_file=str(pid_file))]},
        "survived",
    ]})
    worker_pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text(), what="second tool to start"))
    assert out.read_text() == "one\n"
    os.kill(worker_pid, signal.SIGKILL)
    # The cluster replaces the dead worker; the sweeper finds the dead lease owner and requeues.
    req = wait_for(lambda: terminal(rid), timeout=60, what="recovered request to finish")
    assert req.status == "completed", cluster.log()[-3000:]
    lines = out.read_text().splitlines()
    assert lines.count("one") == 1, "a completed tool must never run twice"
    assert lines.count("two") >= 1
    assert req.recovery_attempts == 1
    assert event_types(rid).count("request.started") == 1
    assert_clean_stream(rid)


def test_an_approval_survives_restarting_every_process(clusters, tmp_path):
    first = clusters.start()
    target = tmp_path / "approved.txt"
    rid = submit({"script": [{"tool_calls": [tool("write_file", path=str(target), text="ok")]}, "written"]})
    wait_for(lambda: Request.objects.filter(pk=rid, status="awaiting_input").exists(), what="approval to park")
    first.stop()
    second = clusters.start()
    itr = Interaction.objects.get(request_id=rid)
    answer_interaction(rid, itr.interaction_id, "approve")
    req = wait_for(lambda: terminal(rid), timeout=60, what="approved request to finish")
    assert req.status == "completed", second.log()[-3000:]
    assert target.read_text() == "ok"
    assert_clean_stream(rid)


def test_sessions_run_in_submission_order_while_sessions_run_in_parallel(clusters, tmp_path):
    clusters.start()
    submitted: dict[str, list[str]] = defaultdict(list)
    # Grouped by session, so both workers pick up requests of one session at once.
    for i in range(40):
        session = f"s{i // 5}"
        log = tmp_path / f"{session}.log"
        rid = submit({"script": [{"tool_calls": [tool("append_line", path=str(log), line=str(i), sleep=0.02)]}, "ok"]},
                     session_id=session)
        submitted[session].append((rid, str(i)))
    all_ids = [rid for reqs in submitted.values() for rid, _ in reqs]
    wait_for(lambda: Request.objects.filter(pk__in=all_ids, status__in=Request.TERMINAL).count() == 40,
             timeout=180, interval=0.2, what="40 requests to finish")
    assert Request.objects.filter(pk__in=all_ids, status="completed").count() == 40
    waited = 0
    for session, reqs in submitted.items():
        executed = (tmp_path / f"{session}.log").read_text().split()
        assert executed == [line for _, line in reqs], f"{session} ran out of order"
        rows = {str(r.pk): r for r in Request.objects.filter(pk__in=[rid for rid, _ in reqs])}
        for index, (rid, _) in enumerate(reqs):
            assert_clean_stream(rid)
            waiting = RuntimeEvent.objects.filter(request_id=rid, event_type="request.waiting").first()
            if waiting is None:
                continue
            waited += 1
            # It really had to wait: an earlier request of its session was unfinished when it
            # was checked (just before the event; allow for the commit racing the write).
            assert index > 0
            earlier_finish = max(rows[e].finished_at.timestamp() for e, _ in reqs[:index])
            assert waiting.created_at < earlier_finish + 0.5
            assert rows[rid].started_at.timestamp() >= earlier_finish
    print(f"\n{waited} of 40 requests waited for their session")
    assert waited > 0, "the workload should have made some requests wait"


def test_cancel_interrupts_a_long_tool_and_kills_its_process(clusters, tmp_path):
    clusters.start()
    pid_file = tmp_path / "sleep.pid"
    rid = submit({"script": [
        {"tool_calls": [tool("bash", command=f"sh -c 'echo $$ > {pid_file}; exec sleep 30'", timeout=60)]},
        "never",
    ]})
    sleep_pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), what="tool process"))
    started = time.monotonic()
    cancel_request(rid)
    req = wait_for(lambda: terminal(rid), timeout=10, interval=0.02, what="cancel")
    elapsed = time.monotonic() - started
    print(f"\ncancel took {elapsed * 1000:.0f} ms")
    assert req.status == "cancelled" and req.error_code == "cancelled"
    wait_for(lambda: not process_alive(sleep_pid), timeout=5, what="tool process to die")
    last = RuntimeEvent.objects.filter(request_id=rid).order_by("-seq").first()
    assert last.event_type == "request.error" and last.payload["error_code"] == "cancelled"
    assert_clean_stream(rid)
