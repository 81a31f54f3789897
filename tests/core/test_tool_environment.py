"""Tools get a scrubbed environment: the server's basics, never its secrets.

Plain pytest (no Django): a real `BashTool` runs a real `env`.
"""

from __future__ import annotations

import asyncio

import pytest

from mash_core.errors import ConfigError
from mash_core.tools import BashTool, tool_environment
from mash_core.tools.environment import is_secret_env_name

SERVER_SECRETS = {
    "MASH_API_KEY": "mash-key-value-1",
    "ANTHROPIC_API_KEY": "sk-ant-value-2",
    "DATABASE_URL": "postgres://user:pw-value-3@db/mash",
    "FOO_TOKEN": "token-value-4",
    "X_SECRET_Y": "secret-value-5",
    "DB_PASSWORD": "password-value-6",
    "SIGNING_KEY": "key-value-7",
    "ANTHROPIC_API_KEY_FILE": "/run/secrets/anthropic",
    "LC_TOKEN": "allow-listed-name-but-secret-8",
}


@pytest.fixture
def server_env(monkeypatch):
    for name, value in SERVER_SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    monkeypatch.setenv("UNRELATED_SETTING", "not-a-secret-but-not-basic")
    monkeypatch.setenv("EXTRA_SETTING", "passed-through")


def env_listing(tool: BashTool) -> dict[str, str]:
    async def go():
        try:
            return await tool.execute({"command": "env -0"})
        finally:
            await tool.aclose()

    result = asyncio.run(go())
    assert not result.is_error, result.content
    return dict(entry.split("=", 1) for entry in result.content.split("\0") if "=" in entry)


def test_bash_env_shows_none_of_the_servers_secrets_but_keeps_path(server_env, tmp_path):
    shown = env_listing(BashTool(working_dir=tmp_path))

    for name in SERVER_SECRETS:
        assert name not in shown
    listing = "\n".join(f"{k}={v}" for k, v in shown.items())
    assert not any(value in listing for value in SERVER_SECRETS.values())
    assert shown["PATH"]
    assert shown["LC_ALL"] == "C.UTF-8"
    assert "UNRELATED_SETTING" not in shown  # not on the allow-list, not asked for


def test_bash_env_shows_what_the_tool_configuration_names(server_env, tmp_path):
    tool = BashTool(
        working_dir=tmp_path,
        pass_env=["EXTRA_SETTING", "NOT_SET_ANYWHERE"],
        # A literal value is the app developer's decision, whatever its name.
        env={"GREETING": "hello", "TOOL_API_KEY": "the-tools-own-key", "PATH": "/usr/bin:/bin"},
    )
    shown = env_listing(tool)

    assert shown["EXTRA_SETTING"] == "passed-through"
    assert "NOT_SET_ANYWHERE" not in shown
    assert shown["GREETING"] == "hello"
    assert shown["TOOL_API_KEY"] == "the-tools-own-key"
    assert shown["PATH"] == "/usr/bin:/bin"
    assert "MASH_API_KEY" not in shown and "ANTHROPIC_API_KEY" not in shown


@pytest.mark.parametrize("name", ["MASH_API_KEY", "ANTHROPIC_API_KEY", "DATABASE_URL", "FOO_TOKEN",
                                  "X_SECRET_Y", "ANTHROPIC_API_KEY_FILE", "MASH_LLM", "github_token"])
def test_passing_a_secret_looking_server_variable_through_is_refused(server_env, tmp_path, name):
    with pytest.raises(ConfigError, match=f"pass_env names {name}"):
        BashTool(working_dir=tmp_path, pass_env=[name])
    with pytest.raises(ConfigError, match="looks like a secret"):
        tool_environment(pass_env=[name])


def test_the_refusal_never_shows_the_secrets_value(server_env, tmp_path):
    with pytest.raises(ConfigError) as info:
        BashTool(working_dir=tmp_path, pass_env=["ANTHROPIC_API_KEY"])
    assert SERVER_SECRETS["ANTHROPIC_API_KEY"] not in str(info.value)


@pytest.mark.parametrize("bad", [{"pass_env": "EXTRA_SETTING"}, {"pass_env": ["NOT A NAME"]},
                                 {"env": {"A=B": "x"}}, {"env": {"OK": 3}}, {"env": {"OK": "nul\0byte"}}])
def test_malformed_env_configuration_is_a_config_error(tmp_path, bad):
    with pytest.raises(ConfigError):
        BashTool(working_dir=tmp_path, **bad)


def test_tool_environment_is_the_allow_list_plus_what_is_named(server_env):
    result = tool_environment({"LITERAL": "v"}, pass_env=("EXTRA_SETTING",))

    assert result["LITERAL"] == "v" and result["EXTRA_SETTING"] == "passed-through"
    assert not set(result) & set(SERVER_SECRETS)
    assert set(result) <= {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TERM", "TMPDIR",
                           "TZ", "LITERAL", "EXTRA_SETTING"} | {n for n in result if n.startswith("LC_")}


@pytest.mark.parametrize("name,secret", [
    ("MASH_ANYTHING", True), ("DATABASE_URL", True), ("MASH_DATABASE_URL", True), ("OPENAI_API_KEY", True),
    ("AWS_SECRET_ACCESS_KEY", True), ("GH_TOKEN", True), ("PGPASSWORD", True), ("PG_PASSWORD", True),
    ("SECRET_KEY", True), ("SSH_KEY_FILE", True), ("GOOGLE_APPLICATION_CREDENTIALS", True),
    ("PATH", False), ("LANG", False), ("TOKENIZERS_PARALLELISM", False),
])
def test_secret_names_are_recognised_by_pattern(name, secret):
    assert is_secret_env_name(name) is secret
