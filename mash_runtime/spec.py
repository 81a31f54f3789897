"""`AgentSpec`: what a host app implements for each agent."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

from mash_core.config import AgentConfig
from mash_core.errors import ConfigError
from mash_core.llm.base import LLMProvider
from mash_core.skills import SkillRegistry
from mash_core.tools.base import ToolRegistry


@dataclass(frozen=True)
class SubAgentMetadata:
    """How a primary agent should think of a subagent when routing work to it."""

    display_name: str
    description: str
    capabilities: list[str] = field(default_factory=list)
    usage_guidance: str = ""

    def __post_init__(self) -> None:
        if not str(self.display_name).strip() or not str(self.description).strip():
            raise ConfigError("SubAgentMetadata needs a display_name and a description")

    def to_dict(self) -> dict[str, Any]:
        return {
            "display_name": self.display_name,
            "description": self.description,
            "capabilities": list(self.capabilities),
            "usage_guidance": self.usage_guidance,
        }


class AgentSpec(abc.ABC):
    """One agent of a host app. The runtime calls the builders when it needs them:
    tools and skills are built afresh for every request run (a bash shell is per run)."""

    @abc.abstractmethod
    def get_agent_id(self) -> str: ...

    @abc.abstractmethod
    def build_llm(self) -> LLMProvider: ...

    @abc.abstractmethod
    def build_agent_config(self) -> AgentConfig: ...

    def build_tools(self) -> ToolRegistry:
        return ToolRegistry()

    def build_skills(self) -> SkillRegistry:
        return SkillRegistry()

    def build_mcp_servers(self) -> list[Any]:
        return []

    def enable_runtime_tools(self) -> bool:
        return False

    def on_startup(self, runtime: Any) -> None:
        return None

    def on_shutdown(self, runtime: Any) -> None:
        return None
