"""The engine test host for `/mcp` (served to MCP clients), whose model can also say what its
history holds.

The message `what came before?` is answered with the earlier user messages the model was
sent (`before: a | b`), so a test sees whether a session's history reached it; any other
message plays as in `engine_host`.
"""

from __future__ import annotations

from mash_core.llm import LLMRequest, ScriptedProvider
from mash_core.messages import ToolResultBlock
from mash_runtime import HostBuilder, SubAgentMetadata
from tests.apps.engine_host import HelperSpec, ScriptedSpec, current_message, play, structured_for

RECALL = "what came before?"


def play_or_recall(request: LLMRequest):
    if current_message(request) != RECALL:
        return play(request)
    earlier = [m.text for m in request.messages
               if m.role == "user" and not all(isinstance(b, ToolResultBlock) for b in m.content)][:-1]
    return "before: " + " | ".join(earlier)


class RecallingSpec(ScriptedSpec):
    def build_llm(self):
        return ScriptedProvider(play_or_recall, structured=structured_for)


def build_host():
    return (
        HostBuilder()
        .primary(RecallingSpec())
        .subagent(HelperSpec(), metadata=SubAgentMetadata(display_name="Helper", description="Runs helper scripts",
                                                          capabilities=["scripts"]))
        .build()
    )
