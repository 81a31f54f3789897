"""The Masher agent spec, its tools and its two workflows.

Masher is workflow-only (hidden from listings). Both workflows have one task run by
Masher; the task message carries the workflow input, e.g. `{"mode": "trace",
"trace_id": "..."}` or `{"mode": "incremental", "agent_id": "...", "limit": 20}`.
The tools do the counting and storing in plain code (`records.py`, `digest.py`);
the model only writes the digest summaries and picks which traces become evals.

Importing this module does not touch models, so `HostBuilder.enable_masher()` can
import it while a host app is being built.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from mash_core.config import AgentConfig
from mash_core.llm.base import LLMProvider
from mash_core.tools.base import Tool, ToolRegistry, ToolResult, object_schema
from mash_runtime.masher.names import EVAL_CURATION_WORKFLOW, MASHER_AGENT_ID, TRACE_DIGEST_WORKFLOW
from mash_runtime.run.dbthreads import database
from mash_runtime.spec import AgentSpec
from mash_runtime.workflows import TaskSpec, WorkflowSpec

TASK_OUTPUT = {
    "type": "object",
    "properties": {
        "mode": {"type": "string", "enum": ["trace", "incremental"]},
        "saved": {"type": "integer", "minimum": 0, "description": "How many records were saved."},
        "trace_ids": {"type": "array", "items": {"type": "string"}, "description": "The traces saved."},
    },
    "required": ["mode", "saved", "trace_ids"],
}

SYSTEM_PROMPT = f"""You are Masher, Mash's built-in trace analyst. You run only as a workflow task.
The task message names the workflow and its run id ("(run <id>)") and gives the workflow input as JSON:
{{"mode": "trace", "trace_id": "..."}} for one trace, or {{"mode": "incremental", "agent_id": "...", "limit": 20}}
for every trace of that agent since the last run.

Workflow {TRACE_DIGEST_WORKFLOW}:
1. Call masher_collect with the input's mode, trace_id / agent_id and limit (purpose "digest").
2. Write a short factual summary (1-3 sentences) of each collected trace: what the user asked, what the
   agent did, how it ended, and anything in notable_events. Counts and tokens are computed for you: do not
   restate them.
3. Call masher_save_digests with digests=[{{"trace_id", "summary"}}] for every collected trace, the same mode
   and agent_id, and run_id.

Workflow {EVAL_CURATION_WORKFLOW}:
1. Call masher_collect as above with purpose "eval".
2. Pick the traces that make good eval cases: a clear user request and a correct, complete answer.
3. Call masher_save_evals with their trace_ids, the same mode and agent_id, run_id, and in incremental mode
   through_trace_id = the last collected trace, so the ones you skipped are not offered again.

If nothing was collected, save nothing. If a tool returns an error, fix the arguments or stop.
Finish with the structured output: the mode, how many records were saved and their trace ids."""


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


class MasherTool(Tool):
    """A Masher tool: runs its plain-code function, the one of `records` its name ends with
    (`masher_save_evals`: `records.save_evals`), in the engine's ORM thread."""

    async def execute(self, args: dict[str, Any]) -> ToolResult:
        from mash_runtime.masher import records

        unknown = sorted(set(args) - set(self.parameters["properties"]))
        if unknown:
            return ToolResult.error(f"unknown argument(s) for {self.name}: {', '.join(unknown)}")
        fn = getattr(records, self.name.removeprefix("masher_"))
        try:
            value = await database(fn)(**args)
        except records.MasherError as exc:
            return ToolResult.error(str(exc))
        return ToolResult.success(_dumps(value))


MODE_PARAM = {"type": "string", "enum": ["trace", "incremental"],
              "description": "trace: one given trace; incremental: every trace of an agent since the checkpoint."}
AGENT_PARAM = {"type": "string", "description": "The agent whose traces to process (incremental mode)."}
RUN_PARAM = {"type": "string", "description": "This workflow run's id, from the task message."}
# What both save tools take after their records: the mode, its agent and the run saving them.
SAVE_PARAMS = {"mode": MODE_PARAM, "agent_id": AGENT_PARAM, "run_id": RUN_PARAM}


class CollectTool(MasherTool):
    name = "masher_collect"
    description = (
        "Collect traces with their facts computed in code: status, user message, answer, event/tool/step/LLM call "
        "counts, tools used, tokens, duration and notable events (errors, denied or failed tool calls, "
        "interactions, max-steps stops, retries). Mode 'trace' returns the one trace_id; mode 'incremental' "
        "returns the agent's traces finished since the stored checkpoint, oldest first, at most `limit`."
    )
    parameters = object_schema({
        "mode": MODE_PARAM,
        "trace_id": {"type": "string", "description": "The trace to collect (trace mode)."},
        "agent_id": AGENT_PARAM,
        "limit": {"type": "integer", "minimum": 1, "maximum": 100, "description": "At most this many (default 20)."},
        "purpose": {"type": "string", "enum": ["digest", "eval"],
                    "description": "Which workflow's checkpoint to read: digest (default) or eval."},
    }, required=["mode"])


class SaveDigestsTool(MasherTool):
    name = "masher_save_digests"
    description = (
        "Store one trace digest per trace: facts are recomputed in code, the summary is yours. In incremental "
        "mode the agent's checkpoint moves to the newest saved trace (traces before it that you left out get an "
        "automatic summary)."
    )
    parameters = object_schema({
        "digests": {
            "type": "array",
            "items": object_schema({"trace_id": {"type": "string"}, "summary": {"type": "string"}},
                                   required=["trace_id", "summary"]),
        },
        **SAVE_PARAMS,
    }, required=["digests"])


class SaveEvalsTool(MasherTool):
    name = "masher_save_evals"
    description = (
        "Store one eval record per completed trace, from its data alone: user message, answer, tools used "
        "(with arguments), tokens. In incremental mode the agent's checkpoint moves to the newest of the "
        "saved traces and through_trace_id."
    )
    parameters = object_schema({
        "trace_ids": {"type": "array", "items": {"type": "string"}},
        **SAVE_PARAMS,
        "through_trace_id": {"type": "string",
                             "description": "Incremental mode: the last trace you reviewed, saved or not."},
    }, required=["trace_ids"])


def masher_tools() -> ToolRegistry:
    return ToolRegistry([CollectTool(), SaveDigestsTool(), SaveEvalsTool()])


class MasherSpec(AgentSpec):
    """The built-in Masher agent. `llm_factory` (no arguments -> an LLMProvider) replaces
    the default, e.g. with a ScriptedProvider in tests. The default is the provider the
    environment chooses (`mash_core.llm.provider_from_env`: MASH_LLM, else the key that is
    set, else Anthropic), with `model` when given."""

    def __init__(self, llm_factory: Callable[[], LLMProvider] | None = None, *, model: str | None = None,
                 max_steps: int = 12):
        self.llm_factory = llm_factory
        self.model = model
        self.max_steps = max_steps

    def get_agent_id(self) -> str:
        return MASHER_AGENT_ID

    def build_llm(self) -> LLMProvider:
        if self.llm_factory is not None:
            return self.llm_factory()
        from mash_core.llm import provider_from_env

        return provider_from_env(MASHER_AGENT_ID, model=self.model)

    def build_agent_config(self) -> AgentConfig:
        return AgentConfig(app_id=MASHER_AGENT_ID, system_prompt=SYSTEM_PROMPT, max_steps=self.max_steps,
                           conversation_history_turns=0, temperature=0.2)

    def build_tools(self) -> ToolRegistry:
        return masher_tools()


def masher_workflows(spec: MasherSpec | None = None) -> list[WorkflowSpec]:
    """The two built-in workflows, each one task run by the Masher agent."""
    spec = spec or MasherSpec()
    return [
        WorkflowSpec(TRACE_DIGEST_WORKFLOW, tasks=[TaskSpec("digest", agent_spec=spec, structured_output=TASK_OUTPUT)],
                     metadata={"builtin": "masher", "description": "Summarise one trace, or every new trace of an "
                                                                  "agent, into trace digest records."}),
        WorkflowSpec(EVAL_CURATION_WORKFLOW, tasks=[TaskSpec("curate", agent_spec=spec, structured_output=TASK_OUTPUT)],
                     metadata={"builtin": "masher", "description": "Turn traces into eval records: user message, "
                                                                  "answer, tools, tokens."}),
    ]


__all__ = ["MasherSpec", "MasherTool", "CollectTool", "SaveDigestsTool", "SaveEvalsTool", "TASK_OUTPUT", "SYSTEM_PROMPT",
           "AGENT_PARAM", "MODE_PARAM", "RUN_PARAM", "masher_tools", "masher_workflows"]
