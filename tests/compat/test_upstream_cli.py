"""The upstream `mash` 0.4.2 CLI, unchanged, against our server (daphne + qcluster).

Every command runs the real `mash` script from the upstream virtualenv with `HOME` and the
working directory set to a temporary directory (it writes `~/.mash/cli.json` and a REPL
history file there). Output is plain text: stdout is not a terminal, so rich prints no
colour codes.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.compat.conftest import API_KEY

pytestmark = pytest.mark.e2e


@pytest.fixture
def mash(upstream_venv, tmp_path):
    """`mash(*args, stdin=...)` runs the upstream CLI with a private HOME and returns the CompletedProcess."""
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "HOME": str(home),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "COLUMNS": "200",
        "TERM": "dumb",
        "NO_COLOR": "1",
    }

    def run(*args: str, stdin: str | None = None, timeout: float = 60.0) -> subprocess.CompletedProcess:
        return subprocess.run([str(upstream_venv.mash), *args], cwd=home, env=env, input=stdin or "",
                              capture_output=True, text=True, timeout=timeout)

    def many(*commands: tuple[str, ...]) -> list[subprocess.CompletedProcess]:
        """Independent commands at once (each pays ~2 s importing upstream's server stack)."""
        with ThreadPoolExecutor(len(commands)) as pool:
            return list(pool.map(lambda args: run(*args), commands))

    run.home = home
    run.env = env
    run.many = many
    return run


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done.stdout


def connect(mash, server, api_key: str = API_KEY) -> None:
    out = ok(mash("connect", "--api-base-url", server.url, "--api-key", api_key, "--agent", "primary"))
    config_path = mash.home / ".mash" / "cli.json"
    assert f"Saved connection to {config_path}" in out
    assert json.loads(config_path.read_text()) == {"api_base_url": server.url, "api_key": api_key, "agent_id": "primary"}


def submit(server, message: str, session_id: str) -> dict:
    with server.client() as http:
        response = http.post("/api/v1/agent/primary/request", json={"message": message, "session_id": session_id})
    assert response.status_code == 202, response.text
    accepted = response.json()["data"]
    status = server.wait_terminal("primary", accepted["request_id"])
    assert status["status"] == "completed", (status, server.log()[-2000:])
    return accepted


def test_connect_status_agents_sessions_history(mash, mash_server):
    connect(mash, mash_server)

    with mash_server.client() as http:
        listed = http.get("/api/v1/agent").json()["data"]["agents"]

    status, agents, flags = mash.many(
        ("status",), ("agents",),
        # Flags override the saved connection; without --agent the agent comes from /health.
        ("status", "--api-base-url", mash_server.url, "--api-key", API_KEY),
    )
    out = ok(status)
    assert f"Deployment: {mash_server.url}" in out
    assert "Primary agent: primary" in out
    assert f"Agents: {len(listed)}" in out
    assert ok(flags) == out

    out = ok(agents)
    rows = {tuple(cell.strip() for cell in line.strip("|").split("|")) for line in out.splitlines()
            if line.startswith("|") and set(line) - set("|-+")}
    assert rows == {("Agent", "Role")} | {(a["agent_id"], a["role"]) for a in listed}, out
    assert {("primary", "primary"), ("helper", "subagent")} <= rows

    sid = f"cli-{uuid.uuid4().hex[:8]}"
    submit(mash_server, "first words", sid)
    submit(mash_server, "second words", sid)

    sessions, history, last = mash.many(
        ("sessions",), ("history", "--session-id", sid), ("history", "--session-id", sid, "--limit", "1"))

    out = ok(sessions)
    assert "Session ID" in out and "Turns" in out and "Tokens" in out
    row = next(line for line in out.splitlines() if sid in line)
    assert [cell.strip() for cell in row.strip("|").split("|")][:2] == [sid, "2"], out

    assert ok(history).splitlines() == [
        "Turn 1", "User: first words", "Agent: echo: first words",
        "Turn 2", "User: second words", "Agent: echo: second words",
    ], history.stdout

    assert ok(last).splitlines() == ["Turn 1", "User: second words", "Agent: echo: second words"], last.stdout


def test_piped_repl_message_and_slash_commands(mash, mash_server):
    connect(mash, mash_server)
    sid = f"repl-{uuid.uuid4().hex[:8]}"
    stdin = "\n".join([
        "hello from the upstream repl",
        "/history",
        "/sessions",
        "/session",
        "/status",
        "/agents",
        "/workflow list",
        "/use helper",
        "hello helper",
        "/session",
        "/exit",
    ]) + "\n"
    done = mash("repl", "--session-id", sid, stdin=stdin, timeout=90)
    out = ok(done)
    assert "primary@remote interactive session" in out
    assert "Error:" not in out, out
    # The agent.trace events render as upstream's chain of thought ...
    answer = out.split("Conversation history")[0]
    assert "Agent Execution Started" in answer and "Step 1: Generating response" in answer, out
    assert "Agent Execution Complete: 1 steps, 0 tools" in answer, out
    # ... and the answer once in the "Assistant" panel: streamed from the think event, not
    # repeated for request.completed, whose text is the same.
    panel = [line for line in answer.splitlines() if line.startswith("| ")]
    assert "Assistant" in answer and [line.strip("| ") for line in panel] == ["echo: hello from the upstream repl"], out
    assert "Conversation history (1 turns):" in out
    assert "User: hello from the upstream repl" in out
    assert "Agent: echo: hello from the upstream repl" in out
    assert any(sid in line and line.startswith("|") for line in out.splitlines()), out
    assert f"Session ID: {sid}" in out
    assert "Model: " in out and "Max steps: 8" in out
    assert "Current agent: primary" in out
    assert "No workflows registered." in out  # the test host defines none
    # `/use` switches to the subagent in the session upstream derives for it (`subagent:<id>:<24 hex>`).
    assert "Switched to agent: helper" in out
    helper_part = out.split("Switched to agent: helper")[1]
    assert "| echo: hello helper" in helper_part and "Agent: helper" in helper_part, out
    helper_sid = re.search(r"Session ID: (subagent:helper:[0-9a-f]{24})", helper_part)
    assert helper_sid, out
    assert "Bye." in out

    # The REPL's turns are on the server, in the sessions the REPL named.
    with mash_server.client() as http:
        primary_turns = http.get(f"/api/v1/agent/primary/sessions/{sid}/history").json()["data"]["turns"]
        helper_turns = http.get(f"/api/v1/agent/helper/sessions/{helper_sid.group(1)}/history").json()["data"]["turns"]
    assert [t["user_message"] for t in primary_turns] == ["hello from the upstream repl"]
    assert [t["agent_response"] for t in helper_turns] == ["echo: hello helper"]


def test_repl_answers_an_approval_through_a_pty(mash, mash_server, upstream_venv, tmp_path):
    """Interaction prompts read with input(), so they need a terminal: drive one with pexpect."""
    pexpect = pytest.importorskip("pexpect")
    connect(mash, mash_server)
    target = tmp_path / "approved.txt"
    plan = {"script": [{"tool_calls": [{"name": "write_file", "arguments": {"path": str(target), "text": "ok"}}]},
                       "written after approval"]}
    child = pexpect.spawn(str(upstream_venv.mash), ["repl"], cwd=str(mash.home), env=mash.env, encoding="utf-8",
                          timeout=60, dimensions=(50, 200))
    try:
        child.expect("interactive session")
        child.expect("> ")
        child.sendline(json.dumps(plan))
        child.expect("Options: approve, deny, skip")
        child.expect("> ")
        child.sendline("approve")
        child.expect("Accepted: approve")
        child.expect("written after approval")
        child.expect("> ")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert target.read_text() == "ok"


@pytest.mark.parametrize("mash_host_app", ["tests.apps.workflow_host:build_host"])
def test_repl_lists_runs_and_inspects_a_workflow(mash, mash_server, upstream_venv):
    """`/workflow list|run|status`: run streams the run's events until the stream closes."""
    pexpect = pytest.importorskip("pexpect")
    connect(mash, mash_server)
    child = pexpect.spawn(str(upstream_venv.mash), ["repl"], cwd=str(mash.home), env=mash.env, encoding="utf-8",
                          timeout=60, dimensions=(50, 200))
    child.logfile_read = transcript = io.StringIO()
    try:
        child.expect("interactive session")
        child.expect("> ")
        child.sendline("/workflow list")
        child.expect(r"count-and-report \| count -> counter, report -> reporter")
        child.expect("> ")
        child.sendline('/workflow run count-and-report --input {"step": 2}')
        child.expect(r"Run ID: (\S+)")
        run_id = child.match.group(1)
        child.expect("Workflow task count started")
        child.expect("Workflow task count completed")
        child.expect("Workflow task report started")
        child.expect("Workflow task report completed")
        child.expect("> ")
        streamed = transcript.getvalue().split("Run ID:")[1]
        child.sendline(f"/workflow status count-and-report {run_id}")
        child.expect(r"\| status\s+\| completed")
        child.expect('"report": "count is 2"')
        child.expect("> ")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert "error" not in streamed.lower(), streamed
    assert "Workflow task count started" in streamed and "| done" in streamed, streamed  # the tasks' answers
    with mash_server.client() as http:
        run = http.get(f"/api/v1/workflow/count-and-report/runs/{run_id}").json()["data"]
    assert run["status"] == "completed"


def test_wrong_api_key_is_a_one_line_401_error(mash, mash_server):
    done = mash("status", "--api-base-url", mash_server.url, "--api-key", "not-the-key")
    assert done.returncode != 0
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    assert "GET /api/v1/health failed (401)" in lines[0]
    assert "Missing or invalid API key" in lines[0]
    assert "Traceback" not in done.stdout + done.stderr
