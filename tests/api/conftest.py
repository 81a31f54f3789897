"""API fixtures: the in-process engine harness of tests/runtime, plus HTTP clients.

`engine` runs captured django-q2 tasks in-process (`engine.drain()`); `api` is a DRF
`APIClient` speaking JSON; `sse(path, **headers)` reads an SSE response to its end.
"""

from __future__ import annotations

import json

import pytest
from asgiref.sync import async_to_sync

from mash_api import auth
from mash_runtime.host import set_host
from tests.conftest import wipe_tables
from tests.runtime.conftest import EngineHarness


def on_test_database() -> bool:
    """Whether the default connection points at a test database (TEST NAME, or the test_ prefix)."""
    from django.db import connection

    name = str(connection.settings_dict["NAME"])
    test_name = (connection.settings_dict.get("TEST") or {}).get("NAME")
    return name == str(test_name) if test_name else name.startswith("test_")


@pytest.fixture(scope="session")
def api_test_database(django_db_setup, django_db_blocker, django_db_keepdb):
    """The test database, even when no collected test asks for `db`/`transactional_db`
    (pytest-django only creates it for those; `committed_db` asks for neither)."""
    from django.test.utils import setup_databases, teardown_databases

    if on_test_database():
        yield
        return
    with django_db_blocker.unblock():
        config = setup_databases(verbosity=0, interactive=False, aliases={"default"}, keepdb=django_db_keepdb)
    yield
    if not django_db_keepdb:
        with django_db_blocker.unblock():
            teardown_databases(config, verbosity=0)


@pytest.fixture
def committed_db(api_test_database, django_db_blocker):
    """Like `transactional_db` (data really committed, so the engine's threads and the SSE
    readers see it), emptied with `wipe_tables` before and after. Tests using it must not
    also use `db`."""
    assert on_test_database(), "refusing to wipe a database that is not the test database"
    with django_db_blocker.unblock():
        wipe_tables()
        yield
        wipe_tables()


@pytest.fixture
def engine(committed_db, monkeypatch, settings):
    settings.MASH_HOST_APP = "tests.apps.engine_host:build_host"
    settings.MASH_API_KEY = ""
    set_host(None)
    auth.forget_cached_configuration()
    auth._last_used_written.clear()
    harness = EngineHarness()
    monkeypatch.setattr("django_q.tasks.async_task", harness.record)
    # The harness is the worker here (`drain`): no submit should warn that none runs.
    monkeypatch.setattr("mash_runtime.read_services.no_worker_warning", lambda: None)
    yield harness
    set_host(None)
    auth.forget_cached_configuration()
    auth._last_used_written.clear()


@pytest.fixture
def api(engine):
    from rest_framework.test import APIClient

    return APIClient()


@pytest.fixture
def make_user(engine):
    from django.contrib.auth import get_user_model

    def make(username: str, *, is_staff: bool = False):
        # no password (force_login needs none): skips the slow password hasher
        return get_user_model().objects.create_user(username, is_staff=is_staff)

    return make


@pytest.fixture
def keyed(settings, engine):
    """Configure MASH_API_KEY = "k" (and forget the cached 'are keys configured' answer)."""
    settings.MASH_API_KEY = "k"
    auth.forget_cached_configuration()
    yield "k"
    settings.MASH_API_KEY = ""
    auth.forget_cached_configuration()


def post_json(client, path, body, **extra):
    return client.post(path, data=json.dumps(body), content_type="application/json", **extra)


def parse_sse(text: str) -> list[dict]:
    """Split an SSE body into frames `{id, event, data}` (comments skipped), checking the framing."""
    assert text.endswith("\n\n"), repr(text[-40:])
    frames = []
    for block in text[:-2].split("\n\n"):
        lines = block.split("\n")
        if all(line.startswith(":") for line in lines):
            continue
        fields = {}
        for line in lines:
            name, sep, value = line.partition(": ")
            assert sep, f"bad SSE line {line!r}"
            assert name not in fields, f"repeated field {name} in {block!r}"
            fields[name] = value
        assert list(fields) == ["id", "event", "data"], block
        frames.append({"id": int(fields["id"]), "event": fields["event"], "data": json.loads(fields["data"]),
                       "raw_data": fields["data"]})
    return frames


async def _read_async(response) -> str:
    chunks = []
    async for chunk in response.streaming_content:
        chunks.append(chunk if isinstance(chunk, bytes) else chunk.encode())
    return b"".join(chunks).decode()


def read_stream(response) -> str:
    """Consume a StreamingHttpResponse over an async generator (ends after the terminal event)."""
    assert response.streaming, "expected a streaming response"
    return async_to_sync(_read_async)(response)


def assert_error(response, status: int, code: str) -> dict:
    """The /api/v1 error envelope, exactly: {"error": {"code", "message", "details"}}."""
    assert response.status_code == status, (response.status_code, response.content[:500])
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body = response.json()
    assert list(body) == ["error"], body
    error = body["error"]
    assert set(error) == {"code", "message", "details"}, error
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["details"], dict), error
    return error


def assert_h2a_error(response, status: int, code: str) -> dict:
    """The /h2a binding's bare error body: {"error": {"code", "message"}}."""
    assert response.status_code == status, (response.status_code, response.content[:500])
    body = response.json()
    assert list(body) == ["error"] and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    return body["error"]


def data(response, status: int = 200):
    assert response.status_code == status, (response.status_code, response.content[:500])
    body = response.json()
    assert list(body) == ["data"], body
    return body["data"]


def script(*turns, **extra) -> str:
    """A message the engine host's scripted model plays (see tests/apps/engine_host.py)."""
    return json.dumps({"script": list(turns), **extra})


def tool(name, **arguments) -> dict:
    return {"name": name, "arguments": arguments}
