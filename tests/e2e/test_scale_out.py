"""Scale-out: two daphne processes and two qcluster processes on PostgreSQL + Redis.

Every process gets `MASH_REDIS_URL` (django-q2 Redis broker + channels-redis layer). The
test process keeps its own settings (ORM broker), so it never enqueues: it submits
through web process A over HTTP and streams through web process B.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading

import httpx
import pytest
from django.db import connection
from django.utils import timezone

from mash_runtime.doorbell import ALL_EVENTS_GROUP
from mash_runtime.models import Request, RuntimeEvent
from tests.e2e.conftest import TERMINAL_EVENTS, process_alive, sse_frames, wait_for

pytestmark = pytest.mark.e2e

REDIS_URL = os.environ.get("MASH_E2E_REDIS_URL", "redis://127.0.0.1:6379/11")
TIMEOUT = httpx.Timeout(30.0, read=90.0)


@pytest.fixture
def cluster_env(cluster_env):
    if connection.vendor != "postgresql":
        pytest.skip(f"scale-out runs on PostgreSQL + Redis; the test database is {connection.vendor} "
                    "(run with DATABASE_URL=postgres://...)")
    return {**cluster_env, "MASH_REDIS_URL": REDIS_URL}


def tool(name, **arguments):
    return {"name": name, "arguments": arguments}


def submit(server, plan, session_id=None) -> str:
    body = {"message": json.dumps(plan)}
    if session_id:
        body["session_id"] = session_id
    response = httpx.post(f"{server.url}/api/v1/agent/primary/request", json=body, timeout=TIMEOUT)
    assert response.status_code == 202, response.text
    return response.json()["data"]["request_id"]


def read_stream(server, rid, after: int | None = None) -> list:
    headers = {"Last-Event-ID": str(after)} if after is not None else {}
    with httpx.stream("GET", f"{server.url}/api/v1/agent/primary/request/{rid}/events", headers=headers,
                      timeout=TIMEOUT) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        frames = list(sse_frames(response, comments=True))
    events = [f for f in frames if f.comment is None]
    assert events and frames[-1] is events[-1], "the response closes right after the terminal event"
    return events


def assert_complete(events, rid, text: str) -> None:
    names = [f.event for f in events]
    assert [f.id for f in events] == list(range(1, len(events) + 1)), [f.id for f in events]
    assert names[0] == "request.accepted" and "request.started" in names, names
    assert sum(n in TERMINAL_EVENTS for n in names) == 1, names
    assert names[-1] == "request.completed", events[-1].data
    assert events[-1].data["request_id"] == rid and events[-1].data["response"]["text"] == text
    stored = [(e.seq, e.stream_name) for e in RuntimeEvent.objects.filter(request_id=rid).order_by("seq")]
    assert [(f.id, f.event) for f in events] == stored


def cluster_of(clusters_started, pid: int):
    group = os.getpgid(pid)
    return next(c for c in clusters_started if c.proc.pid == group)


class DoorbellListener(threading.Thread):
    """Listens on the Redis channel layer like a web process does, from the test process."""

    def __init__(self):
        super().__init__(daemon=True)
        self.messages: list[dict] = []
        self.ready = threading.Event()
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self.listen())
        except BaseException as exc:  # surfaced by the test
            self.error = exc
            self.ready.set()

    async def listen(self) -> None:
        from channels_redis.pubsub import RedisPubSubChannelLayer

        layer = RedisPubSubChannelLayer(hosts=[REDIS_URL])
        channel = await layer.new_channel()
        await layer.group_add(ALL_EVENTS_GROUP, channel)
        self.ready.set()
        try:
            while not self.done.is_set():
                try:
                    self.messages.append(await asyncio.wait_for(layer.receive(channel), 0.5))
                except asyncio.TimeoutError:
                    pass
        finally:
            await layer.group_discard(ALL_EVENTS_GROUP, channel)
            await layer.flush()


def ensure_sweep_schedule() -> None:
    """The deployment's periodic sweep, created by a migration (earlier tests' flushes drop it)."""
    from django_q.models import Schedule

    Schedule.objects.update_or_create(
        name="mash-sweep",
        defaults={"func": "mash_runtime.sweeper.sweep", "schedule_type": Schedule.MINUTES, "minutes": 1,
                  "repeats": -1, "next_run": timezone.now()},
    )


def test_it_scales_out_over_two_web_and_two_worker_processes(clusters, web_servers, tmp_path):
    """One deployment, two stories (sharing the processes keeps the run short: recovering from a
    whole-cluster kill waits for the survivor's scheduler, which looks every 30 s from its start).

    1. Requests submitted through web process A stream completely through web process B.
    2. SIGKILL of the qcluster whose worker is inside a slow tool loses nothing: the other
       cluster finishes the request and B's open stream shows exactly one terminal event.
    """
    ensure_sweep_schedule()
    started = [clusters.start(), clusters.start()]
    a, b = web_servers.start_many(2)  # all four processes boot side by side

    # -- 1. submit through A, stream through B -----------------------------------------------
    listener = DoorbellListener()
    listener.start()
    assert listener.ready.wait(30) and listener.error is None, listener.error
    try:
        plans = {}
        for i in range(4):
            out = tmp_path / f"out{i}.txt"
            plan = {"script": [{"tool_calls": [tool("append_line", path=str(out), line=str(i), sleep=0.2,
                                                    pid_file=str(tmp_path / f"pid{i}"))]}, f"done {i}"]}
            plans[submit(a, plan, session_id=f"scale-{i}")] = (i, out)
        for rid, (i, out) in plans.items():
            events = read_stream(b, rid)
            assert_complete(events, rid, f"done {i}")
            assert out.read_text() == f"{i}\n"
            # A cursor taken on A resumes on B: the database, not the process, holds the stream.
            assert [f.key for f in read_stream(b, rid, after=2)] == [f.key for f in read_stream(a, rid)][2:]
    finally:
        listener.done.set()
        listener.join(10)
    # The workers rang doorbells on Redis, where every web process listens.
    rung = {(m["request_id"], m["seq"]) for m in listener.messages if m.get("type") == "mash.doorbell"}
    for rid in plans:
        assert any(r == rid and seq >= 2 for r, seq in rung), f"no cross-process doorbell for {rid}"
    ran_in = {cluster_of(started, int((tmp_path / f"pid{i}").read_text())).proc.pid for i, _ in plans.values()}
    print(f"\n4 requests ran in {len(ran_in)} of 2 clusters")

    # -- 2. kill the cluster running a request --------------------------------------------------
    out, pid_file = tmp_path / "out.txt", tmp_path / "worker.pid"
    rid = submit(a, {"script": [
        {"tool_calls": [tool("append_line", path=str(out), line="one")]},
        {"tool_calls": [tool("append_line", path=str(out), line="two", sleep=3, pid_file=str(pid_file))]},
        "survived",
    ]})
    streamed: list = []
    failure: list[BaseException] = []

    def follow():  # B's stream stays open across the kill
        try:
            streamed.extend(read_stream(b, rid))
        except BaseException as exc:
            failure.append(exc)

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()

    worker_pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text(), timeout=60,
                              what="the slow tool to start"))
    victim = cluster_of(started, worker_pid)
    survivor = next(c for c in started if c is not victim)
    assert out.read_text() == "one\n"
    os.killpg(victim.proc.pid, signal.SIGKILL)
    victim.proc.wait(10)
    wait_for(lambda: not process_alive(worker_pid), timeout=10, what="the killed worker to die")
    assert out.read_text() == "one\n", "the kill landed inside the slow tool"
    assert not Request.objects.get(pk=rid).is_terminal

    # Nobody holds the request any more: the surviving cluster's sweep recovers it.
    wait_for(lambda: Request.objects.get(pk=rid).is_terminal, timeout=150, interval=0.2,
             what="the surviving cluster to finish the request")
    reader.join(120)
    assert not reader.is_alive() and not failure, failure
    req = Request.objects.get(pk=rid)
    assert req.status == "completed", survivor.log()[-3000:]
    assert req.recovery_attempts == 1
    rerun_pid = int(pid_file.read_text())
    assert rerun_pid != worker_pid and os.getpgid(rerun_pid) == survivor.proc.pid, "the survivor ran the rest"

    assert_complete(streamed, rid, "survived")
    assert [f.event for f in streamed].count("request.started") == 1
    assert [f.key for f in streamed] == [f.key for f in read_stream(a, rid)]
    lines = out.read_text().splitlines()
    assert lines.count("one") == 1, "a completed tool never runs twice"
    assert lines[-1] == "two"
