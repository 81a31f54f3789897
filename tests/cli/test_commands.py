"""Every client command against a live server (daphne + qcluster on the test database)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import pytest

from mash_api.cli.config import config_path
from tests.cli.conftest import REPO, client_env

pytestmark = pytest.mark.e2e


def run_to_completion(server, message: str, session_id: str, agent: str = "primary") -> str:
    response = httpx.post(f"{server.url}/api/v1/agent/{agent}/request", headers=server.headers, timeout=30,
                          json={"message": message, "session_id": session_id})
    assert response.status_code == 202, response.text
    rid = response.json()["data"]["request_id"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = httpx.get(f"{server.url}/api/v1/agent/{agent}/request/{rid}/status", headers=server.headers,
                           timeout=30).json()["data"]["status"]
        if status in ("completed", "failed", "cancelled"):
            assert status == "completed"
            return rid
        time.sleep(0.1)
    raise AssertionError(f"request {rid} did not finish")


def one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, f"expected exactly one line, got {lines!r}"
    return lines[0]


def test_it_runs_every_client_command(mash_server, mash):
    # connect saves the file and makes no call (a dead address is accepted).
    result = mash("connect", "--api-base-url", "http://127.0.0.1:9/", "--api-key", "k1", "--agent", "helper")
    assert result.code == 0, result.err
    assert json.loads(config_path().read_text()) == {"api_base_url": "http://127.0.0.1:9", "api_key": "k1",
                                                     "agent_id": "helper"}
    result = mash("connect", "--api-base-url", mash_server.url)
    assert result.code == 0 and str(config_path()) in result.out
    assert json.loads(config_path().read_text())["agent_id"] is None

    run_to_completion(mash_server, "hi there", "cli-s1")
    run_to_completion(mash_server, "second turn", "cli-s1")

    result = mash("status")
    assert result.code == 0, result.err
    out = result.out
    for expected in ("mash-api", "Primary agent   primary", "Agents          2: primary (primary), helper (subagent)",
                     "Model           scripted", "Session tokens  0", mash_server.url, "slots in use"):
        assert expected in out, out
    # Tokens of an agent's default session come from the server (cli-s1 is not the default one).
    result = mash("status", "--agent", "helper")
    assert result.code == 0 and "Agent           helper" in result.out

    result = mash("agents")
    assert result.code == 0
    rows = [line.split() for line in result.out.splitlines()]
    assert ["primary", "primary"] in rows
    assert any(r[:3] == ["helper", "subagent", "Helper"] for r in rows), result.out

    result = mash("sessions")
    assert result.code == 0
    row = next(line.split() for line in result.out.splitlines() if "cli-s1" in line)
    assert row[:2] == ["cli-s1", "2"] and int(row[2]) > 0

    result = mash("history", "--session-id", "cli-s1")
    assert result.code == 0
    assert "Turn 1" in result.out and "Turn 2" in result.out
    assert result.out.index("echo: hi there") < result.out.index("echo: second turn")
    result = mash("history", "--session-id", "cli-s1", "--limit", "1")
    assert "Turn 2" not in result.out and "echo: second turn" in result.out and "hi there" not in result.out

    result = mash("history", "--session-id", "never-used")
    assert result.code == 0 and "No conversation history." in result.out

    # Unknown agent: the server's message in one line, exit 1.
    result = mash("sessions", "--agent", "nope")
    assert result.code == 1 and result.out == ""
    assert one_line(result.err) == "GET /api/v1/agent/nope/sessions failed (404): Agent 'nope' not found"
    result = mash("status", "--agent", "nope")
    assert result.code == 1 and one_line(result.err).startswith("GET /api/v1/agent/nope failed (404): ")

    result = mash("workflow", "list")
    assert result.code == 0 and "No workflows on this server." in result.out
    # Routes that may not exist on the server yet: the error envelope's message, one line, exit 1.
    result = mash("workflow", "run", "wf1", "--dedup-key", "k", "--input", '{"n": 1}')
    assert result.code == 1
    assert one_line(result.err).startswith("POST /api/v1/workflow/wf1/run failed (404): ")
    result = mash("workflow", "status", "wf1", "run-1")
    assert result.code == 1
    assert one_line(result.err).startswith("GET /api/v1/workflow/wf1/runs/run-1 failed (404): ")
    result = mash("workflow", "run", "wf1", "--input", "{bad")
    assert result.code == 1 and one_line(result.err).startswith("--input is not valid JSON")

    result = mash("--version")
    assert result.code == 0 and result.out.startswith("mash ")


def test_it_prints_one_line_for_a_bad_key(live_servers, cli_home, mash, monkeypatch):
    server = live_servers.start(api_key="secret", worker=False)
    expected = httpx.get(f"{server.url}/api/v1/health", headers={"Authorization": "Bearer wrong"}).json()
    message = expected["error"]["message"]

    env = client_env(cli_home, MASH_API_BASE_URL=server.url)
    bad = subprocess.run([sys.executable, "-m", "mash_project.cli", "status", "--api-key", "wrong"], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert bad.stdout == ""
    assert bad.stderr == f"GET /api/v1/health failed (401): {message}\n"

    # No key at all is refused the same way; the key from the environment is used.
    monkeypatch.setenv("MASH_API_BASE_URL", server.url)
    result = mash("agents")
    assert result.code == 1 and one_line(result.err).startswith("GET /api/v1/agent failed (401): ")
    assert mash("agents", "--api-key", "secret").code == 0
    good = subprocess.run([sys.executable, "manage.py", "agents"], cwd=REPO, env={**env, "MASH_API_KEY": "secret"},
                          capture_output=True, text=True, timeout=60)
    assert good.returncode == 0, good.stderr
    assert "helper" in good.stdout and "Runs helper scripts" in good.stdout


def test_it_reports_an_unreachable_server_in_one_line(mash):
    result = mash("agents", "--api-base-url", "http://127.0.0.1:9")
    assert result.code == 1
    assert one_line(result.err).startswith("cannot reach http://127.0.0.1:9: ")
    result = mash("agents")
    assert result.code == 1 and "mash connect --api-base-url URL" in one_line(result.err)


def test_it_runs_the_repl_from_a_pipe(mash_server, cli_home):
    script = "hello pipe\n/history\n/compact\n/use helper\n/session\n/bogus\n/exit\n"
    done = subprocess.run([sys.executable, "-m", "mash_project.cli", "repl", "--session-id", "cli-pipe"], cwd=REPO,
                          env=client_env(cli_home, MASH_API_BASE_URL=mash_server.url), input=script,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "primary> hello pipe" in out and "echo: hello pipe" in out
    assert out.index("echo: hello pipe") < out.index("Turn 1")
    assert "Session compacted into turn" in out and "Decisions" in out
    assert "Now talking to helper (subagent)" in out
    from mash_api.client import subagent_session_id

    assert f"Session   {subagent_session_id('cli-pipe', 'helper')}" in out
    assert "unknown command /bogus" in out
    assert out.rstrip().endswith("Bye.")
