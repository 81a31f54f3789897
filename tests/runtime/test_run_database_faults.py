"""A database connection that drops under a run, or under its claim, is no failure of the
request: the run is handed back and continues from its checkpoints, once, to one terminal
event. On PostgreSQL the connection is really terminated (`pg_terminate_backend`); SQLite
has no server to drop it, so there the error is one marked as a drop."""

from __future__ import annotations

import psycopg
import pytest
from django.db import OperationalError, connection

from mash_runtime.models import Request, RuntimeEvent
from mash_runtime.run import hooks, lifecycle
from mash_runtime.run.runner import Runner
from mash_runtime.run.state import Outcome
from mash_runtime.tasks import RUN_REQUEST


@pytest.fixture
def runner(engine):
    made = Runner(slots=2)
    yield made
    made.close()


def drop_this_connection() -> None:
    """On PostgreSQL, end this thread's connection from another one; elsewhere, raise what a
    drop raises (marked as one, as the database thread marks a real one)."""
    if connection.vendor != "postgresql":
        exc = OperationalError("server closed the connection unexpectedly")
        exc.mash_connection_dropped = True
        raise exc
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    s = connection.settings_dict
    with psycopg.connect(host=s["HOST"] or "127.0.0.1", port=s["PORT"] or 5432, user=s["USER"],
                         password=s["PASSWORD"] or None, dbname=s["NAME"], autocommit=True) as other:
        assert other.execute("SELECT pg_terminate_backend(%s, 5000)", [pid]).fetchone()[0]


def assert_one_clean_stream(rid) -> None:
    rows = list(RuntimeEvent.objects.filter(request_id=rid).order_by("seq").values_list("seq", "event_type"))
    assert [seq for seq, _ in rows] == list(range(1, len(rows) + 1)), rows
    names = [name for _, name in rows]
    assert names.count("request.started") == 1 and names[-1] == "request.completed", names
    assert sum(name in ("request.completed", "request.error") for name in names) == 1, names


def test_a_run_whose_connection_drops_is_handed_back_not_failed(engine, runner, monkeypatch):
    real, calls = hooks.persist_run_progress, []

    def persist_run_progress(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            drop_this_connection()
        return real(*args, **kwargs)

    monkeypatch.setattr(hooks, "persist_run_progress", persist_run_progress)
    rid = engine.submit({"script": [{"tool_calls": [{"name": "append_line", "arguments": {
        "path": "/dev/null", "line": "x"}}]}, "done"]})
    engine.queue.clear()
    assert runner.submit(rid, wait=True) == Outcome.RELEASED
    req = Request.objects.get(pk=rid)
    assert req.status == "running" and req.lease_owner == "" and not req.error, "handed back, not failed"
    assert engine.queue == [(RUN_REQUEST, (rid,))], "delivered again at once"
    engine.queue.clear()
    assert runner.submit(rid, wait=True) == Outcome.COMPLETED
    assert_one_clean_stream(rid)


@pytest.mark.parametrize("committed", [False, True], ids=["before-commit", "after-commit"])
def test_a_claim_whose_connection_drops_is_delivered_again_at_once(engine, runner, monkeypatch, committed):
    real, calls = lifecycle.claim, []

    def claim(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            return real(*args, **kwargs)
        if committed:  # the lease taken and request.started written, then the answer lost
            real(*args, **kwargs)
        drop_this_connection()
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")

    monkeypatch.setattr(lifecycle, "claim", claim)
    rid = engine.submit({"script": ["done"]})
    engine.queue.clear()
    assert runner.submit(rid, wait=True) == Outcome.REQUEUED
    assert Request.objects.get(pk=rid).lease_owner == "", "whatever the claim took is handed back"
    assert engine.queue == [(RUN_REQUEST, (rid,))]
    engine.queue.clear()
    assert runner.submit(rid, wait=True) == Outcome.COMPLETED
    assert_one_clean_stream(rid)


def test_other_database_errors_still_fail_the_run(engine, runner, monkeypatch):
    def persist_run_progress(*args, **kwargs):
        raise OperationalError("index row size exceeds maximum")  # the connection is fine

    monkeypatch.setattr(hooks, "persist_run_progress", persist_run_progress)
    rid = engine.submit({"script": [{"tool_calls": [{"name": "append_line", "arguments": {
        "path": "/dev/null", "line": "x"}}]}, "done"]})
    engine.queue.clear()
    assert runner.submit(rid, wait=True) == Outcome.FAILED
    assert Request.objects.get(pk=rid).error_code == "INTERNAL_ERROR"
