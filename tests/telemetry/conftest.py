"""Telemetry fixtures.

`open_api`: the test host app, no API key configured (the API is open), auth caches
forgotten before and after. `keyed`: the same with `MASH_API_KEY = "k"`.
`make_log`: create `ApiRequestLog` rows directly (the middleware is not involved).
"""

from __future__ import annotations

import pytest

from mash_api import auth
from mash_runtime.host import set_host


@pytest.fixture
def open_api(db, settings):
    settings.MASH_HOST_APP = "tests.apps.engine_host:build_host"
    settings.MASH_API_KEY = ""
    set_host(None)
    auth.forget_cached_configuration()
    yield
    set_host(None)
    auth.forget_cached_configuration()


@pytest.fixture
def keyed(open_api, settings):
    settings.MASH_API_KEY = "k"
    auth.forget_cached_configuration()
    return "k"


@pytest.fixture
def make_log(db):
    from mash_telemetry.models import ApiRequestLog

    def make(path: str = "/api/v1/agent", method: str = "GET", status_code: int = 200, duration_ms: float = 5.0,
             **fields):
        return ApiRequestLog.objects.create(method=method, path=path, status_code=status_code,
                                            duration_ms=duration_ms, **fields)

    return make
