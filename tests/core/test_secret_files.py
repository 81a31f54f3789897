"""Secrets from `NAME` or the file `NAME_FILE` names: mash_core.secrets and AnthropicProvider.

Plain pytest (no Django). The provider test sends a real request through the real SDK to
fakellm and reads the key off the wire.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anthropic
import pytest

from mash_core.errors import ConfigError
from mash_core.llm.anthropic import AnthropicProvider
from mash_core.llm.base import LLMNotConfiguredError, LLMRequest
from mash_core.messages import Message
from mash_core.secrets import read_secret

try:
    from tests.core.fakellm_server import run_fakellm
except ImportError:  # tests/ is not a package: pytest put this directory on sys.path
    from fakellm_server import run_fakellm  # type: ignore[no-redef]

KEY = "sk-ant-from-a-file-0123456789"


@pytest.fixture(autouse=True)
def _no_ambient_key(monkeypatch):
    for name in ("DEMO_SECRET", "DEMO_SECRET_FILE", "ANTHROPIC_API_KEY", "ANTHROPIC_API_KEY_FILE",
                 "ANTHROPIC_BASE_URL", "ANTHROPIC_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def test_read_secret_takes_the_variable(monkeypatch):
    monkeypatch.setenv("DEMO_SECRET", "from-env")
    assert read_secret("DEMO_SECRET") == "from-env"


def test_read_secret_reads_the_file_and_drops_its_trailing_newline(monkeypatch, tmp_path):
    path = tmp_path / "demo"
    path.write_text("from-file\r\n")
    monkeypatch.setenv("DEMO_SECRET_FILE", str(path))
    assert read_secret("DEMO_SECRET") == "from-file"


def test_read_secret_is_none_when_neither_is_set():
    assert read_secret("DEMO_SECRET") is None


def test_read_secret_refuses_both_the_variable_and_the_file(monkeypatch, tmp_path):
    (tmp_path / "demo").write_text("from-file\n")
    monkeypatch.setenv("DEMO_SECRET", "from-env")
    monkeypatch.setenv("DEMO_SECRET_FILE", str(tmp_path / "demo"))
    with pytest.raises(ConfigError, match="both DEMO_SECRET and DEMO_SECRET_FILE"):
        read_secret("DEMO_SECRET")


@pytest.mark.parametrize("problem", ["missing", "directory", "empty", "binary"])
def test_an_unusable_secret_file_names_the_variable_but_never_the_secret(monkeypatch, tmp_path, problem):
    path = tmp_path / "demo"
    if problem == "directory":
        path.mkdir()
    elif problem == "empty":
        path.write_text("\n")
    elif problem == "binary":
        path.write_bytes(b"secret-part\xff\xfe-more")
    monkeypatch.setenv("DEMO_SECRET_FILE", str(path))
    with pytest.raises(ConfigError) as info:
        read_secret("DEMO_SECRET")
    assert "DEMO_SECRET_FILE" in str(info.value) and str(path) in str(info.value)
    assert "secret-part" not in str(info.value) and "xff" not in str(info.value)


def _complete(provider: AnthropicProvider) -> Any:
    async def go():
        try:
            return await provider.complete(LLMRequest(system="s", messages=[Message.user("say hello plainly")]))
        finally:
            await provider.aclose()

    return asyncio.run(go())


def test_anthropic_provider_picks_up_anthropic_api_key_file(monkeypatch, tmp_path):
    key_file = tmp_path / "anthropic_api_key"
    key_file.write_text(KEY + "\n")
    monkeypatch.setenv("ANTHROPIC_API_KEY_FILE", str(key_file))
    sent: list[str] = []

    async def on_request(request: Any) -> None:
        # The SDK sends the key as x-api-key or as a bearer token, depending on its version.
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        sent.append(request.headers.get("x-api-key") or bearer)

    rules = [{"name": "plain", "when": {"messages_contain": "say hello plainly"}, "respond": {"content": "hi there"}}]
    with run_fakellm(rules) as server:
        provider = AnthropicProvider(
            "demo", model="claude-test-model", base_url=server.url,
            http_client=anthropic.DefaultAsyncHttpxClient(event_hooks={"request": [on_request]}),
        )
        assert _complete(provider).text == "hi there"
    assert sent == [KEY]
    assert KEY not in repr(provider)


def test_anthropic_provider_reports_an_unreadable_key_file_as_not_configured(monkeypatch, tmp_path):
    monkeypatch.setenv("ANTHROPIC_API_KEY_FILE", str(tmp_path / "missing"))
    with pytest.raises(LLMNotConfiguredError) as info:
        _complete(AnthropicProvider("weather-bot"))
    assert info.value.code == "LLM_NOT_CONFIGURED" and info.value.transient is False
    assert "ANTHROPIC_API_KEY_FILE" in str(info.value) and "weather-bot" in str(info.value)


def test_anthropic_provider_without_any_key_mentions_the_file_option():
    with pytest.raises(LLMNotConfiguredError, match="ANTHROPIC_API_KEY_FILE"):
        _complete(AnthropicProvider("weather-bot"))
