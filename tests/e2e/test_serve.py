"""`mash host serve` on a fresh directory with nothing configured."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import REPO, free_port, process_alive, wait_for

pytestmark = pytest.mark.e2e


def children_of(pid: int) -> set[int]:
    found: set[int] = set()
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            for kid in kids:
                if kid not in found:
                    found.add(kid)
                    frontier.append(kid)
    return found


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MASH_") and k not in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE")}
    env.update({"PYTHONPATH": str(REPO), **extra})
    return env


def test_it_serves_the_pilot_host_from_an_empty_directory_and_stops_cleanly(tmp_path):
    port = free_port()
    serve = subprocess.Popen(
        [sys.executable, "-m", "mash_project.cli", "host", "serve", "--port", str(port)],
        cwd=tmp_path, env=clean_env(MASH_LLM="scripted", PILOT_WORKSPACE=str(REPO)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        def healthy():
            try:
                return httpx.get(f"{base}/api/v1/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return serve.poll() is not None  # stop waiting if it died

        wait_for(healthy, timeout=60, interval=0.2, what="serve to answer /health")
        assert serve.poll() is None
        health = httpx.get(f"{base}/api/v1/health").json()["data"]
        assert health["deployment"]["primary_agent_id"] == "pilot"
        assert (tmp_path / ".mash" / "mash.sqlite3").exists()
        submitted = httpx.post(f"{base}/api/v1/agent/pilot/request", json={"message": "what is here?"}).json()["data"]
        frames = []
        with httpx.stream("GET", f"{base}/api/v1/agent/pilot/request/{submitted['request_id']}/events",
                          timeout=httpx.Timeout(60, read=60)) as response:
            event = None
            for line in response.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    frames.append((event, json.loads(line[6:])))
        assert frames[0][0] == "request.accepted" and frames[-1][0] == "request.completed"
        assert "offline demo" in frames[-1][1]["response"]["text"]
        kids = children_of(serve.pid)
        assert len(kids) >= 2  # the web process and the worker cluster
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            output, _ = serve.communicate(timeout=40)
        except subprocess.TimeoutExpired:
            serve.kill()
            output, _ = serve.communicate()
    assert serve.returncode == 0, output
    assert "/api/v1/" in output and "/admin/" in output and "/telemetry/" in output
    assert f"localhost:{port}/mcp " in output  # MASH_MCP_ENDPOINT is on by default
    wait_for(lambda: not any(process_alive(pid) for pid in kids), timeout=10, what="children to exit")


def test_it_refuses_a_public_address_without_a_key(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mash_project.cli", "host", "serve", "--host", "0.0.0.0", "--port", str(free_port())],
        cwd=tmp_path, env=clean_env(MASH_LLM="scripted"), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "--insecure" in (result.stderr + result.stdout)
    assert "Traceback" not in result.stderr


def test_it_explains_a_bad_host_app(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mash_project.cli", "host", "serve", "--host-app", "nowhere.module:build",
         "--port", str(free_port())],
        cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "cannot import host app module 'nowhere.module'" in result.stderr
    assert "Traceback" not in result.stderr
