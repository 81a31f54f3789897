"""The REPL in a pseudo-terminal (pexpect) against a live server."""

from __future__ import annotations

import json
import sys
import time

import pexpect
import pytest

from mash_api.client import subagent_session_id
from mash_runtime.models import Request
from tests.cli.conftest import REPO, client_env
from tests.e2e.conftest import wait_for

pytestmark = pytest.mark.e2e


def spawn_repl(server, home, *args: str) -> pexpect.spawn:
    child = pexpect.spawn(sys.executable, ["-m", "mash_project.cli", "repl", *args], cwd=str(REPO),
                          env=client_env(home, MASH_API_BASE_URL=server.url), dimensions=(50, 220),
                          encoding="utf-8", timeout=30)
    child.logfile_read = open(home / "pty.log", "a", encoding="utf-8")
    return child


def script(*turns) -> str:
    return json.dumps({"script": list(turns)})


def test_it_answers_questions_approvals_and_switches_agents_in_a_terminal(mash_server, cli_home, tmp_path):
    target = tmp_path / "approved.txt"
    child = spawn_repl(mash_server, cli_home, "--session-id", "cli-pty")
    try:
        child.expect("session cli-pty")
        child.expect("primary>")

        child.sendline("hello pty")
        child.expect("echo: hello pty")
        child.expect("tokens")  # the footer: duration and token counts
        child.expect("primary>")

        child.sendline(script({"text": "Writing it", "tool_calls": [
            {"name": "write_file", "arguments": {"path": str(target), "text": "approved"}}]}, "Finished writing"))
        child.expect(r"Allow tool 'write_file'")
        child.expect("approve/deny/skip>")
        assert not target.exists()
        child.sendline("approve")
        child.expect("sent: approve")
        child.expect(r"write_file(?:\x1b\[[0-9;]*m)* \d+ ms")  # the tool line: name, duration, preview
        child.expect("wrote /")
        child.expect("Finished writing")
        child.expect("primary>")
        assert target.read_text() == "approved"

        child.sendline("/use helper")
        child.expect("Now talking to helper")
        child.expect("helper>")
        child.sendline("hi helper")
        child.expect("echo: hi helper")
        child.expect("helper>")
        helper_request = Request.objects.select_related("session").get(agent__agent_id="helper")
        assert helper_request.session.session_id == subagent_session_id("cli-pty", "helper")

        child.sendline("/history")
        child.expect("Turn 1")
        child.expect("You: ")
        child.expect("hi helper")
        child.expect("helper>")

        child.sendline("/use primary")
        child.expect("Now talking to primary")
        child.sendline("/history 1")
        child.expect("Turn 1")
        child.expect("Finished writing")
        child.expect("primary>")

        child.sendcontrol("d")  # Ctrl-D at the prompt exits
        child.expect("Bye.")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    history = (cli_home / ".mash" / "mash_history").read_text()
    assert "hello pty" in history and "/use helper" in history
    primary = Request.objects.filter(agent__agent_id="primary", session__session_id="cli-pty")
    assert sorted(primary.values_list("status", flat=True)) == ["completed", "completed"]


def test_it_cancels_a_running_request_with_ctrl_c(mash_server, cli_home):
    child = spawn_repl(mash_server, cli_home, "--session-id", "cli-cancel")
    try:
        child.expect("primary>")
        child.sendline(script({"tool_calls": [{"name": "bash", "arguments": {"command": "sleep 30"}}]}, "never"))
        child.expect("→ bash")  # the model's step; the tool is starting
        req = wait_for(lambda: Request.objects.filter(session__session_id="cli-cancel").first(), what="the request")
        wait_for(lambda: Request.objects.get(pk=req.pk).status == Request.Status.RUNNING, what="running")
        time.sleep(0.5)
        started = time.monotonic()
        child.sendcontrol("c")
        child.expect("Request cancelled")
        child.expect("primary>")
        assert time.monotonic() - started < 20
        req.refresh_from_db()
        assert req.status == Request.Status.CANCELLED

        # Ctrl-C at the prompt: once warns, twice exits.
        child.sendcontrol("c")
        child.expect("again")
        child.sendcontrol("c")
        child.expect("Bye.")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
