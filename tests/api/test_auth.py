"""API keys: MASH_API_KEY, DB keys, header precedence, staff sessions; `/` stays open."""

from __future__ import annotations

import pytest

from mash_api import auth
from mash_api.models import ApiKey
from tests.api.conftest import assert_error, assert_h2a_error, data, parse_sse, post_json, read_stream, script

PROTECTED = [
    ("get", "/api/v1/health"),
    ("get", "/api/v1/agent"),
    ("get", "/api/v1/agents/primary"),
    ("get", "/api/v1/agent/primary/sessions"),
    ("get", "/api/v1/agent/primary/sessions/s/history"),
    ("get", "/api/v1/workflow"),
    ("get", "/api/v1/telemetry/events"),
    ("get", "/api/v1/telemetry/memory/search?q=@user:x"),
    ("post", "/api/v1/agent/primary/request"),
    ("post", "/api/v1/agents/primary/requests/00000000-0000-4000-8000-000000000000/cancel"),
]


def call(client, method, path, **headers):
    if method == "post":
        return post_json(client, path, {"message": "hi"}, **headers)
    return client.get(path, **headers)


def issue(name="ci") -> tuple[ApiKey, str]:
    row, key = ApiKey.issue(name)
    auth.forget_cached_configuration()
    return row, key


@pytest.mark.parametrize("method,path", PROTECTED)
def test_it_requires_a_key_when_one_is_configured(api, keyed, method, path):
    response = call(api, method, path)
    assert_error(response, 401, "UNAUTHORIZED")
    assert response["WWW-Authenticate"] == "Bearer"


def test_it_requires_a_key_for_the_schema(api, keyed):
    import json

    response = api.get("/api/v1/schema/?format=json")
    assert response.status_code == 401
    # drf-spectacular renders the error with its own media type (application/vnd.oai.openapi+json); the body is
    # still the envelope.
    assert response["Content-Type"].endswith("json")
    assert json.loads(response.content)["error"]["code"] == "UNAUTHORIZED"
    assert api.get("/api/v1/schema/?format=json", HTTP_AUTHORIZATION="Bearer k").status_code == 200


def test_it_keeps_the_root_open(api, keyed):
    assert api.get("/").json()["service"] == "mash-api"


def test_it_accepts_a_bearer_key(api, keyed):
    assert data(api.get("/api/v1/health", HTTP_AUTHORIZATION="Bearer k"))["status"] == "ok"
    data(post_json(api, "/api/v1/agent/primary/request", {"message": "hi"}, HTTP_AUTHORIZATION="Bearer k"), 202)


def test_it_accepts_an_x_api_key(api, keyed):
    assert data(api.get("/api/v1/health", HTTP_X_API_KEY="k"))["status"] == "ok"


@pytest.mark.parametrize("headers", [
    {"HTTP_AUTHORIZATION": "Bearer wrong"},
    {"HTTP_X_API_KEY": "wrong"},
    {"HTTP_AUTHORIZATION": "Bearer "},
    {"HTTP_AUTHORIZATION": "Bearer k2"},
    {"HTTP_AUTHORIZATION": "Bearer K"},
    # a present but wrong Bearer wins over a right X-API-Key
    {"HTTP_AUTHORIZATION": "Bearer wrong", "HTTP_X_API_KEY": "k"},
])
def test_it_refuses_wrong_keys(api, keyed, headers):
    assert_error(api.get("/api/v1/health", **headers), 401, "UNAUTHORIZED")


def test_it_accepts_a_right_bearer_beside_a_wrong_x_api_key(api, keyed):
    assert data(api.get("/api/v1/health", HTTP_AUTHORIZATION="Bearer k", HTTP_X_API_KEY="wrong"))["status"] == "ok"


def test_it_accepts_an_issued_db_key_and_records_its_use(api, engine):
    row, key = issue()
    assert key.startswith("mash_") and row.hashed_secret != key and key not in row.hashed_secret
    assert row.last_used_at is None
    assert_error(api.get("/api/v1/health"), 401, "UNAUTHORIZED")
    assert data(api.get("/api/v1/health", HTTP_AUTHORIZATION=f"Bearer {key}"))["status"] == "ok"
    row.refresh_from_db()
    assert row.last_used_at is not None
    assert data(api.get("/api/v1/agent", HTTP_X_API_KEY=key))["primary_agent_id"] == "primary"
    # same prefix, wrong secret
    assert_error(api.get("/api/v1/health", HTTP_AUTHORIZATION=f"Bearer {key[:-2]}xx"), 401, "UNAUTHORIZED")


def test_it_refuses_a_revoked_db_key(api, engine):
    revoked, old = issue("old")
    _, current = issue("current")
    assert data(api.get("/api/v1/health", HTTP_AUTHORIZATION=f"Bearer {old}"))["status"] == "ok"
    revoked.revoke()
    assert_error(api.get("/api/v1/health", HTTP_AUTHORIZATION=f"Bearer {old}"), 401, "UNAUTHORIZED")
    assert data(api.get("/api/v1/health", HTTP_AUTHORIZATION=f"Bearer {current}"))["status"] == "ok"


def test_it_accepts_db_keys_beside_the_env_key(api, keyed):
    _, key = issue()
    assert data(api.get("/api/v1/health", HTTP_AUTHORIZATION=f"Bearer {key}"))["status"] == "ok"
    assert data(api.get("/api/v1/health", HTTP_AUTHORIZATION="Bearer k"))["status"] == "ok"


def test_it_lets_a_logged_in_staff_user_in_without_a_key(api, keyed, make_user):
    from django.contrib.auth.models import Permission

    user = make_user("staff", is_staff=True)
    api.force_login(user)
    assert data(api.get("/api/v1/health"))["status"] == "ok"
    user.user_permissions.add(Permission.objects.get(codename="add_request", content_type__app_label="mash_runtime"))
    data(post_json(api, "/api/v1/agent/primary/request", {"message": "hi"}), 202)


def test_a_staff_session_writes_only_with_the_model_permission(api, keyed, make_user):
    api.force_login(make_user("viewer", is_staff=True))
    assert data(api.get("/api/v1/agent"))  # reads stay open to staff
    refused = post_json(api, "/api/v1/agent/primary/request", {"message": "hi"})
    assert_error(refused, 403, "FORBIDDEN")
    assert "mash_runtime.add_request" in refused.json()["error"]["message"]
    assert_error(api.delete("/api/v1/agent/primary/skill/anything"), 403, "FORBIDDEN")
    # The same user's key-authenticated calls are not the session's: the key is enough.
    data(post_json(api, "/api/v1/agent/primary/request", {"message": "hi"}, HTTP_AUTHORIZATION="Bearer k"), 202)


def test_it_refuses_a_logged_in_non_staff_user_without_a_key(api, keyed, make_user):
    api.force_login(make_user("plain"))
    assert_error(api.get("/api/v1/health"), 401, "UNAUTHORIZED")
    assert data(api.get("/api/v1/health", HTTP_AUTHORIZATION="Bearer k"))["status"] == "ok"


def test_it_protects_the_sse_streams(api, engine, keyed):
    rid = data(post_json(api, "/api/v1/agent/primary/request", {"message": script("ok")},
                         HTTP_AUTHORIZATION="Bearer k"), 202)["request_id"]
    engine.drain()
    url = f"/api/v1/agent/primary/request/{rid}/events"
    for headers in [{}, {"HTTP_AUTHORIZATION": "Bearer nope"},
                    {"HTTP_AUTHORIZATION": "Bearer no", "HTTP_X_API_KEY": "k"}]:
        response = api.get(url, **headers)
        assert not response.streaming
        assert_error(response, 401, "UNAUTHORIZED")
    assert_error(api.get("/api/v1/telemetry/events/stream"), 401, "UNAUTHORIZED")
    frames = parse_sse(read_stream(api.get(url, HTTP_X_API_KEY="k")))
    assert frames[0]["event"] == "request.accepted" and frames[-1]["event"] == "request.completed"


def test_it_protects_the_h2a_binding(api, engine, keyed):
    assert_h2a_error(api.get("/h2a/health"), 401, "UNAUTHORIZED")
    assert_h2a_error(post_json(api, "/h2a/agent/primary/request", {"message": "hi"}), 401, "UNAUTHORIZED")
    assert api.get("/h2a/health", HTTP_AUTHORIZATION="Bearer k").json()["status"] == "ok"
    rid = post_json(api, "/h2a/agent/primary/request", {"message": "hi"}, HTTP_AUTHORIZATION="Bearer k").json()[
        "request_id"]
    assert_h2a_error(api.get(f"/h2a/agent/primary/request/{rid}/status"), 401, "UNAUTHORIZED")
    for path in [f"/h2a/agent/primary/request/{rid}", f"/h2a/agent/ghost/request/{rid}"]:
        response = api.get(path)
        assert not response.streaming
        assert_h2a_error(response, 401, "UNAUTHORIZED")
    assert_h2a_error(api.get(f"/h2a/agent/ghost/request/{rid}/status"), 401, "UNAUTHORIZED")


def test_it_is_open_without_any_key_configured(api, engine):
    assert data(api.get("/api/v1/health"))["status"] == "ok"
    # an unconfigured server ignores whatever key a client sends
    assert data(api.get("/api/v1/health", HTTP_AUTHORIZATION="Bearer anything"))["status"] == "ok"
