"""`Idempotency-Key` on POST /api/v1/agent/<id>/request: a retried submit gets the first
request back, never a second one, also when the retries race; the database decides."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from mash_runtime.models import IdempotencyKey, Request
from mash_runtime.services import submit_request
from tests.api.conftest import assert_error, data, post_json

URL = "/api/v1/agent/primary/request"


def submit(api, body, key, agent="primary"):
    return post_json(api, f"/api/v1/agent/{agent}/request", body, HTTP_IDEMPOTENCY_KEY=key)


def test_the_same_key_twice_makes_one_request_and_answers_with_it_again(api, engine):
    body = {"message": "book the flight", "session_id": "trip", "metadata": {"from": "cli"}}
    first = submit(api, body, "key-1")
    assert first.status_code == 202 and "Idempotent-Replayed" not in first
    created = data(first, 202)
    assert set(created) == {"request_id", "agent_id", "session_id", "status"}

    again = submit(api, body, "key-1")
    replayed = data(again, 202)
    assert again["Idempotent-Replayed"] == "true"
    assert replayed == {**created, "replayed": True}
    assert Request.objects.count() == 1
    assert IdempotencyKey.objects.get().request_id == uuid.UUID(created["request_id"])
    # A replay of a request nobody claimed yet delivers it again (its first enqueue may have
    # been lost): the second delivery finds it finished.
    assert engine.drain() == ["completed", "finished"]
    # Still the same request once it has run.
    assert data(submit(api, body, "key-1"), 202)["request_id"] == created["request_id"]


def test_the_body_is_compared_as_json_not_as_bytes(api, engine):
    rid = data(submit(api, {"message": "hi", "metadata": {"a": 1, "b": 2}}, "k"), 202)["request_id"]
    spaced = api.post(URL, data='{ "metadata": {"b": 2, "a": 1},\n  "message": "  hi " }',
                      content_type="application/json", HTTP_IDEMPOTENCY_KEY="k")
    assert data(spaced, 202)["request_id"] == rid
    assert Request.objects.count() == 1


def test_the_same_key_with_a_different_body_is_refused(api, engine):
    rid = data(submit(api, {"message": "book the flight"}, "key-1"), 202)["request_id"]
    for other in ({"message": "cancel the flight"}, {"message": "book the flight", "session_id": "other"},
                  {"message": "book the flight", "metadata": {"x": 1}}):
        error = assert_error(submit(api, other, "key-1"), 422, "IDEMPOTENCY_KEY_REUSED")
        assert error["details"] == {"request_id": rid}
    assert Request.objects.count() == 1


def test_a_key_belongs_to_one_agent(api, engine):
    mine = data(submit(api, {"message": "hi"}, "shared"), 202)["request_id"]
    theirs = data(submit(api, {"message": "hi"}, "shared", agent="helper"), 202)
    assert theirs["request_id"] != mine and theirs["agent_id"] == "helper" and "replayed" not in theirs
    assert Request.objects.count() == 2


def test_without_a_key_every_submit_is_a_new_request(api, engine):
    ids = {data(post_json(api, URL, {"message": "hi"}), 202)["request_id"] for _ in range(3)}
    assert len(ids) == 3 and not IdempotencyKey.objects.exists()


@pytest.mark.parametrize("key", ["", "   ", "x" * 256, "clé", "tab\there", "nul\x00", "line\nbreak"])
def test_a_bad_key_is_a_400_envelope_and_stores_nothing(api, engine, key):
    error = assert_error(submit(api, {"message": "hi"}, key), 400, "INVALID_IDEMPOTENCY_KEY")
    assert error["details"]["errors"][0]["loc"] == ["header", "Idempotency-Key"]
    assert not Request.objects.exists() and not engine.queue


def test_a_key_of_255_printable_ascii_characters_is_taken(api, engine):
    key = ("".join(chr(c) for c in range(0x20, 0x7F)) * 3)[:255].strip()
    key = key + "~" * (255 - len(key))
    rid = data(submit(api, {"message": "hi"}, key), 202)["request_id"]
    assert data(submit(api, {"message": "hi"}, key), 202)["request_id"] == rid
    assert IdempotencyKey.objects.get().key == key


def test_the_openapi_schema_documents_the_header(api, engine):
    schema = api.get("/api/v1/schema/?format=json").json()
    post = schema["paths"]["/api/v1/agent/{agent_id}/request"]["post"]
    assert any(p["in"] == "header" and p["name"] == "Idempotency-Key" for p in post["parameters"])


def test_concurrent_duplicate_submits_with_one_key_make_one_request(engine):
    """Eight submits with one key, released at once: the unique constraint lets one insert in
    and the other seven answer with its request."""
    count = 8
    barrier = threading.Barrier(count)
    results: list[dict] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            barrier.wait(10)
            results.append(submit_request("primary", "pay the invoice", session_id="billing",
                                          idempotency_key="invoice-42"))
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert len({r["request_id"] for r in results}) == 1, results
    assert sum(not r.get("replayed") for r in results) == 1, "exactly one submit made the request"
    assert Request.objects.count() == 1 and IdempotencyKey.objects.count() == 1
    outcomes = engine.drain()
    assert outcomes[0] == "completed" and set(outcomes[1:]) <= {"finished"}, outcomes


def test_the_database_refuses_a_second_row_for_one_agent_and_key(engine):
    """The constraint itself, whatever the service does: a racing insert cannot slip through."""
    from django.db import IntegrityError, transaction

    first = submit_request("primary", "hi", idempotency_key="k")
    key = IdempotencyKey.objects.get()
    other = Request.objects.get(pk=submit_request("primary", "hi")["request_id"])
    with pytest.raises(IntegrityError), transaction.atomic():
        IdempotencyKey.objects.create(agent_id=key.agent_id, key="k", body_hash=key.body_hash, request=other)
    assert IdempotencyKey.objects.get().request_id == uuid.UUID(first["request_id"])


def test_the_sweeper_forgets_keys_after_a_day_and_the_key_then_makes_a_new_request(api, engine):
    from mash_runtime.sweeper import sweep

    old = data(submit(api, {"message": "hi"}, "daily"), 202)["request_id"]
    fresh = data(submit(api, {"message": "hi"}, "recent"), 202)["request_id"]
    IdempotencyKey.objects.filter(key="daily").update(created_at=timezone.now() - timedelta(hours=25))
    assert sweep()["idempotency_keys_forgotten"] == 1
    assert list(IdempotencyKey.objects.values_list("key", flat=True)) == ["recent"]
    again = data(submit(api, {"message": "hi"}, "daily"), 202)
    assert again["request_id"] != old and "replayed" not in again
    assert data(submit(api, {"message": "hi"}, "recent"), 202)["request_id"] == fresh


def test_an_expired_key_the_sweeper_has_not_deleted_yet_makes_a_new_request(api, engine):
    old = data(submit(api, {"message": "hi"}, "late"), 202)["request_id"]
    IdempotencyKey.objects.update(created_at=timezone.now() - timedelta(hours=25))
    # Even with another body: the old key is forgotten, not compared.
    again = data(submit(api, {"message": "something else"}, "late"), 202)
    assert again["request_id"] != old
    assert IdempotencyKey.objects.get().request_id == uuid.UUID(again["request_id"])


def test_prune_deletes_expired_keys_and_keys_go_with_their_requests(api, engine):
    import io

    from django.core.management import call_command

    kept = data(submit(api, {"message": json.dumps({"script": ["done"]})}, "kept"), 202)["request_id"]
    data(submit(api, {"message": "hi"}, "expired"), 202)
    engine.drain()
    IdempotencyKey.objects.filter(key="expired").update(created_at=timezone.now() - timedelta(hours=30))
    out = io.StringIO()
    call_command("prune", "--older-than", "30d", "--dry-run", stdout=out)
    assert "1  expired idempotency keys" in out.getvalue()
    assert IdempotencyKey.objects.count() == 2
    call_command("prune", "--older-than", "30d", stdout=out)
    assert list(IdempotencyKey.objects.values_list("key", flat=True)) == ["kept"]
    # A pruned request takes its key along.
    Request.objects.filter(pk=kept).update(finished_at=timezone.now() - timedelta(days=40))
    call_command("prune", "--older-than", "30d", stdout=out)
    assert not Request.objects.filter(pk=kept).exists() and not IdempotencyKey.objects.exists()
