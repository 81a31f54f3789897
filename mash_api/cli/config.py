"""Where the client commands find their server: `~/.mash/cli.json`, the environment, flags.

Precedence for each value: command-line flag > environment (`MASH_API_BASE_URL`,
`MASH_API_KEY`) > the file saved by `mash connect`. The agent comes from `--agent` or
the file; without one, commands ask the server for its primary agent.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

ENV_BASE_URL = "MASH_API_BASE_URL"
ENV_API_KEY = "MASH_API_KEY"


class ConfigMissing(Exception):
    """No server URL anywhere: one line telling the user what to do."""


@dataclass(frozen=True)
class CliConfig:
    """The saved connection: `{api_base_url, api_key, agent_id}` in `~/.mash/cli.json`."""

    api_base_url: str = ""
    api_key: str | None = None
    agent_id: str | None = None

    def to_json(self) -> dict:
        return {"api_base_url": self.api_base_url, "api_key": self.api_key, "agent_id": self.agent_id}


def mash_home() -> Path:
    return Path.home() / ".mash"


def config_path() -> Path:
    return mash_home() / "cli.json"


def _text(value) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


def load_config(path: Path | None = None) -> CliConfig | None:
    """The saved connection, or None when there is none (or it is unreadable)."""
    path = path or config_path()
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(payload, dict):
        return None
    return CliConfig(
        api_base_url=_text(payload.get("api_base_url")) or "",
        api_key=_text(payload.get("api_key")),
        agent_id=_text(payload.get("agent_id")),
    )


def save_config(config: CliConfig, path: Path | None = None) -> Path:
    """Write the connection (readable by the owner only: it may hold a key)."""
    path = path or config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(config.to_json(), handle, indent=2)
        handle.write("\n")
    os.replace(tmp, path)
    return path


@dataclass(frozen=True)
class Connection:
    """The resolved server, key and agent, and where each came from (for `status`)."""

    api_base_url: str
    api_key: str | None
    agent_id: str | None
    sources: Mapping[str, str]


def resolve_connection(
    api_base_url: str | None = None,
    api_key: str | None = None,
    agent_id: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    saved: CliConfig | None = None,
    require_url: bool = True,
) -> Connection:
    """Flags > environment > saved file, value by value."""
    env = os.environ if env is None else env
    if saved is None:
        saved = load_config() or CliConfig()
    sources: dict[str, str] = {}

    def pick(name: str, flag: str | None, env_name: str | None, saved_value: str | None) -> str | None:
        for source, value in (("flag", flag), ("env", env.get(env_name) if env_name else None), ("config", saved_value)):
            value = _text(value)
            if value:
                sources[name] = source
                return value
        sources[name] = "none"
        return None

    url = pick("api_base_url", api_base_url, ENV_BASE_URL, saved.api_base_url)
    key = pick("api_key", api_key, ENV_API_KEY, saved.api_key)
    agent = pick("agent_id", agent_id, None, saved.agent_id)
    if require_url and not url:
        raise ConfigMissing(
            f"no server configured: run 'mash connect --api-base-url URL', set {ENV_BASE_URL} or pass --api-base-url"
        )
    return Connection(url or "", key, agent, sources)
