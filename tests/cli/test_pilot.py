"""`pilot repl` and its `/changelog [N]` against a live server hosting Pilot (scripted model)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mash_runtime.models import PublishedSkill, Request, WorkflowDefinition, WorkflowRun
from pilot.cli import CHANGELOG_WORKFLOW
from tests.cli.conftest import REPO, client_env

pytestmark = pytest.mark.e2e


def test_it_runs_changelog_through_the_pilot_agent(live_servers, cli_home, settings):
    settings.MASH_HOST_APP = "pilot.spec:build_host"
    server = live_servers.start(MASH_HOST_APP="pilot.spec:build_host", MASH_LLM="scripted",
                                PILOT_WORKSPACE=str(REPO))
    done = subprocess.run([sys.executable, "-m", "pilot.cli", "repl", "--api-base-url", server.url], cwd=REPO,
                          env=client_env(cli_home), input="/help\n/changelog 3\n/changelog x\n/exit\n",
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "/changelog [N]" in out  # listed by /help next to the built-in commands
    assert "/history [N]" in out
    assert "Changelog of the last 3 commits" in out
    # The scripted Pilot lists the workspace with bash, then answers in Markdown.
    assert "✓ bash" in out
    assert "This is Pilot's offline demo" in out and "manage.py" in out
    assert "```" not in out  # rendered as Markdown, not printed raw
    assert "usage: /changelog [N]" in out

    assert out.count(f"published the changelog skill and the {CHANGELOG_WORKFLOW} workflow") == 1
    assert WorkflowDefinition.objects.get(workflow_id=CHANGELOG_WORKFLOW).source == "published"
    assert PublishedSkill.objects.filter(agent__agent_id="pilot", name="changelog").exists()
    run = WorkflowRun.objects.get(workflow__workflow_id=CHANGELOG_WORKFLOW)
    assert run.status == "completed" and run.input == {"commits": 3}
    req = Request.objects.get(agent__agent_id="pilot", workflow_run=run)
    assert "Use the skill 'changelog'" in req.message and '"commits": 3' in req.message
    assert req.status == Request.Status.COMPLETED


def test_it_explains_pilot_usage():
    done = subprocess.run([sys.executable, "-m", "pilot.cli", "repl", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env=client_env(REPO / "nonexistent-home"))
    assert done.returncode == 0
    for flag in ("--api-base-url", "--api-key", "--agent", "--session-id"):
        assert flag in done.stdout
