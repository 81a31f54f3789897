"""Pilot on the durable engine: without a key it fails clearly; offline it answers."""

from mash_runtime.host import set_host
from tests.runtime.conftest import engine  # noqa: F401  (the in-process engine harness)


def test_it_ends_with_llm_not_configured_naming_the_variable(engine, settings, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("MASH_LLM", raising=False)
    settings.MASH_HOST_APP = "pilot.spec:build_host"
    set_host(None)
    req = engine.run("What does mash_core do?", agent_id="pilot")
    assert req.status == "failed" and req.error_code == "LLM_NOT_CONFIGURED"
    assert "ANTHROPIC_API_KEY" in req.error
    error = engine.events(req.pk)[-1]
    assert error.event_type == "request.error" and error.payload["error_code"] == "LLM_NOT_CONFIGURED"
    assert error.payload["retryable"] is False


def test_it_answers_offline_with_the_scripted_model(engine, settings, monkeypatch, tmp_path):
    monkeypatch.setenv("MASH_LLM", "scripted")
    monkeypatch.setenv("PILOT_WORKSPACE", str(tmp_path))
    (tmp_path / "marker-file.txt").write_text("x")
    settings.MASH_HOST_APP = "pilot.spec:build_host"
    set_host(None)
    req = engine.run("What is here?", agent_id="pilot")
    assert req.status == "completed"
    assert "offline demo" in req.response["text"] and "marker-file.txt" in req.response["text"]
