"""Pilot: the example host app. A primary `pilot` agent answers questions about this
repository and delegates to one copilot per top-level package. Built only on public names.

The model is the provider whose key is set (ANTHROPIC_API_KEY, OPENAI_API_KEY, GEMINI_API_KEY /
GOOGLE_API_KEY, or OPENAI_CHAT_BASE_URL for a local OpenAI-compatible server); `MASH_LLM=anthropic|
openai|openai-chat|gemini` forces one, and `MASH_LLM=scripted` runs it offline on a scripted model (a
demo, no API key needed). See `mash_core.llm.provider_from_env`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mash_core.config import AgentConfig
from mash_core.llm import LLMRequest, ScriptedProvider, provider_from_env
from mash_core.messages import ToolResultBlock
from mash_core.llm.scripted import loop_position
from mash_core.mcp import MCPServerConfig
from mash_core.skills import Skill, SkillRegistry
from mash_core.tools import AskUserTool, BashTool, ToolRegistry
from mash_runtime import AgentSpec, HostBuilder, SubAgentMetadata
from pilot.tools import UpdateDocsTool

PACKAGES = {
    "mash_core": "the SDK without Django: agent loop, LLM providers, tools, skills",
    "mash_runtime": "models, host composition and the durable request engine",
    "mash_api": "the HTTP API, SSE and WebSocket streams, API keys, the CLI",
    "mash_telemetry": "admin pages, telemetry pages and the API request log",
    "mash_project": "Django settings, URLs, ASGI routing and the mash console script",
}
SKILLS_DIR = Path(__file__).resolve().parent / "skills"


def workspace() -> Path:
    return Path(os.environ.get("PILOT_WORKSPACE") or os.getcwd()).resolve()


def _last_tool_output(request: LLMRequest) -> str:
    for message in reversed(request.messages):
        for block in message.content:
            if isinstance(block, ToolResultBlock):
                return block.content
    return ""


def offline_demo(request: LLMRequest):
    """The scripted model: look around with bash, then answer with what it saw."""
    if loop_position(request) == 0:
        return {"tool_calls": [{"name": "bash", "arguments": {"command": "ls -1 | head -20"}}]}
    listing = _last_tool_output(request).strip()
    return (
        "This is Pilot's offline demo (MASH_LLM=scripted): no model was called. "
        "I listed the workspace:\n\n```\n" + listing[:1500] + "\n```\n\n"
        "Set ANTHROPIC_API_KEY, OPENAI_API_KEY or GEMINI_API_KEY (and unset MASH_LLM) for real answers "
        "about this repository."
    )


def offline_structured(request: LLMRequest) -> dict[str, Any]:
    """Structured output for the demo: every required field filled from the last answer."""
    answer = next((m.text for m in reversed(request.messages) if m.role == "assistant" and m.text), "")
    schema = request.output_schema or {}
    fill = {"string": answer, "integer": 0, "number": 0, "boolean": False, "array": [], "object": {}}
    return {name: fill.get(schema.get("properties", {}).get(name, {}).get("type", "string"), answer)
            for name in schema.get("required", [])}


def build_llm_for(agent_id: str):
    return provider_from_env(
        agent_id, scripted=lambda: ScriptedProvider(offline_demo, structured=offline_structured, model="scripted-demo"))


def mcp_servers_from_env() -> list[MCPServerConfig]:
    """Pilot's optional MCP server (see README.md): MASH_PILOT_MCP_URL, a bearer token named
    by MASH_PILOT_MCP_TOKEN (read when connecting, never stored), approval unless
    MASH_PILOT_MCP_APPROVAL=0, only the tools MASH_PILOT_MCP_TOOLS lists (comma-separated)."""
    url = os.environ.get("MASH_PILOT_MCP_URL", "").strip()
    if not url:
        return []
    has_token = bool(os.environ.get("MASH_PILOT_MCP_TOKEN") or os.environ.get("MASH_PILOT_MCP_TOKEN_FILE"))
    tools = [t.strip() for t in os.environ.get("MASH_PILOT_MCP_TOOLS", "").split(",") if t.strip()]
    return [MCPServerConfig(
        "external",
        url=url,
        headers={"Authorization": "Bearer ${MASH_PILOT_MCP_TOKEN}"} if has_token else None,
        requires_approval=os.environ.get("MASH_PILOT_MCP_APPROVAL", "1").strip() != "0",
        include_tools=tools or None,
    )]


def _readme(package: str) -> str:
    path = workspace() / package / "README.md"
    try:
        return path.read_text(encoding="utf-8")[:6000]
    except OSError:
        return "(README not found)"


class PilotSpec(AgentSpec):
    def get_agent_id(self) -> str:
        return "pilot"

    def build_llm(self):
        return build_llm_for("pilot")

    def build_tools(self) -> ToolRegistry:
        return ToolRegistry([BashTool(working_dir=str(workspace())), UpdateDocsTool(workspace()), AskUserTool()])

    def build_skills(self) -> SkillRegistry:
        registry = SkillRegistry()
        registry.load_tree(SKILLS_DIR)
        return registry

    def build_mcp_servers(self) -> list[MCPServerConfig]:
        return mcp_servers_from_env()

    def build_agent_config(self) -> AgentConfig:
        return AgentConfig(
            app_id="pilot",
            system_prompt=(
                "You are Pilot, a guide to the Mash repository in your working directory. Answer questions "
                "about its code precisely and cite file paths. Use bash to read files (cat, grep, git log). "
                "Delegate package-specific questions to the package copilots. Only change README.md or "
                "AGENTS.md files, with update_docs, when asked; ask the user when a request is ambiguous."
            ),
            max_steps=20,
        )


class CopilotSpec(AgentSpec):
    def __init__(self, package: str):
        self.package = package

    def get_agent_id(self) -> str:
        return f"{self.package}-copilot"

    def build_llm(self):
        return build_llm_for(self.get_agent_id())

    def build_tools(self) -> ToolRegistry:
        return ToolRegistry([BashTool(working_dir=str(workspace()))])

    def build_agent_config(self) -> AgentConfig:
        return AgentConfig(
            app_id=self.get_agent_id(),
            system_prompt=(
                f"You are the copilot for the `{self.package}` package of the Mash repository. "
                "Answer from its code (read it with bash) and cite file paths.\n\n"
                f"The package README:\n\n{_readme(self.package)}"
            ),
            max_steps=15,
        )

    def metadata(self) -> SubAgentMetadata:
        return SubAgentMetadata(
            display_name=f"{self.package} copilot",
            description=f"Knows {self.package}: {PACKAGES[self.package]}.",
            capabilities=["read code", "explain design", "cite files"],
            usage_guidance=f"Questions about {self.package}/",
        )


def build_host() -> Any:
    builder = HostBuilder().primary(PilotSpec())
    for package in PACKAGES:
        copilot = CopilotSpec(package)
        builder.subagent(copilot, metadata=copilot.metadata())
    return builder.build()


def changelog_skill() -> Skill:
    return Skill.from_directory(SKILLS_DIR / "changelog")
