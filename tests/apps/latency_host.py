"""A host app whose model is the real `AnthropicProvider`, pointed (by ANTHROPIC_BASE_URL)
at a slow local fake (tests/fakes/slow_anthropic.py): requests that wait seconds per call."""

from __future__ import annotations

from mash_core.config import AgentConfig
from mash_core.llm import AnthropicProvider
from mash_core.tools import FunctionTool, ToolRegistry
from mash_runtime import AgentSpec, HostBuilder


def lookup(key: str) -> str:
    """Return a canned value."""
    return f"value of {key}"


class SlowModelSpec(AgentSpec):
    def get_agent_id(self) -> str:
        return "primary"

    def build_llm(self):
        return AnthropicProvider(app_id="primary", model="claude-fake")

    def build_tools(self) -> ToolRegistry:
        return ToolRegistry([FunctionTool(lookup)])

    def build_agent_config(self) -> AgentConfig:
        return AgentConfig(app_id="primary", system_prompt="You answer.", conversation_history_turns=0)


def build_host():
    return HostBuilder().primary(SlowModelSpec()).build()
