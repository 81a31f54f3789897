"""A host app whose model is whichever real provider the environment chooses
(`provider_from_env`: MASH_LLM plus that provider's base-URL and key variables), pointed by
tests/e2e/test_providers.py at a loopback fake of its API: one primary agent with one tool."""

from __future__ import annotations

from mash_core.config import AgentConfig
from mash_core.llm import provider_from_env
from mash_core.tools import FunctionTool, ToolRegistry
from mash_runtime import AgentSpec, HostBuilder


def lookup(key: str) -> str:
    """Return the stored value for a key."""
    return f"value of {key}"


class ProviderSpec(AgentSpec):
    def get_agent_id(self) -> str:
        return "primary"

    def build_llm(self):
        return provider_from_env("primary")

    def build_tools(self) -> ToolRegistry:
        return ToolRegistry([FunctionTool(lookup)])

    def build_agent_config(self) -> AgentConfig:
        return AgentConfig(app_id="primary", system_prompt="You answer with the lookup tool.",
                           conversation_history_turns=0)


def build_host():
    return HostBuilder().primary(ProviderSpec()).build()
