"""SKILL.md's example host app builds, serves a scripted request, and its offline test passes."""

import re
import subprocess
import sys
from pathlib import Path

from mash_runtime.host import load_host

REPO = Path(__file__).resolve().parents[2]


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / "SKILL.md").read_text(), re.DOTALL)


def test_it_shows_a_module_and_a_test(tmp_path, monkeypatch):
    module, offline_test = python_blocks()
    (tmp_path / "my_app.py").write_text(module)
    monkeypatch.syspath_prepend(str(tmp_path))
    host = load_host("my_app:build_host")
    assert host.primary_agent_id == "support"
    assert host.subagent_ids == ["billing"]
    assert host.get("triage").role == "workflow"
    assert host.get("support").spec.build_tools().get("refund_order").requires_approval
    # The offline test it shows runs as written.
    result = subprocess.run([sys.executable, "-c", offline_test], cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": f"{tmp_path}:{REPO}", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr


def test_claude_md_points_at_the_skill():
    text = (REPO / "CLAUDE.md").read_text()
    assert "SKILL.md" in text and "ScriptedProvider" in text


from tests.runtime.conftest import engine  # noqa: E402,F401  (the in-process engine harness)


def test_the_example_runs_durably_on_the_server(engine, settings, tmp_path, monkeypatch):
    import importlib

    from mash_runtime.host import set_host
    from mash_runtime.workflows.engine import get_run, start_run

    module, _ = python_blocks()
    (tmp_path / "my_app.py").write_text(module)
    monkeypatch.syspath_prepend(str(tmp_path))
    my_app = importlib.import_module("my_app")
    monkeypatch.setattr(my_app, "OFFLINE", True)
    settings.MASH_HOST_APP = "my_app:build_host"
    set_host(None)
    req = engine.run("Where is order A1?", agent_id="support")
    assert req.status == "completed" and req.response["text"] == "Order A1 has shipped."
    run_id = start_run("nightly-triage")["run_id"]
    engine.drain()
    assert get_run("nightly-triage", run_id).output["task_states"]["count"] == {"open_tickets": 3}
