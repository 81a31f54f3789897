"""A host with workflows whose scripted agents read the task message the engine writes."""

from __future__ import annotations

import json

from mash_core.config import AgentConfig
from mash_core.llm import LLMRequest, ScriptedProvider
from mash_core.llm.scripted import loop_position
from mash_core.tools import FunctionTool, ToolRegistry
from mash_runtime import AgentSpec, HostBuilder
from mash_runtime.workflows import TaskSpec, WorkflowSpec
from tests.apps.engine_host import ScriptedSpec, write_file


def section(request: LLMRequest, heading: str):
    """The JSON under `heading` in the task message, or None."""
    for message in request.messages:
        if message.role != "user":
            continue
        for part in message.text.split("\n\n"):
            if part.startswith(heading):
                body = part[len(heading):].strip()
                try:
                    return json.loads(body)
                except json.JSONDecodeError:
                    return None
    return None


class TaskAgent(AgentSpec):
    agent_id = "task"

    def get_agent_id(self) -> str:
        return self.agent_id

    def build_agent_config(self) -> AgentConfig:
        return AgentConfig(app_id=self.agent_id, system_prompt="workflow task", conversation_history_turns=0)

    def build_llm(self):
        return ScriptedProvider(self.turn, structured=self.output)

    def turn(self, request: LLMRequest):
        return "done"

    def output(self, request: LLMRequest):
        return {}


class Counter(TaskAgent):
    agent_id = "counter"

    def output(self, request):
        previous = section(request, "This task's state from its previous run:") or {}
        step = (section(request, "Workflow input:") or {}).get("step", 1)
        return {"count": previous.get("count", 0) + step}


class Reporter(TaskAgent):
    agent_id = "reporter"

    def output(self, request):
        earlier = section(request, "Outputs of earlier tasks in this run:") or {}
        return {"report": f"count is {earlier.get('count', {}).get('count')}"}


class Broken(TaskAgent):
    agent_id = "broken"

    def output(self, request):
        return {"count": "not a number"}


class Gated(TaskAgent):
    """Writes the file named in the input, which needs approval, then finishes."""

    agent_id = "gated"

    def build_tools(self) -> ToolRegistry:
        return ToolRegistry([FunctionTool(write_file, requires_approval=True)])

    def turn(self, request):
        if loop_position(request) == 0:
            path = (section(request, "Workflow input:") or {}).get("path", "/tmp/unused")
            return {"tool_calls": [{"name": "write_file", "arguments": {"path": path, "text": "gated"}}]}
        return "written"

    def output(self, request):
        return {"result": "written"}


class Slow(TaskAgent):
    """Sleeps in a tool long enough to be cancelled or killed."""

    agent_id = "slow"

    def build_tools(self) -> ToolRegistry:
        from tests.apps.engine_host import append_line

        return ToolRegistry([FunctionTool(append_line)])

    def turn(self, request):
        if loop_position(request) == 0:
            data = section(request, "Workflow input:") or {}
            return {"tool_calls": [{"name": "append_line", "arguments": {
                "path": data.get("path", "/tmp/slow.txt"), "line": "slow", "sleep": data.get("sleep", 3),
                "pid_file": data.get("pid_file", "")}}]}
        return "slow done"

    def output(self, request):
        return {"result": "slow done"}


COUNT = {"type": "object", "properties": {"count": {"type": "integer"}}, "required": ["count"]}
REPORT = {"type": "object", "properties": {"report": {"type": "string"}}, "required": ["report"]}


def build_host():
    return (
        HostBuilder()
        .primary(ScriptedSpec())
        .workflow(WorkflowSpec("count-and-report", tasks=[
            TaskSpec("count", agent_spec=Counter(), structured_output=COUNT),
            TaskSpec("report", agent_spec=Reporter(), structured_output=REPORT),
        ], metadata={"purpose": "tests"}))
        .workflow(WorkflowSpec("broken", tasks=[TaskSpec("count", agent_spec=Broken(), structured_output=COUNT)]))
        .workflow(WorkflowSpec("gated", tasks=[TaskSpec("write", agent_spec=Gated())]))
        .workflow(WorkflowSpec("slow", tasks=[TaskSpec("wait", agent_spec=Slow()),
                                              TaskSpec("count", agent_id="counter", structured_output=COUNT)]))
        .build()
    )
