"""The engine host (primary + helper) with Masher enabled, played by a scripted model.

Masher's script reads the task message the workflow engine writes: turn 0 collects with
the workflow input, turn 1 saves (digest summaries built from the collected traces, or
every collected trace as an eval), turn 2 answers; the structured output reports what
the save tool returned.
"""

from __future__ import annotations

import json
import re

from mash_core.llm import LLMRequest, ScriptedProvider
from mash_core.llm.scripted import loop_position
from mash_core.messages import ToolResultBlock
from mash_runtime import HostBuilder, SubAgentMetadata
from tests.apps.engine_host import HelperSpec, ScriptedSpec
from tests.apps.workflow_host import section

RUN_RE = re.compile(r"of workflow '([^']+)' \(run ([^)]+)\)")


def task_header(request: LLMRequest) -> tuple[str, str]:
    for message in request.messages:
        if message.role == "user" and (match := RUN_RE.search(message.text)):
            return match.group(1), match.group(2)
    return "", ""


def last_tool_result(request: LLMRequest) -> tuple[dict | None, bool]:
    for message in reversed(request.messages):
        for block in reversed(message.content):
            if isinstance(block, ToolResultBlock):
                try:
                    return json.loads(block.content), block.is_error
                except json.JSONDecodeError:
                    return {"error": block.content}, True
    return None, False


def summary_for(trace: dict) -> str:
    return f"Scripted summary: {trace['status']} trace with {trace['tool_call_count']} tool call(s)."


def masher_turn(request: LLMRequest):
    data = section(request, "Workflow input:") or {}
    workflow, run_id = task_header(request)
    evals = workflow == "masher-online-eval-curation"
    mode = data.get("mode", "trace")
    position = loop_position(request)
    if position == 0:
        args = {k: data[k] for k in ("mode", "trace_id", "agent_id", "limit") if k in data}
        args["purpose"] = "eval" if evals else "digest"
        return {"tool_calls": [{"name": "masher_collect", "arguments": args}]}
    result, is_error = last_tool_result(request)
    if position == 1 and not is_error and result and result.get("traces"):
        traces = result["traces"]
        common = {"mode": mode, "run_id": run_id, **({"agent_id": data["agent_id"]} if "agent_id" in data else {})}
        if evals:
            args = {"trace_ids": [t["trace_id"] for t in traces], **common}
            if mode == "incremental":
                args["through_trace_id"] = traces[-1]["trace_id"]
            return {"tool_calls": [{"name": "masher_save_evals", "arguments": args}]}
        digests = [{"trace_id": t["trace_id"], "summary": summary_for(t)} for t in traces]
        return {"tool_calls": [{"name": "masher_save_digests", "arguments": {"digests": digests, **common}}]}
    if is_error:
        return f"Stopped: {result.get('error') if isinstance(result, dict) else result}"
    return "Masher finished."


def masher_output(request: LLMRequest):
    data = section(request, "Workflow input:") or {}
    result, is_error = last_tool_result(request)
    if result and not is_error and "saved" in result:
        return {"mode": result["mode"], "saved": result["saved"], "trace_ids": result["trace_ids"]}
    return {"mode": data.get("mode", "trace"), "saved": 0, "trace_ids": []}


def masher_llm() -> ScriptedProvider:
    return ScriptedProvider(masher_turn, structured=masher_output)


def build_host():
    return (
        HostBuilder()
        .primary(ScriptedSpec())
        .subagent(HelperSpec(), metadata=SubAgentMetadata(display_name="Helper", description="Runs helper scripts"))
        .enable_masher(llm_factory=masher_llm)
        .build()
    )
