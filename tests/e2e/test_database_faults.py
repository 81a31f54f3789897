"""Faults under load: every PostgreSQL connection of the host's database terminated, and
every Redis client connection killed, a few times while 200 requests over 8 sessions are
submitted, run and streamed through a real daphne process and a real qcluster.

Clients behave as the contract tells them to: a submit that answers 503 with
`details.retryable` (or whose connection broke) is sent again with the same
`Idempotency-Key`; a stream that broke is opened again with `Last-Event-ID`. What must
hold: every request completed, once (one row per key); every stream ended with exactly
one terminal event; every request's seqs are contiguous; no submit answered any other 5xx.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import uuid

import httpx
import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from mash_runtime.models import Request, RuntimeEvent
from tests.e2e.conftest import TERMINAL_EVENTS, database_url, sse_frames, wait_for

pytestmark = pytest.mark.e2e

# Its own Redis database: test_scale_out uses 11, the benches 13 to 15.
REDIS_URL = os.environ.get("MASH_E2E_FAULTS_REDIS_URL", "redis://127.0.0.1:6379/9")
SESSIONS = 8
PER_SESSION = 25
# Faults strike when this many submits have been answered: spread over the whole load.
FAULT_AT = (15, 50, 90, 130, 170)
TIMEOUT = httpx.Timeout(30.0, read=60.0)


def redis_client():
    import redis

    return redis.Redis.from_url(REDIS_URL)


@pytest.fixture
def cluster_env(cluster_env):
    if connection.vendor != "postgresql":
        pytest.skip(f"database faults are injected on PostgreSQL + Redis; the test database is {connection.vendor} "
                    "(run with DATABASE_URL=postgres://...)")
    redis_client().flushdb()
    return {**cluster_env, "MASH_REDIS_URL": REDIS_URL}


def ensure_sweep_schedule() -> None:
    """The deployment's periodic sweep (created by a migration; earlier tests' flushes drop it)."""
    from django_q.models import Schedule

    Schedule.objects.update_or_create(
        name="mash-sweep",
        defaults={"func": "mash_runtime.sweeper.sweep", "schedule_type": Schedule.MINUTES, "minutes": 1,
                  "repeats": -1, "next_run": timezone.now()},
    )


def terminate_database_connections() -> int:
    """Every other backend of the test database, the test process's own included."""
    with psycopg.connect(database_url().replace("postgres://", "postgresql://", 1), autocommit=True) as conn:
        rows = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchall()
    return sum(1 for (done,) in rows if done)


def kill_redis_clients() -> int:
    """`CLIENT KILL TYPE normal` (ours excluded), limited to this test's Redis database: the
    server is shared with whatever else runs on this machine."""
    client = redis_client()
    me = client.client_id()
    db = client.connection_pool.connection_kwargs.get("db", 0)
    killed = 0
    for entry in client.client_list(_type="normal"):
        if int(entry["id"]) != me and int(entry.get("db", -1)) == db:
            try:
                client.execute_command("CLIENT", "KILL", "ID", entry["id"])
                killed += 1
            except Exception:  # gone already
                pass
    client.close()
    return killed


def forget_dead_connections() -> None:
    """The faults terminated this process's connections too (the one in use and the pool's)."""
    connection.close()
    if getattr(connection, "pool", None) is not None:
        connection.pool.check()


class Load:
    """The clients' record: every submit attempt's outcome, every stream's frames."""

    def __init__(self, server, tmp_path):
        self.server = server
        self.tmp_path = tmp_path
        self.lock = threading.Lock()
        self.answered = 0
        self.attempts: list[tuple[str, int | str, str]] = []  # (key, status or exception name, error code)
        self.request_of: dict[str, str] = {}  # Idempotency-Key -> request_id
        self.frames: dict[str, list] = {}
        self.stream_opens: dict[str, list] = {}  # request_id -> statuses / exception names of each GET
        self.errors: list[str] = []

    def plan(self, session: int, n: int) -> dict:
        out = self.tmp_path / f"s{session}.txt"
        return {"script": [{"tool_calls": [{"name": "wait_and_append",
                                            "arguments": {"path": str(out), "line": str(n), "sleep": 0.05}}]},
                           f"done {session}/{n}"]}

    def submit(self, client: httpx.Client, body: dict) -> str:
        key = uuid.uuid4().hex
        url = f"{self.server.url}/api/v1/agent/primary/request"
        for _ in range(20):
            try:
                response = client.post(url, json=body, headers={"Idempotency-Key": key})
            except httpx.TransportError as exc:  # the answer was lost: the key makes sending again safe
                self.record(key, type(exc).__name__, "")
                time.sleep(0.2)
                continue
            code = ""
            if response.status_code >= 400:
                code = (response.json().get("error") or {}).get("code", "") if response.headers.get(
                    "content-type", "").startswith("application/json") else response.text[:200]
            self.record(key, response.status_code, code)
            if response.status_code < 400:
                rid = response.json()["data"]["request_id"]
                with self.lock:
                    self.request_of[key] = rid
                return rid
            retryable = response.status_code == 503 and (response.json()["error"]["details"] or {}).get("retryable")
            if not retryable:
                raise AssertionError(f"submit answered {response.status_code}: {response.text[:500]}")
            time.sleep(min(float(response.headers.get("Retry-After", "1")), 0.5))
        raise AssertionError(f"submit with key {key} never went through")

    def record(self, key: str, status, code: str) -> None:
        with self.lock:
            self.attempts.append((key, status, code))
            if isinstance(status, int) and status < 400:
                self.answered += 1

    def stream(self, client: httpx.Client, rid: str) -> None:
        """Read a request's events to its terminal one, reopening with Last-Event-ID after a break."""
        frames: list = []
        opens: list = []
        url = f"{self.server.url}/api/v1/agent/primary/request/{rid}/events"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            headers = {"Last-Event-ID": str(frames[-1].id)} if frames else {}
            try:
                with client.stream("GET", url, headers=headers) as response:
                    opens.append(response.status_code)
                    if response.status_code != 200:
                        response.read()
                        if response.status_code != 503:
                            raise AssertionError(f"stream answered {response.status_code}: {response.text[:300]}")
                        time.sleep(0.2)
                        continue
                    for frame in sse_frames(response):
                        frames.append(frame)
                    if frames and frames[-1].event in TERMINAL_EVENTS:
                        break
                    # The server closed without a terminal event: a broken stream.
                    opens.append("closed early")
            except httpx.TransportError as exc:
                opens.append(type(exc).__name__)
                time.sleep(0.1)
        with self.lock:
            self.frames[rid] = frames
            self.stream_opens[rid] = opens

    def session(self, session: int) -> None:
        try:
            with httpx.Client(timeout=TIMEOUT) as client:
                for n in range(PER_SESSION):
                    rid = self.submit(client, {"message": json.dumps(self.plan(session, n)),
                                               "session_id": f"fault-{session}"})
                    self.stream(client, rid)
                    time.sleep(random.uniform(0, 0.02))
        except BaseException as exc:  # reported by the test
            with self.lock:
                self.errors.append(f"session {session}: {type(exc).__name__}: {exc}")


def test_submits_runs_and_streams_survive_dropped_database_and_redis_connections(clusters, web_servers, tmp_path):
    ensure_sweep_schedule()
    cluster = clusters.start()
    server = web_servers.start()
    load = Load(server, tmp_path)
    threads = [threading.Thread(target=load.session, args=(s,), daemon=True) for s in range(SESSIONS)]
    faults: list[tuple[int, int, int]] = []
    for thread in threads:
        thread.start()
    for threshold in FAULT_AT:
        wait_for(lambda n=threshold: load.answered >= n or not any(t.is_alive() for t in threads), timeout=240,
                 interval=0.01, what=f"{threshold} submits")
        faults.append((load.answered, terminate_database_connections(), kill_redis_clients()))
    for thread in threads:
        thread.join(300)
    forget_dead_connections()

    print(f"\nfaults (submits answered, backends terminated, redis clients killed): {faults}")
    statuses = [status for _, status, _ in load.attempts]
    print("submit attempts by outcome:", {s: statuses.count(s) for s in set(statuses)})
    reopened = {rid: opens for rid, opens in load.stream_opens.items() if opens != [200]}
    print(f"streams opened more than once: {len(reopened)} {list(reopened.values())[:10]}")
    assert not load.errors, load.errors[:5]
    assert all(backends > 0 for _, backends, _ in faults), faults

    # No submit answered a 5xx other than a retryable 503 (which the client sent again, same key).
    bad = [(key, status, code) for key, status, code in load.attempts
           if isinstance(status, int) and status >= 500 and (status, code) != (503, "DATABASE_UNAVAILABLE")]
    assert not bad, bad[:10]
    # Each key made exactly one request, and every request is one of theirs.
    assert len(load.request_of) == SESSIONS * PER_SESSION
    rids = set(load.request_of.values())
    assert len(rids) == SESSIONS * PER_SESSION, "two keys answered with the same request"
    assert Request.objects.count() == SESSIONS * PER_SESSION, "a retried submit made a second request"

    # Every request completed, with one terminal event and seqs 1..last_seq.
    wait_for(lambda: Request.objects.filter(status__in=Request.TERMINAL).count() == len(rids), timeout=60,
             what="every request to end")
    states = dict(Request.objects.values_list("pk", "status"))
    assert {str(pk) for pk in states} == rids
    assert set(states.values()) == {"completed"}, list(
        Request.objects.exclude(status="completed").values_list("status", "error_code", "error"))
    stored: dict[str, list] = {}
    for rid, seq, name in RuntimeEvent.objects.order_by("request_id", "seq").values_list("request_id", "seq",
                                                                                          "event_type"):
        stored.setdefault(str(rid), []).append((seq, name))
    last_seqs = {str(pk): last for pk, last in Request.objects.values_list("pk", "last_seq")}
    for rid in rids:
        seqs = [seq for seq, _ in stored[rid]]
        assert seqs == list(range(1, last_seqs[rid] + 1)), (rid, seqs, last_seqs[rid])
        assert sum(name in TERMINAL_EVENTS for _, name in stored[rid]) == 1, (rid, stored[rid])
        frames = load.frames[rid]
        assert [f.id for f in frames] == seqs, (rid, [f.id for f in frames], load.stream_opens[rid])
        assert sum(f.event in TERMINAL_EVENTS for f in frames) == 1 and frames[-1].event == "request.completed", (
            rid, [f.event for f in frames])
    assert "unhandled API error" not in server.log(), server.log()[-4000:]
    assert cluster.proc.poll() is None, cluster.log()[-4000:]
