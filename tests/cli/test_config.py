"""Connection settings: ~/.mash/cli.json, the environment and flags (no server needed)."""

from __future__ import annotations

import json
import stat

import pytest

from mash_api.cli.config import CliConfig, ConfigMissing, config_path, load_config, resolve_connection, save_config

SAVED = CliConfig(api_base_url="http://file:1", api_key="file-key", agent_id="file-agent")
ENV = {"MASH_API_BASE_URL": "http://env:2", "MASH_API_KEY": "env-key"}


def test_it_prefers_flags_over_env_over_the_saved_file():
    conn = resolve_connection("http://flag:3", "flag-key", "flag-agent", env=ENV, saved=SAVED)
    assert (conn.api_base_url, conn.api_key, conn.agent_id) == ("http://flag:3", "flag-key", "flag-agent")
    assert dict(conn.sources) == {"api_base_url": "flag", "api_key": "flag", "agent_id": "flag"}

    conn = resolve_connection(env=ENV, saved=SAVED)
    assert (conn.api_base_url, conn.api_key, conn.agent_id) == ("http://env:2", "env-key", "file-agent")
    assert conn.sources["api_base_url"] == "env" and conn.sources["agent_id"] == "config"

    conn = resolve_connection(env={}, saved=SAVED)
    assert (conn.api_base_url, conn.api_key, conn.agent_id) == ("http://file:1", "file-key", "file-agent")


def test_it_resolves_each_value_on_its_own():
    # Only the key in the environment: the URL still comes from the file, the key from the env.
    conn = resolve_connection(env={"MASH_API_KEY": "env-key"}, saved=SAVED)
    assert (conn.api_base_url, conn.api_key) == ("http://file:1", "env-key")
    # A blank flag or env value does not hide the next source.
    conn = resolve_connection("  ", "", env={"MASH_API_BASE_URL": " "}, saved=SAVED)
    assert (conn.api_base_url, conn.api_key) == ("http://file:1", "file-key")


def test_it_needs_a_server_url_from_somewhere():
    with pytest.raises(ConfigMissing, match="mash connect"):
        resolve_connection(env={}, saved=CliConfig())
    assert resolve_connection(env={}, saved=CliConfig(), require_url=False).api_base_url == ""


def test_it_saves_and_loads_the_config_file_privately(cli_home):
    path = save_config(SAVED)
    assert path == config_path() == cli_home / ".mash" / "cli.json"
    assert json.loads(path.read_text()) == {"api_base_url": "http://file:1", "api_key": "file-key",
                                            "agent_id": "file-agent"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_config() == SAVED
    # The saved file is what resolve_connection falls back on by default.
    assert resolve_connection(env={}).api_key == "file-key"


def test_it_ignores_a_broken_config_file(cli_home):
    path = config_path()
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert load_config() is None
    path.write_text(json.dumps(["a list"]))
    assert load_config() is None
    path.write_text(json.dumps({"api_base_url": "http://x:1", "api_key": 5, "agent_id": " "}))
    assert load_config() == CliConfig("http://x:1", None, None)


def test_it_uses_env_over_the_file_in_a_real_command(mash, cli_home, monkeypatch):
    # The file points at a dead port and the env at another dead port: the error names the env's.
    save_config(CliConfig(api_base_url="http://127.0.0.1:9", api_key=None))
    result = mash("agents")
    assert result.code == 1 and "cannot reach http://127.0.0.1:9" in result.err
    monkeypatch.setenv("MASH_API_BASE_URL", "http://127.0.0.1:7")
    result = mash("agents")
    assert result.code == 1 and "cannot reach http://127.0.0.1:7" in result.err
    result = mash("agents", "--api-base-url", "http://127.0.0.1:5")
    assert result.code == 1 and "cannot reach http://127.0.0.1:5" in result.err
    assert result.err.strip().count("\n") == 0, result.err
