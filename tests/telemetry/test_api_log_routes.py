"""GET /api/v1/telemetry/api/events, POST .../search, GET .../stream."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.test import AsyncClient
from django.utils import timezone

from mash_telemetry.models import ApiRequestLog

EVENTS = "/api/v1/telemetry/api/events"
SEARCH = "/api/v1/telemetry/api/events/search"
STREAM = "/api/v1/telemetry/api/events/stream"


def search(client, body, **extra):
    return client.post(SEARCH, data=json.dumps(body), content_type="application/json", **extra)


def paths(response) -> list[str]:
    return [e["path"] for e in response.json()["data"]["events"]]


@pytest.fixture
def seeded(open_api, make_log):
    now = timezone.now()
    return [
        make_log("/api/v1/agent", "GET", 200, 3.0, created_at=now - timedelta(minutes=10)),
        make_log("/api/v1/agent/primary/request", "POST", 202, 40.0, created_at=now - timedelta(minutes=5)),
        make_log("/api/v1/agent/nope", "GET", 404, 2.0, created_at=now - timedelta(minutes=2)),
        make_log("/h2a/agent/primary/request", "POST", 500, 900.0, created_at=now - timedelta(minutes=1)),
        make_log("/api/v1/workflow", "GET", 200, 8.0, created_at=now),
    ]


def test_it_lists_the_newest_rows_oldest_first(seeded, client):
    response = client.get(EVENTS, {"limit": 3})
    assert response.status_code == 200
    data = response.json()["data"]
    assert set(data) == {"events", "limit"}
    assert data["limit"] == 3
    assert [e["id"] for e in data["events"]] == [r.id for r in seeded[2:]]
    event = data["events"][-1]
    assert isinstance(event["created_at"], float)
    assert abs(event["created_at"] - seeded[-1].created_at.timestamp()) < 0.001
    assert {"method", "path", "route", "status_code", "duration_ms", "client", "request_headers", "request_body",
            "request_body_truncated", "response_body", "response_body_truncated", "streaming"} <= set(event)


def test_it_defaults_the_limit(seeded, client):
    data = client.get(EVENTS).json()["data"]
    assert data["limit"] == 100
    assert len(data["events"]) == 5


def test_it_filters_by_method_path_and_status(seeded, client):
    assert paths(client.get(EVENTS, {"method": "post"})) == ["/api/v1/agent/primary/request",
                                                             "/h2a/agent/primary/request"]
    assert paths(client.get(EVENTS, {"path": "/api/v1/agent"})) == [
        "/api/v1/agent", "/api/v1/agent/primary/request", "/api/v1/agent/nope"]
    assert paths(client.get(EVENTS, {"status": "404"})) == ["/api/v1/agent/nope"]
    assert paths(client.get(EVENTS, {"status": "5xx"})) == ["/h2a/agent/primary/request"]
    assert paths(client.get(EVENTS, {"method": "GET", "status": "200"})) == ["/api/v1/agent", "/api/v1/workflow"]


@pytest.mark.parametrize("params, loc", [
    ({"limit": "0"}, "limit"), ({"limit": "lots"}, "limit"), ({"limit": "1001"}, "limit"),
    ({"status": "abc"}, "status"), ({"path": "/api\x00"}, "path"), ({"status": "999"}, "status"), ({"method": "G E T"}, "method"),
])
def test_it_rejects_bad_query_parameters(seeded, client, params, loc):
    response = client.get(EVENTS, params)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert error["details"]["errors"][0]["loc"] == ["query", loc]


def test_it_searches_with_a_json_body(seeded, client):
    assert paths(search(client, {"path_contains": "primary"})) == ["/api/v1/agent/primary/request",
                                                                   "/h2a/agent/primary/request"]
    assert paths(search(client, {"min_duration_ms": 40})) == ["/api/v1/agent/primary/request",
                                                              "/h2a/agent/primary/request"]
    since = (timezone.now() - timedelta(minutes=3)).timestamp()
    assert paths(search(client, {"since": since})) == ["/api/v1/agent/nope", "/h2a/agent/primary/request",
                                                       "/api/v1/workflow"]
    assert paths(search(client, {"status": 404})) == ["/api/v1/agent/nope"]
    assert paths(search(client, {"status": "2xx", "method": "GET", "path": "/api/"})) == [
        "/api/v1/agent", "/api/v1/workflow"]
    data = search(client, {"limit": 2}).json()["data"]
    assert data["limit"] == 2
    assert [e["id"] for e in data["events"]] == [r.id for r in seeded[3:]]
    assert len(search(client, {}).json()["data"]["events"]) == 5


@pytest.mark.parametrize("body, loc", [
    ({"limit": "many"}, ["body", "limit"]),
    ({"limit": 0}, ["body", "limit"]),
    ({"min_duration_ms": -1}, ["body", "min_duration_ms"]),
    ({"since": "yesterday"}, ["body", "since"]),
    ({"since": 1e300}, ["body", "since"]),
    ({"status": "teapot"}, ["body", "status"]),
    ({"path_contains": "a\x00"}, ["body", "path_contains"]),
    ({"min_duration_ms": "nan"}, ["body", "min_duration_ms"]),
    ({"path_contains": ["a"]}, ["body", "path_contains"]),
    ({"pathcontains": "a"}, ["body", "pathcontains"]),
    ([{"status": 200}], ["body"]),
])
def test_it_rejects_bad_search_bodies(seeded, client, body, loc):
    response = search(client, body)
    assert response.status_code == 422, response.content
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert loc in [e["loc"] for e in error["details"]["errors"]]


def test_it_rejects_a_body_that_is_not_json(seeded, client):
    response = client.post(SEARCH, data="{nope", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "INVALID_JSON"


def test_it_needs_a_key_when_one_is_configured(keyed, make_log, client):
    make_log()
    for response in (client.get(EVENTS), search(client, {}), client.get(STREAM)):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "UNAUTHORIZED"
    response = client.get(EVENTS, HTTP_AUTHORIZATION="Bearer k")
    assert response.status_code == 200
    assert len(response.json()["data"]["events"]) == 1
    assert search(client, {}, HTTP_X_API_KEY="k").status_code == 200


def test_it_does_not_log_its_own_reads(seeded, client):
    client.get(EVENTS)
    search(client, {})
    assert ApiRequestLog.objects.count() == len(seeded)


def test_it_rejects_a_wrong_method_on_the_stream(open_api, client):
    response = client.post(STREAM)
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "METHOD_NOT_ALLOWED"


@pytest.mark.parametrize("query", ["after=x", "after=-1", "status=abc"])
def test_it_validates_stream_parameters_before_streaming(open_api, client, query):
    response = client.get(f"{STREAM}?{query}")
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "VALIDATION_ERROR"


# -- the SSE tail: the stream closes its DB connection between polls, so these need committed data.


async def next_frame(iterator, timeout: float = 5.0) -> str:
    chunk = await asyncio.wait_for(iterator.__anext__(), timeout)
    return chunk.decode() if isinstance(chunk, bytes) else chunk


def data_of(frame: str) -> dict:
    assert frame.startswith("data: ") and frame.endswith("\n\n") and frame.count("\n") == 2, repr(frame)
    return json.loads(frame[len("data: "):])


@pytest.fixture
def committed(transactional_db, settings):
    from mash_api import auth

    settings.MASH_API_KEY = ""
    auth.forget_cached_configuration()
    yield
    auth.forget_cached_configuration()


def test_it_streams_rows_after_a_cursor_as_data_only_frames(committed, make_log):
    first = make_log("/api/v1/agent", status_code=200)
    make_log("/api/v1/agent/x", status_code=404)
    third = make_log("/api/v1/workflow", status_code=200)

    async def scenario():
        response = await AsyncClient().get(STREAM, {"after": first.id - 1, "status": "200"})
        assert response.status_code == 200
        assert response["Content-Type"] == "text/event-stream"
        assert response["Cache-Control"] == "no-cache"
        frames = response.streaming_content
        try:
            return [data_of(await next_frame(frames)), data_of(await next_frame(frames))]
        finally:
            await frames.aclose()

    got = async_to_sync(scenario)()
    assert [e["id"] for e in got] == [first.id, third.id]  # the 404 was filtered out
    assert isinstance(got[0]["created_at"], float)


def test_it_tails_rows_logged_after_it_opened(committed, make_log):
    make_log("/api/v1/old")

    async def scenario():
        response = await AsyncClient().get(STREAM)
        frames = response.streaming_content
        try:
            # "Now" is taken before the response starts: a row logged once the client has it is
            # sent, even before the stream's first read; the older one is not.
            row = await sync_to_async(make_log)("/api/v1/new", "POST", 201)
            return row.id, data_of(await next_frame(frames))
        finally:
            await frames.aclose()

    row_id, event = async_to_sync(scenario)()
    assert (event["id"], event["path"], event["method"], event["status_code"]) == (row_id, "/api/v1/new", "POST", 201)


def test_it_sends_keep_alives_while_idle(committed, monkeypatch):
    monkeypatch.setattr("mash_api.stream_readers.KEEPALIVE_SECONDS", 0.2)

    async def scenario():
        response = await AsyncClient().get(STREAM)
        frames = response.streaming_content
        try:
            started = time.monotonic()
            return await next_frame(frames), time.monotonic() - started
        finally:
            await frames.aclose()

    frame, waited = async_to_sync(scenario)()
    assert frame == ": keep-alive\n\n"
    assert waited >= 0.2
