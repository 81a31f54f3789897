"""`mash host serve` with its secrets in files: the server uses them, prints none of them,
and a model that runs `env` through the bash tool sees none of them either."""

import json
import signal
import subprocess
import sys

import httpx
import pytest

from tests.e2e.conftest import free_port, wait_for
from tests.e2e.test_serve import clean_env

pytestmark = pytest.mark.e2e

API_KEY = "e2e-serve-api-key-5f1c2a9b"
ANTHROPIC_KEY = "sk-ant-e2e-never-shown-77aa"


def test_serve_reads_key_files_and_keeps_every_secret_out_of_its_output_and_its_tools(tmp_path):
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700)
    (secrets / "api_key").write_text(API_KEY + "\n")
    database = tmp_path / "from-url-file.sqlite3"
    (secrets / "database_url").write_text(f"sqlite:///{database}\n")
    work = tmp_path / "work"
    work.mkdir()
    port = free_port()
    serve = subprocess.Popen(
        [sys.executable, "-m", "mash_project.cli", "host", "serve", "--port", str(port),
         "--host-app", "tests.apps.engine_host:build_host"],
        cwd=tmp_path,
        env=clean_env(MASH_API_KEY_FILE=str(secrets / "api_key"), DATABASE_URL_FILE=str(secrets / "database_url"),
                      ANTHROPIC_API_KEY=ANTHROPIC_KEY, MASH_TEST_WORKDIR=str(work), MASH_WORKERS="1"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    base = f"http://127.0.0.1:{port}/api/v1"
    auth = {"Authorization": f"Bearer {API_KEY}"}
    try:
        def up():
            try:
                return httpx.get(f"{base}/health", headers=auth, timeout=2).status_code == 200
            except httpx.HTTPError:
                return serve.poll() is not None  # stop waiting if it died

        wait_for(up, timeout=60, interval=0.2, what="serve to answer /health")
        assert serve.poll() is None
        assert database.exists()  # DATABASE_URL_FILE chose the database

        plan = {"script": [{"tool_calls": [{"name": "bash", "arguments": {"command": "env"}}]}, "done"]}
        refused = httpx.post(f"{base}/agent/primary/request", json={"message": json.dumps(plan)})
        assert refused.status_code == 401  # MASH_API_KEY_FILE's key is required
        submitted = httpx.post(f"{base}/agent/primary/request", json={"message": json.dumps(plan)}, headers=auth)
        assert submitted.status_code in (200, 201, 202), submitted.text
        rid = submitted.json()["data"]["request_id"]
        frames = []
        with httpx.stream("GET", f"{base}/agent/primary/request/{rid}/events", headers=auth,
                          timeout=httpx.Timeout(60, read=60)) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    frames.append(json.loads(line[6:]))
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            output, _ = serve.communicate(timeout=40)
        except subprocess.TimeoutExpired:
            serve.kill()
            output, _ = serve.communicate()

    assert frames[-1].get("status") == "completed", frames[-1]
    results = [f["payload"]["result"]["content"] for f in frames
               if f.get("event_type") == "runtime.tool.call.completed"]
    assert len(results) == 1 and "PATH=" in results[0]
    listing = results[0]
    for leaked in (API_KEY, ANTHROPIC_KEY, "MASH_", "DATABASE_URL", "ANTHROPIC_API_KEY", str(secrets)):
        assert leaked not in listing, leaked
    assert API_KEY not in output and ANTHROPIC_KEY not in output
    assert serve.returncode == 0, output


def test_serve_help_points_at_the_key_file(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mash_project.cli", "host", "serve", "--help"], check=False,
                            cwd=tmp_path, env=clean_env(COLUMNS="200"), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "MASH_API_KEY_FILE" in " ".join(result.stdout.split())
