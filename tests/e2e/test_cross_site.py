"""Cross-site use is refused on the wire (a real daphne): a logged-in browser's cookie does
not let a foreign page write (CSRF on /api/v1 and /h2a/) or open a WebSocket (Origin),
and a Host the server does not answer to gets a JSON 400 naming the setting."""

from __future__ import annotations

import json

import httpx
import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from mash_runtime.models import Request

API_KEY = "cross-site-key"
EVIL = "http://evil.example"


@pytest.fixture
def server(web_servers):
    return web_servers.start(MASH_API_KEY=API_KEY)


def session_cookie(**fields) -> dict[str, str]:
    """A real session row for a user, as the browser would hold it after logging in."""
    user = get_user_model().objects.create_user(fields.pop("username", "operator"), **fields)
    client = Client()
    client.force_login(user)
    return {"sessionid": client.cookies["sessionid"].value}


def csrf_pair(server) -> tuple[str, str]:
    """A CSRF cookie and matching token, as the server's own pages would hand out."""
    response = httpx.get(f"{server.url}/admin/login/", timeout=30)
    token = response.cookies["csrftoken"]
    return token, token


def submit_as_browser(server, path, cookies, *, origin, token=None, content_type="text/plain"):
    headers = {"Origin": origin, "Content-Type": content_type}
    if token:
        headers["X-CSRFToken"] = token
    return httpx.post(f"{server.url}{path}", headers=headers, cookies=cookies, timeout=30,
                      content=json.dumps({"message": "from a page"}))


def test_a_foreign_page_cannot_submit_or_resume_with_a_staff_cookie(server):
    cookies = session_cookie(is_staff=True, is_superuser=True)
    for path in ("/h2a/agent/primary/request", "/api/v1/agent/primary/request",
                 "/h2a/agent/primary/request/r-1/resume"):
        response = submit_as_browser(server, path, cookies, origin=EVIL)
        assert response.status_code == 403, (path, response.status_code, response.text)
        assert response.json()["error"]["code"] == "CSRF_FAILED", response.text
    assert not Request.objects.exists()


def test_the_hosts_own_pages_can_submit_with_a_cookie_and_its_csrf_token(server):
    cookies = session_cookie(is_staff=True, is_superuser=True)
    csrf_cookie, token = csrf_pair(server)
    cookies = {**cookies, "csrftoken": csrf_cookie}
    for path in ("/h2a/agent/primary/request", "/api/v1/agent/primary/request"):
        response = submit_as_browser(server, path, cookies, origin=server.url, token=token,
                                     content_type="application/json")
        assert response.status_code == 202, (path, response.text)
    assert Request.objects.count() == 2


def test_a_staff_session_needs_the_model_permission_to_write(server):
    cookies = session_cookie(username="viewer", is_staff=True)
    csrf_cookie, token = csrf_pair(server)
    response = submit_as_browser(server, "/api/v1/agent/primary/request", {**cookies, "csrftoken": csrf_cookie},
                                 origin=server.url, token=token, content_type="application/json")
    assert response.status_code == 403 and response.json()["error"]["code"] == "FORBIDDEN", response.text
    assert "mash_runtime.add_request" in response.json()["error"]["message"]
    assert not Request.objects.exists()


def test_api_key_clients_need_no_csrf_token(server):
    response = httpx.post(f"{server.url}/api/v1/agent/primary/request", timeout=30, json={"message": "cli"},
                          headers={"Authorization": f"Bearer {API_KEY}", "Origin": EVIL})
    assert response.status_code == 202, response.text


def test_a_foreign_page_cannot_open_websockets_with_a_staff_cookie(server):
    cookies = session_cookie(is_staff=True, is_superuser=True)
    cookie_header = "; ".join(f"{k}={v}" for k, v in cookies.items())
    rid = httpx.post(f"{server.url}/api/v1/agent/primary/request", json={"message": "hi"}, timeout=30,
                     headers=server.headers).json()["data"]["request_id"]
    for path in ("/ws/v1/telemetry/", f"/ws/v1/agent/primary/request/{rid}/"):
        with pytest.raises(InvalidStatus):
            with ws_connect(f"{server.ws_url}{path}", origin=EVIL, additional_headers={"Cookie": cookie_header},
                            open_timeout=30):
                pass
    # The same cookie from the host's own page is let in.
    with ws_connect(f"{server.ws_url}/ws/v1/telemetry/", origin=server.url,
                    additional_headers={"Cookie": cookie_header}, open_timeout=30) as ws:
        assert ws.protocol.state.name == "OPEN"


def test_a_host_the_server_does_not_answer_to_gets_a_json_400(server):
    response = httpx.get(f"{server.url}/api/v1/health", headers={**server.headers, "Host": "evil.example"}, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "DISALLOWED_HOST"
    assert "MASH_ALLOWED_HOSTS" in response.json()["error"]["message"]
