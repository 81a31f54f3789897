"""A submit whose database connection is dropped (`pg_terminate_backend`) is tried once more
on a live connection and stores exactly one request, whether or not the first try had
committed; a database that stays down answers 503 DATABASE_UNAVAILABLE (retryable), never 500."""

from __future__ import annotations

import psycopg
import pytest
from django.db import OperationalError, connection

from mash_runtime import services
from mash_runtime.dbfaults import connection_dropped
from mash_runtime.models import IdempotencyKey, Request
from mash_runtime.tasks import RUN_REQUEST
from tests.api.conftest import assert_error, data, post_json

URL = "/api/v1/agent/primary/request"

postgresql_only = pytest.mark.skipif("connection.vendor != 'postgresql'",
                                     reason="SQLite has no server to drop a connection")


def terminate_my_backend() -> None:
    """End this thread's PostgreSQL connection from another one, as an operator (or a failover)
    would, and wait until it is gone."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    s = connection.settings_dict
    with psycopg.connect(host=s["HOST"] or "127.0.0.1", port=s["PORT"] or 5432, user=s["USER"],
                         password=s["PASSWORD"] or None, dbname=s["NAME"], autocommit=True) as other:
        assert other.execute("SELECT pg_terminate_backend(%s, 5000)", [pid]).fetchone()[0]


def faulty_create_request(monkeypatch, *, faults: int, after_commit: bool = False) -> list[str]:
    """`create_request` whose connection is terminated on its first `faults` calls: before its
    statement (nothing stored), or with `after_commit` once it has committed (the client of a
    connection that died during COMMIT cannot tell which)."""
    real = services.create_request
    calls: list[str] = []

    def create_request(*args, **kwargs):
        if len(calls) >= faults:
            calls.append("ok")
            return real(*args, **kwargs)
        calls.append("dropped")
        if not after_commit:
            terminate_my_backend()
            return real(*args, **kwargs)
        created = real(*args, **kwargs)
        terminate_my_backend()
        with connection.cursor() as cursor:  # the answer to the COMMIT, lost with the connection
            cursor.execute("SELECT 1")
        return created

    monkeypatch.setattr(services, "create_request", create_request)
    return calls


def known_session(known: bool, monkeypatch) -> str:
    """A session id: one that exists (its submit is one statement that commits on its own), or
    a new one, whose submit is a transaction (BEGIN, the session, the request, its event, the
    key, COMMIT)."""
    if known:
        from mash_runtime.models import Agent, Session

        Session.objects.create(agent=Agent.objects.get(agent_id="primary"), session_id="known")
        return "known"
    # The one statement would be tried first (and meet the dead connection): go straight to the transaction.
    monkeypatch.setattr(services, "insert_request_in_one_statement", lambda *args, **kwargs: False)
    return "new"


@pytest.fixture
def synced(engine):
    from mash_runtime.host_sync import ensure_synced, sync_host

    sync_host(ensure_synced())


@postgresql_only
@pytest.mark.parametrize("known", [True, False], ids=["one-statement", "transaction"])
def test_a_submit_whose_connection_is_dropped_once_is_retried_and_succeeds(api, engine, synced, monkeypatch, known):
    session = known_session(known, monkeypatch)
    calls = faulty_create_request(monkeypatch, faults=1)
    created = data(post_json(api, URL, {"message": "hi", "session_id": session}), 202)
    assert calls == ["dropped", "ok"]
    assert Request.objects.get().pk == services.uuid.UUID(created["request_id"])
    assert [name for name, _ in engine.queue] == [RUN_REQUEST]
    assert engine.drain() == ["completed"]


@postgresql_only
@pytest.mark.parametrize("known", [True, False], ids=["one-statement", "transaction"])
@pytest.mark.parametrize("key", [None, "retry-me"])
def test_a_submit_whose_commit_went_through_before_the_drop_stores_one_request(api, engine, synced, monkeypatch, key,
                                                                               known):
    session = known_session(known, monkeypatch)
    calls = faulty_create_request(monkeypatch, faults=1, after_commit=True)
    extra = {"HTTP_IDEMPOTENCY_KEY": key} if key else {}
    created = data(post_json(api, URL, {"message": "hi", "session_id": session}, **extra), 202)
    assert calls == ["dropped", "ok"]
    # The retry found its own first try stored: the same id, answered as new, enqueued once.
    assert "replayed" not in created
    assert [str(pk) for pk in Request.objects.values_list("pk", flat=True)] == [created["request_id"]]
    assert IdempotencyKey.objects.count() == (1 if key else 0)
    assert [name for name, _ in engine.queue] == [RUN_REQUEST]
    assert engine.drain() == ["completed"]


@postgresql_only
def test_a_dropped_connection_in_the_key_check_is_retried_too(api, engine, monkeypatch):
    from mash_api import auth

    real, calls = auth.keys_configured, []

    def keys_configured():
        if not calls:
            calls.append("dropped")
            terminate_my_backend()
        return real()

    monkeypatch.setattr(auth, "keys_configured", keys_configured)
    data(post_json(api, URL, {"message": "hi"}), 202)
    assert calls == ["dropped"] and Request.objects.count() == 1


@postgresql_only
def test_when_the_database_stays_down_the_submit_is_a_retryable_503_and_the_client_retry_is_safe(api, engine,
                                                                                               monkeypatch):
    calls = faulty_create_request(monkeypatch, faults=2)
    body = {"message": "hi", "session_id": "s1"}
    response = post_json(api, URL, body, HTTP_IDEMPOTENCY_KEY="k1")
    error = assert_error(response, 503, "DATABASE_UNAVAILABLE")
    assert error["details"] == {"retryable": True} and response["Retry-After"] == "1"
    assert calls == ["dropped", "dropped"], "tried once more, then gave up"
    assert not Request.objects.exists() and not engine.queue
    # The client sends it again with the same key once the database is back: one request.
    rid = data(post_json(api, URL, body, HTTP_IDEMPOTENCY_KEY="k1"), 202)["request_id"]
    assert data(post_json(api, URL, body, HTTP_IDEMPOTENCY_KEY="k1"), 202)["replayed"] is True
    assert [str(pk) for pk in Request.objects.values_list("pk", flat=True)] == [rid]


@postgresql_only
def test_when_the_first_try_committed_and_the_retry_fails_the_client_retry_gets_that_request(api, engine,
                                                                                           monkeypatch):
    real = services.create_request
    calls: list[str] = []

    def create_request(*args, **kwargs):
        calls.append("call")
        if len(calls) == 1:  # commits, then the connection dies
            created = real(*args, **kwargs)
            terminate_my_backend()
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            return created
        if len(calls) == 2:  # the service's retry: the database is still unreachable
            raise OperationalError("connection failed: server closed the connection unexpectedly")
        return real(*args, **kwargs)

    monkeypatch.setattr(services, "create_request", create_request)
    body = {"message": "hi"}
    assert_error(post_json(api, URL, body, HTTP_IDEMPOTENCY_KEY="k2"), 503, "DATABASE_UNAVAILABLE")
    stored = Request.objects.get()
    # The client cannot know the first try went through; its retry with the key finds it.
    replay = post_json(api, URL, body, HTTP_IDEMPOTENCY_KEY="k2")
    assert data(replay, 202) == {"request_id": str(stored.pk), "agent_id": "primary", "session_id": "primary:default",
                                 "status": "accepted", "replayed": True}
    assert replay["Idempotent-Replayed"] == "true"
    assert Request.objects.count() == 1
    # Its first try never reached the enqueue: the replay of a request nobody claimed yet does.
    assert [name for name, _ in engine.queue] == [RUN_REQUEST]
    assert engine.drain() == ["completed"]


def test_a_locked_or_starved_database_is_a_503_without_a_retry(api, engine, monkeypatch):
    calls = []

    def locked(*args, **kwargs):
        calls.append(1)
        raise OperationalError("database is locked")

    monkeypatch.setattr(services, "create_request", locked)
    response = post_json(api, URL, {"message": "hi"})
    assert_error(response, 503, "DATABASE_UNAVAILABLE")
    assert response.json()["error"]["details"] == {"retryable": True}
    assert calls == [1], "the connection is fine: trying again at once would only wait as long again"


def test_a_pool_timeout_is_not_a_dropped_connection():
    class PoolTimeout(Exception):
        pass

    exc = OperationalError("couldn't get a connection after 10.00 sec")
    exc.__cause__ = PoolTimeout()
    assert not connection_dropped(exc)
    assert not connection_dropped(ValueError("not a database error"))
