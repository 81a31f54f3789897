"""The benchmark host: one tool call, then an answer, from a zero-latency scripted model."""

from mash_core.config import AgentConfig
from mash_core.llm import ScriptedProvider
from mash_core.tools import FunctionTool, ToolRegistry
from mash_runtime import AgentSpec, HostBuilder


def lookup(key: str) -> str:
    """Return a canned value."""
    return f"value of {key}"


class BenchAgent(AgentSpec):
    def get_agent_id(self) -> str:
        return "bench"

    def build_llm(self):
        return ScriptedProvider([{"tool_calls": [{"name": "lookup", "arguments": {"key": "k"}}]}, "done"])

    def build_tools(self) -> ToolRegistry:
        return ToolRegistry([FunctionTool(lookup)])

    def build_agent_config(self) -> AgentConfig:
        return AgentConfig(app_id="bench", system_prompt="bench", conversation_history_turns=0)


def hold(reason: str) -> str:
    """A tool that needs approval: requests calling it park until someone answers."""
    return reason


class ParkingAgent(BenchAgent):
    """Parks every request on an approval, so its stream stays open and idle."""

    def get_agent_id(self) -> str:
        return "bench-park"

    def build_llm(self):
        return ScriptedProvider([{"tool_calls": [{"name": "hold", "arguments": {"reason": "idle"}}]}, "released"])

    def build_tools(self) -> ToolRegistry:
        return ToolRegistry([FunctionTool(hold, requires_approval=True)])

    def build_agent_config(self) -> AgentConfig:
        return AgentConfig(app_id="bench-park", system_prompt="bench", conversation_history_turns=0)


def build_host():
    return HostBuilder().primary(BenchAgent()).subagent(ParkingAgent()).build()


class ModelAgent(BenchAgent):
    """The real `AnthropicProvider`: ANTHROPIC_BASE_URL points it at a local fake
    (tests/fakes/slow_anthropic.py) that answers after a delay, as a real model would."""

    def get_agent_id(self) -> str:
        return "bench"

    def build_llm(self):
        from mash_core.llm import AnthropicProvider

        return AnthropicProvider(app_id="bench", model="claude-fake")


def build_model_host():
    return HostBuilder().primary(ModelAgent()).subagent(ParkingAgent()).build()
