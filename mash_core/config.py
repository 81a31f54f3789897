"""`AgentConfig`: the per-agent settings a spec returns from `build_agent_config()`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from mash_core.errors import ConfigError

AGENT_ID_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$")


def validate_agent_id(value: Any, what: str = "agent id") -> str:
    if not isinstance(value, str) or not AGENT_ID_RE.match(value):
        raise ConfigError(
            f"{what} {value!r} is invalid: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return value


@dataclass
class AgentConfig:
    app_id: str
    system_prompt: str | list[dict[str, Any]] = "You are a helpful assistant."
    max_steps: int = 30
    max_tokens: int = 4096
    temperature: float = 1.0
    skills_enabled: bool = True
    prompt_caching_enabled: bool = True
    conversation_history_turns: int = 3
    compaction_token_threshold: int = 0
    compaction_turn_limit: int = 50
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_agent_id(self.app_id, "app_id")
        self._check_system_prompt()
        self._check_int("max_steps", minimum=1, maximum=1000)
        self._check_int("max_tokens", minimum=1, maximum=1_000_000)
        self._check_int("conversation_history_turns", minimum=0, maximum=1000)
        self._check_int("compaction_token_threshold", minimum=0)
        self._check_int("compaction_turn_limit", minimum=1, maximum=10_000)
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)):
            raise ConfigError(f"AgentConfig.temperature must be a number, got {self.temperature!r}")
        if not 0.0 <= float(self.temperature) <= 2.0:
            raise ConfigError(f"AgentConfig.temperature must be between 0 and 2, got {self.temperature}")
        if not isinstance(self.extra, dict):
            raise ConfigError("AgentConfig.extra must be a dict")

    def _check_int(self, name: str, minimum: int, maximum: int | None = None) -> None:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"AgentConfig.{name} must be an integer, got {value!r}")
        if value < minimum or (maximum is not None and value > maximum):
            bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
            raise ConfigError(f"AgentConfig.{name} must be {bound}, got {value}")

    def _check_system_prompt(self) -> None:
        prompt = self.system_prompt
        if isinstance(prompt, str):
            return
        if isinstance(prompt, list) and all(
            isinstance(b, dict) and b.get("type", "text") == "text" and isinstance(b.get("text"), str) for b in prompt
        ):
            return
        raise ConfigError("AgentConfig.system_prompt must be a string or a list of {'type': 'text', 'text': ...} blocks")

    @property
    def system_prompt_text(self) -> str:
        if isinstance(self.system_prompt, str):
            return self.system_prompt
        return "\n\n".join(b["text"] for b in self.system_prompt)

    def to_dict(self) -> dict[str, Any]:
        return {
            "app_id": self.app_id,
            "max_steps": self.max_steps,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "skills_enabled": self.skills_enabled,
            "prompt_caching_enabled": self.prompt_caching_enabled,
            "conversation_history_turns": self.conversation_history_turns,
            "compaction_token_threshold": self.compaction_token_threshold,
            "compaction_turn_limit": self.compaction_turn_limit,
        }
