"""Every public SDK name of product.md section 1 imports from where the spec says."""

import subprocess
import sys


def test_it_exposes_every_public_name():
    code = """
from mash_core.config import AgentConfig
from mash_core.llm import AnthropicProvider, ScriptedProvider, LLMProvider, LLMRequest, LLMResponse
from mash_core.mcp import MCPServerConfig
from mash_core.tools import Tool, ToolResult, ToolRegistry, FunctionTool, BashTool, AskUserTool
from mash_core.skills import Skill, SkillRegistry
from mash_runtime import AgentSpec, HostBuilder, SubAgentMetadata
from mash_runtime.workflows import WorkflowSpec, TaskSpec
for name in ("get_agent_id", "build_tools", "build_skills", "build_llm", "build_agent_config",
             "build_mcp_servers", "enable_runtime_tools", "on_startup", "on_shutdown"):
    assert hasattr(AgentSpec, name), name
print("ok")
"""
    # A fresh interpreter without Django settings: host apps import these before Django is set up.
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": "."}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
