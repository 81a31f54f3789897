"""ApiRequestLogMiddleware: what it logs, what it skips, and that it never breaks a response."""

from __future__ import annotations

import json

import pytest
from asgiref.sync import async_to_sync, iscoroutinefunction, sync_to_async
from django.db import DatabaseError
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.test import AsyncClient, RequestFactory

from mash_telemetry.middleware import ApiRequestLogMiddleware
from mash_telemetry.models import BODY_LIMIT, REDACTED, ApiRequestLog


def rows():
    return list(ApiRequestLog.objects.order_by("id"))


def test_it_logs_a_request_with_redacted_credentials_and_a_truncated_body(keyed, client):
    body = json.dumps({"message": "x" * (BODY_LIMIT * 2)})
    response = client.post("/api/v1/nope?debug=1", data=body, content_type="application/json",
                           HTTP_AUTHORIZATION="Bearer k", HTTP_X_API_KEY="other-secret",
                           HTTP_COOKIE="sessionid=s3cr3t", HTTP_X_TRACE="visible")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "ROUTE_NOT_FOUND"

    [row] = rows()
    assert (row.method, row.path, row.query_string, row.status_code) == ("POST", "/api/v1/nope", "debug=1", 404)
    assert row.route == ""  # nothing resolved
    assert row.client == "127.0.0.1"
    assert row.duration_ms >= 0
    headers = {name.lower(): value for name, value in row.request_headers.items()}
    assert headers["authorization"] == REDACTED
    assert headers["x-api-key"] == REDACTED
    assert headers["cookie"] == REDACTED
    assert headers["x-trace"] == "visible"
    dumped = json.dumps(row.request_headers)
    assert "Bearer k" not in dumped and "other-secret" not in dumped and "s3cr3t" not in dumped
    assert row.request_body_truncated is True
    assert len(row.request_body.encode()) == BODY_LIMIT
    assert row.request_body == body[:BODY_LIMIT]
    assert json.loads(row.response_body)["error"]["code"] == "ROUTE_NOT_FOUND"
    assert row.response_body_truncated is False
    assert row.streaming is False


def test_it_leaves_the_body_readable_for_the_view(open_api, client):
    # The middleware reads the body first; DRF must still parse it (400 for blank, not a parse error).
    response = client.post("/api/v1/agent/primary/request", data=json.dumps({"message": "  "}),
                           content_type="application/json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "INVALID_REQUEST"
    [row] = rows()
    assert json.loads(row.request_body) == {"message": "  "}
    assert row.route == "api/v1/agent/<str:agent_id>/request"


def test_it_records_the_resolved_route_and_the_response(open_api, client):
    response = client.get("/api/v1/agent")
    assert response.status_code == 200
    [row] = rows()
    assert row.route == "api/v1/agent"
    assert json.loads(row.response_body) == response.json()
    assert row.response_headers["Content-Type"].startswith("application/json")


def test_it_keeps_rows_with_nul_characters(open_api, client):
    # PostgreSQL refuses NUL in text and JSON: the row must still be written, NULs marked.
    client.post("/api/v1/agent/a%00b", data=b"bin\x00ary", content_type="application/octet-stream",
                HTTP_X_ODD="x\x00y")
    [row] = rows()
    assert row.path == "/api/v1/agent/a\ufffdb"
    assert row.request_body == "bin\ufffdary"


def test_it_logs_h2a_routes(open_api, client):
    client.get("/h2a/agent/primary/request/nope/status")
    [row] = rows()
    assert row.path == "/h2a/agent/primary/request/nope/status"


@pytest.mark.parametrize("path", ["/api/v1/health", "/api/v1/telemetry/api/events", "/admin/login/", "/"])
def test_it_skips_health_its_own_routes_and_non_api_paths(open_api, client, path):
    response = client.get(path)
    assert response.status_code < 500
    assert rows() == []


def test_it_can_be_switched_off(open_api, client, settings):
    settings.MASH_API_LOG = False
    client.get("/api/v1/agent")
    assert rows() == []


def test_it_never_breaks_a_response_when_the_write_fails(open_api, client, monkeypatch, caplog):
    def fail(*args, **kwargs):
        raise DatabaseError("disk full")

    monkeypatch.setattr(ApiRequestLog.objects, "create", fail)
    response = client.get("/api/v1/agent")
    assert response.status_code == 200
    assert response.json()["data"]["agents"]
    assert "could not write the API request log row" in caplog.text
    monkeypatch.undo()
    # The failed insert ran in a savepoint: the connection is still usable.
    client.get("/api/v1/agent")
    assert len(rows()) == 1


def test_it_never_breaks_a_response_when_capturing_fails(open_api, client, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("mash_telemetry.middleware.redact_headers", fail)
    monkeypatch.setattr("mash_telemetry.middleware.read_request_body", fail)
    response = client.get("/api/v1/agent")
    assert response.status_code == 200
    assert rows() == []


def test_it_never_breaks_an_async_response_when_the_write_fails(open_api, monkeypatch):
    def fail(*args, **kwargs):
        raise DatabaseError("disk full")

    monkeypatch.setattr(ApiRequestLog.objects, "create", fail)
    response = async_to_sync(AsyncClient().get)("/api/v1/agent")
    assert response.status_code == 200
    assert response.json()["data"]["agents"]


# -- unit tests with fake views ----------------------------------------------------------


def endless_frames(started: list):
    started.append(True)
    while True:
        yield b"data: {}\n\n"


def test_it_marks_streaming_responses_without_consuming_them(db):
    started: list = []

    def view(request):
        return StreamingHttpResponse(endless_frames(started), content_type="text/event-stream")

    middleware = ApiRequestLogMiddleware(view)
    assert not iscoroutinefunction(middleware)
    response = middleware(RequestFactory().get("/api/v1/agent/a/request/r/events"))
    assert response.streaming
    assert started == []  # the generator was never entered
    [row] = rows()
    assert row.streaming is True
    assert row.response_body == ""
    assert row.response_headers["Content-Type"] == "text/event-stream"
    assert next(iter(response.streaming_content)) == b"data: {}\n\n"


def test_it_runs_in_async_mode_and_leaves_async_streams_alone(db):
    started: list = []

    async def frames():
        started.append(True)
        yield "data: {}\n\n"

    async def view(request):
        return StreamingHttpResponse(frames(), content_type="text/event-stream")

    middleware = ApiRequestLogMiddleware(view)
    assert iscoroutinefunction(middleware)
    response = async_to_sync(middleware)(RequestFactory().get("/h2a/agent/a/request/r"))
    assert response.streaming and started == []
    [row] = rows()
    assert (row.path, row.streaming, row.status_code) == ("/h2a/agent/a/request/r", True, 200)


def test_it_truncates_large_responses(db):
    def view(request):
        return HttpResponse("é" * BODY_LIMIT, content_type="text/plain; charset=utf-8")  # 2 bytes each

    middleware = ApiRequestLogMiddleware(view)
    response = middleware(RequestFactory().get("/api/v1/big"))
    assert len(response.content) == 2 * BODY_LIMIT  # the client still gets everything
    [row] = rows()
    assert row.response_body_truncated is True
    assert row.response_body == "é" * (BODY_LIMIT // 2)


def test_it_does_not_read_bodies_django_would_refuse(db, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 100
    seen = {}

    def view(request):
        seen["read_started"] = request._read_started
        return JsonResponse({"ok": True})

    middleware = ApiRequestLogMiddleware(view)
    middleware(RequestFactory().post("/api/v1/upload", data="x" * 500, content_type="text/plain"))
    assert seen["read_started"] is False  # left for the view (which may stream it)
    [row] = rows()
    assert row.request_body == "[body not captured: 500 bytes]"
    assert row.request_body_truncated is True


def test_it_logs_a_real_sse_response_as_streaming(open_api):
    """The runtime-event tail never ends: the log row must exist before anyone reads it."""

    async def scenario():
        response = await AsyncClient().get("/api/v1/telemetry/events/stream")
        assert response.status_code == 200
        assert response["Content-Type"] == "text/event-stream"
        assert response.streaming
        return response

    async_to_sync(scenario)()
    [row] = rows()
    assert row.path == "/api/v1/telemetry/events/stream"
    assert row.streaming is True
    assert row.response_body == ""
    assert row.route == "api/v1/telemetry/events/stream"


def test_it_releases_the_connection_before_a_stream_starts(transactional_db):
    """A stream may last hours; the log write must not pin a (pooled) connection that long."""
    from django.db import connection

    def view(request):
        return StreamingHttpResponse(iter([b"data: {}\n\n"]), content_type="text/event-stream")

    ApiRequestLogMiddleware(view)(RequestFactory().get("/api/v1/agent/a/request/r/events"))
    assert connection.connection is None
    assert ApiRequestLog.objects.get().streaming is True


def test_async_requests_are_logged_in_batches_after_their_responses(open_api, settings):
    """With a flush window, rows are written after the responses, several in one INSERT."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from mash_telemetry.middleware import batch_writer

    settings.MASH_API_LOG_FLUSH_SECONDS = 60  # longer than the test: only the awaited drain writes

    async def scenario():
        client = AsyncClient()
        for _ in range(3):
            assert (await client.get("/api/v1/agent")).status_code == 200
        assert len(batch_writer.buffer) == 3  # the responses went out before their rows
        assert await sync_to_async(rows)() == []
        batch_writer.task.cancel()  # skip the wait, then write as the drain would
        await batch_writer.flush()

    with CaptureQueriesContext(connection) as queries:
        async_to_sync(scenario)()
    assert batch_writer.buffer == []
    assert [(r.method, r.path, r.status_code) for r in rows()] == [("GET", "/api/v1/agent", 200)] * 3
    inserts = [q["sql"] for q in queries.captured_queries if q["sql"].startswith('INSERT INTO "mash_telemetry_apirequestlog"')]
    assert len(inserts) == 1


def test_the_batch_writer_writes_what_is_left_at_exit(db):
    from mash_telemetry.middleware import BatchWriter

    writer = BatchWriter()
    writer.buffer.append({"method": "GET", "path": "/api/v1/x", "status_code": 200, "duration_ms": 1.0})
    writer.write_now()
    assert writer.buffer == [] and [r.path for r in rows()] == ["/api/v1/x"]
