"""A host app for engine tests: each request's message is a JSON script the model plays.

`{"script": [turn, ...], "structured": {...}}` where a turn is a string (final text) or
`{"text": ..., "tool_calls": [{"name", "arguments"}], "delay": s}`. Because the script
travels in the message, worker processes started by e2e tests play it too.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from mash_core.config import AgentConfig
from mash_core.llm import LLMError, LLMRequest, ScriptedProvider
from mash_core.llm.scripted import loop_position
from mash_core.messages import ToolResultBlock
from mash_core.tools import AskUserTool, BashTool, FunctionTool, ToolRegistry
from mash_runtime import AgentSpec, HostBuilder, SubAgentMetadata


def current_message(request: LLMRequest) -> str:
    for message in reversed(request.messages):
        if message.role == "user" and not all(isinstance(b, ToolResultBlock) for b in message.content):
            return message.text
    return ""


def parse(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {"script": [f"echo: {text}"]}
    return value if isinstance(value, dict) else {"script": [str(value)]}


def play(request: LLMRequest):
    plan = parse(current_message(request))
    if plan.get("llm_error"):
        marker = Path(plan["llm_error"]["marker"])
        count = int(marker.read_text()) if marker.exists() else 0
        marker.write_text(str(count + 1))
        if count < plan["llm_error"].get("times", 1):
            raise LLMError("scripted failure", transient=plan["llm_error"].get("transient", True), code="LLM_UNAVAILABLE")
    script = plan.get("script") or ["(empty script)"]
    position = loop_position(request)
    return script[min(position, len(script) - 1)] if position < len(script) else script[-1]


def structured_for(request: LLMRequest):
    # The structured call's messages end with the instruction; the plan is the newest JSON user
    # message (earlier ones belong to history turns of the session).
    for message in reversed(request.messages):
        if message.role == "user" and message.text.startswith("{"):
            return parse(message.text).get("structured", {})
    return {}


def append_line(path: str, line: str, sleep: float = 0.0, pid_file: str = "") -> str:
    """Sleep, then append a line to a file (a side effect tests can count)."""
    if pid_file:
        Path(pid_file).write_text(str(os.getpid()))
    if sleep:
        time.sleep(sleep)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
    return f"appended {line}"


async def wait_and_append(path: str, line: str, sleep: float = 0.0, pid_file: str = "") -> str:
    """Wait without a thread (many runs can wait at once), then append a line to a file."""
    import asyncio

    if pid_file:
        Path(pid_file).write_text(str(os.getpid()))
    if sleep:
        await asyncio.sleep(sleep)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
    return f"appended {line}"


def write_file(path: str, text: str) -> str:
    """Write a file (needs approval)."""
    Path(path).write_text(text, encoding="utf-8")
    return f"wrote {path}"


class ScriptedSpec(AgentSpec):
    agent_id = "primary"

    def get_agent_id(self) -> str:
        return self.agent_id

    def build_llm(self):
        return ScriptedProvider(play, structured=structured_for)

    def build_tools(self) -> ToolRegistry:
        return ToolRegistry(
            [
                FunctionTool(append_line),
                FunctionTool(wait_and_append),
                FunctionTool(write_file, requires_approval=True),
                BashTool(working_dir=os.environ.get("MASH_TEST_WORKDIR") or None),
                AskUserTool(),
            ]
        )

    def build_agent_config(self) -> AgentConfig:
        return AgentConfig(app_id=self.agent_id, system_prompt="You follow scripts.", max_steps=8)


class HelperSpec(ScriptedSpec):
    agent_id = "helper"


def build_host():
    return (
        HostBuilder()
        .primary(ScriptedSpec())
        .subagent(HelperSpec(), metadata=SubAgentMetadata(display_name="Helper", description="Runs helper scripts"))
        .build()
    )
