"""Which provider the environment chooses (`provider_from_env`, used by Pilot and Masher), and
that no vendor SDK is imported before a provider makes its first call."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mash_core.errors import ConfigError
from mash_core.llm import (
    GeminiProvider,
    OpenAIChatProvider,
    OpenAIProvider,
    ScriptedProvider,
    chosen_provider,
    provider_from_env,
)

REPO = Path(__file__).resolve().parents[2]
VARIABLES = ("MASH_LLM", "ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY",
             "OPENAI_CHAT_BASE_URL", "OPENAI_CHAT_MODEL")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(f"{name}_FILE", raising=False)


def scripted() -> ScriptedProvider:
    return ScriptedProvider(["offline"])


def test_the_key_that_is_set_chooses_the_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    assert chosen_provider() == "anthropic"  # nothing set: Anthropic, whose first call names its key
    monkeypatch.setenv("OPENAI_CHAT_BASE_URL", "http://127.0.0.1:11434/v1")
    monkeypatch.setenv("OPENAI_CHAT_MODEL", "llama3.2")
    assert isinstance(provider_from_env("a"), OpenAIChatProvider)
    monkeypatch.setenv("GOOGLE_API_KEY", "g")
    assert isinstance(provider_from_env("a"), GeminiProvider)
    monkeypatch.setenv("OPENAI_API_KEY", "o")
    assert isinstance(provider_from_env("a", model="gpt-x"), OpenAIProvider)
    assert provider_from_env("a", model="gpt-x").model == "gpt-x"
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    assert chosen_provider() == "anthropic"


def test_a_key_file_counts_as_a_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "gemini").write_text("secret\n")
    monkeypatch.setenv("GEMINI_API_KEY_FILE", str(tmp_path / "gemini"))
    assert chosen_provider() == "gemini"


@pytest.mark.parametrize(("forced", "kind"), [("openai", OpenAIProvider), ("gemini", GeminiProvider),
                                              ("openai-chat", OpenAIChatProvider), (" Scripted ", ScriptedProvider)])
def test_mash_llm_forces_a_provider_whatever_keys_are_set(monkeypatch: pytest.MonkeyPatch, forced: str, kind: type) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    monkeypatch.setenv("MASH_LLM", forced)
    assert isinstance(provider_from_env("a", scripted=scripted), kind)


def test_mash_llm_anthropic_builds_the_anthropic_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "o")
    monkeypatch.setenv("MASH_LLM", "anthropic")
    built = provider_from_env("a", model="claude-x")
    assert type(built).__name__ == "AnthropicProvider" and built.model == "claude-x"


def test_scripted_is_left_to_the_keys_for_a_caller_without_a_scripted_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASH_LLM", "scripted")
    monkeypatch.setenv("GEMINI_API_KEY", "g")
    assert isinstance(provider_from_env("masher"), GeminiProvider)


def test_an_unknown_mash_llm_value_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASH_LLM", "claude")
    with pytest.raises(ConfigError, match="anthropic, openai, openai-chat, gemini, scripted"):
        provider_from_env("a")


def test_no_vendor_sdk_is_imported_until_a_provider_calls() -> None:
    """Each SDK costs a worker process tens of MiB: importing mash_core.llm, building every
    provider (as a host build does) and choosing one must load none of them."""
    probe = """
import sys
import mash_core.llm as llm
llm.OpenAIProvider("a"); llm.OpenAIChatProvider("a", "m", "http://127.0.0.1:1/v1"); llm.GeminiProvider("a")
llm.provider_from_env("a")
import mash_core.llm.openai, mash_core.llm.openai_chat, mash_core.llm.gemini
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("openai", "anthropic") or m.startswith("google.genai"))
print(loaded)
"""
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", *VARIABLES)}
    env.update(PYTHONPATH=str(REPO), OPENAI_API_KEY="sk-probe")  # chooses OpenAI, which must still import nothing
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_the_providers_are_public_names_of_mash_core_llm() -> None:
    code = "from mash_core.llm import OpenAIProvider, OpenAIChatProvider, GeminiProvider, AnthropicProvider; print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
