"""Keys sent in a query string (`?api_key=...`) reach neither the API request log nor the
web server's access log: both keep the parameter, never its value."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from mash_api.management.commands.serve import Command as ServeCommand
from mash_api.management.commands.serve import web_argv
from mash_telemetry.middleware import redact_query, redact_url
from mash_telemetry.models import REDACTED, ApiRequestLog
from tests.e2e.conftest import REPO, cluster_env, free_port, wait_for  # noqa: F401  (fixture used here)

SECRETS = {"api_key": "s-apikey-1", "APIKEY": "s-apikey-2", "Key": "s-key-3", "token": "s-token-4",
           "Access_Token": "s-access-5", "password": "s-password-6", "secret": "s-secret-7"}
QUERY = "&".join(f"{name}={value}" for name, value in SECRETS.items()) + "&limit=5"


def assert_no_secret(text: str) -> None:
    leaked = [value for value in SECRETS.values() if value in text]
    assert not leaked, f"secret values {leaked} in {text[:500]!r}"


def test_it_redacts_every_secret_parameter_name_in_any_case_and_keeps_the_rest():
    redacted = redact_query(QUERY)
    assert_no_secret(redacted)
    assert redacted == "&".join(f"{name}={REDACTED}" for name in SECRETS) + "&limit=5"


def test_it_reads_encoded_and_dashed_names_and_semicolons_as_the_same_parameters():
    assert redact_query("api%5Fkey=a1&api-key=a2;token=a3&tokens=keep&key") == (
        f"api%5Fkey={REDACTED}&api-key={REDACTED};token={REDACTED}&tokens=keep&key")
    assert redact_url("/api/v1/agent?token=t1#frag") == f"/api/v1/agent?token={REDACTED}#frag"
    assert redact_url("/api/v1/agent") == "/api/v1/agent"


def test_the_stored_log_row_holds_no_secret_from_the_query_or_a_referer(open_api, client):
    response = client.get(f"/api/v1/agent?{QUERY}", HTTP_REFERER=f"http://app.example/page?token={SECRETS['token']}")
    assert response.status_code == 200
    [row] = ApiRequestLog.objects.all()
    assert_no_secret(json.dumps(row.to_dict()))
    assert row.query_string.endswith("&limit=5") and f"api_key={REDACTED}" in row.query_string
    assert row.request_headers["Referer"] == f"http://app.example/page?token={REDACTED}"


def test_serve_documents_the_access_log_flag_and_leaves_it_off_by_default():
    parser = ServeCommand().create_parser("mash", "serve")
    assert "--access-log" in parser.format_help()
    assert parser.parse_args([]).access_log is None
    assert parser.parse_args(["--access-log"]).access_log == "-"
    assert "--access-log" not in web_argv(sys.executable, "127.0.0.1", 8000)


def start_web(env, argv, log_path):
    log = open(log_path, "ab")
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc


def stop_web(proc):
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@pytest.mark.e2e
@pytest.mark.parametrize("access_log", [None, "file"])
def test_a_live_web_process_keeps_secrets_out_of_its_logs(transactional_db, cluster_env, tmp_path, access_log):
    port = free_port()
    access_file = tmp_path / "access.log"
    output = tmp_path / "web.out"
    env = {**cluster_env, "MASH_API_LOG_FLUSH_SECONDS": "0"}
    argv = web_argv(sys.executable, "127.0.0.1", port, str(access_file) if access_log else None)
    proc = start_web(env, argv, output)
    base = f"http://127.0.0.1:{port}"
    try:
        def ready():
            try:
                return httpx.get(f"{base}/api/v1/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return proc.poll() is not None
        wait_for(ready, timeout=60, interval=0.1, what="the web process")
        assert proc.poll() is None, output.read_text(errors="replace")
        assert httpx.get(f"{base}/api/v1/agent?{QUERY}", timeout=10).status_code == 200
        row = wait_for(lambda: ApiRequestLog.objects.filter(path="/api/v1/agent").first(), what="the log row")
    finally:
        stop_web(proc)
    assert_no_secret(json.dumps(row.to_dict()))
    assert f"token={REDACTED}" in row.query_string
    printed = output.read_text(errors="replace")
    assert_no_secret(printed)
    if access_log:
        logged = access_file.read_text()
        assert_no_secret(logged)
        assert f'"GET /api/v1/agent?api_key={REDACTED}&' in logged and "&limit=5" in logged
    else:
        assert "GET /api/v1/agent" not in printed and not access_file.exists()
