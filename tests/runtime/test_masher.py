"""Masher: trace digests and eval curation, both modes, against a scripted model.

Traces are made by running real requests through the engine harness (the engine host's
JSON-script primary agent); Masher's workflows then run in-process too, played by the
scripted model of tests/apps/masher_host.py.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from mash_core.llm.anthropic import AnthropicProvider
from mash_runtime import HostBuilder
from mash_runtime.host import get_host, set_host
from mash_runtime.host_sync import sync_host
from mash_runtime.masher.agent import CollectTool, SaveDigestsTool, SaveEvalsTool
from mash_runtime.masher.digest import event_facts, plain_summary
from mash_runtime.masher.export import DIGESTS_FILE, EVALS_FILE
from mash_runtime.masher.models import EvalRecord, MasherCheckpoint, TraceDigest
from mash_runtime.masher.names import EVAL_CURATION_WORKFLOW, MASHER_AGENT_ID, TRACE_DIGEST_WORKFLOW
from mash_runtime.masher.records import collect, save_digests
from mash_runtime.models import Interaction, Request, RuntimeEvent
from mash_runtime.services import answer_interaction
from mash_runtime.workflows.engine import get_run, list_workflows, start_run
from tests.apps.engine_host import ScriptedSpec
from tests.apps.masher_host import summary_for


def tool(name, **arguments):
    return {"name": name, "arguments": arguments}


@pytest.fixture
def masher(engine, settings, tmp_path):
    settings.MASH_HOST_APP = "tests.apps.masher_host:build_host"
    settings.MASH_MASHER_EXPORT = False
    settings.DATA_DIR = tmp_path / "data"
    set_host(None)
    sync_host(get_host())
    return engine


def trace(engine, tmp_path, line="a", session_id="s1"):
    """A completed primary trace: one append_line call, then a final answer."""
    req = engine.run({"script": [{"tool_calls": [tool("append_line", path=str(tmp_path / "out.txt"), line=line)]},
                                 f"appended {line}"]}, session_id=session_id)
    assert req.status == "completed"
    return req


def run_workflow(engine, workflow_id, **input):
    run_id = start_run(workflow_id, input=input)["run_id"]
    engine.drain()
    run = get_run(workflow_id, run_id)
    assert run.status == "completed", run.error
    return run


def task_output(run):
    return next(iter(run.output["task_states"].values()))


def masher_tool_results(run):
    """The (tool name, is_error) of every tool call Masher made in this run."""
    req = Request.objects.get(workflow_run_id=run.pk)
    return [(e.payload["tool_name"], e.payload["result"]["is_error"])
            for e in RuntimeEvent.objects.filter(request=req, event_type="runtime.tool.call.completed").order_by("seq")]


# -- the counting, as pure functions --------------------------------------------------------


def ev(seq, event_type, created_at=None, **payload):
    return {"seq": seq, "event_type": event_type, "payload": payload, "created_at": created_at or 100.0 + seq}


def test_it_counts_events_tools_steps_and_tokens_from_events():
    events = [
        ev(1, "request.accepted"),
        ev(2, "request.started", created_at=200.0),
        ev(3, "runtime.context.loaded", max_steps=8),
        ev(4, "llm.request.complete", input_tokens=10, output_tokens=5, cache_read_tokens=2, cache_write_tokens=1),
        ev(5, "runtime.llm.think.completed", action_type="tool_call"),
        ev(6, "runtime.tool.call.completed", tool_name="append_line", arguments={"line": "a"},
           result={"content": "ok", "is_error": False, "metadata": {}}),
        ev(7, "runtime.step.completed", action_type="tool_call"),
        ev(8, "subagent.llm.request.complete", input_tokens=999, output_tokens=999),
        ev(9, "runtime.subagent.call.completed", tool_name="InvokeSubagent", arguments={"agent_id": "helper"},
           result={"content": "child answer", "is_error": False, "metadata": {}}),
        ev(10, "runtime.step.completed", action_type="tool_call"),
        ev(11, "llm.request.complete", input_tokens=20, output_tokens=7),
        ev(12, "runtime.step.completed", action_type="response"),
        ev(13, "request.completed", created_at=201.5, response={"text": "done"}),
    ]
    facts = event_facts(list(reversed(events)))  # order comes from seq, not from the list
    assert facts["status"] == "completed" and facts["answer"] == "done" and facts["error"] == ""
    assert (facts["event_count"], facts["tool_call_count"], facts["step_count"], facts["llm_call_count"]) == (13, 2, 3, 2)
    assert facts["tools"] == ["append_line", "InvokeSubagent"]
    assert facts["tool_calls"][0] == {"name": "append_line", "arguments": {"line": "a"}, "is_error": False}
    # Mirrored subagent frames count as events but not as this trace's tokens.
    assert (facts["input_tokens"], facts["output_tokens"], facts["total_tokens"]) == (30, 12, 45)
    assert facts["duration_ms"] == 1500
    assert facts["notable_events"] == []
    assert plain_summary(facts) == "completed after 3 step(s); 2 tool call(s) (InvokeSubagent, append_line); 45 tokens."


def test_it_finds_notable_events():
    denied = {"content": "Tool execution denied by user (deny)", "is_error": True, "metadata": {}}
    failed = {"content": "tool 'x' failed: boom", "is_error": True, "metadata": {}}
    exhausted = {"content": "busy (gave up after 4 attempts)", "is_error": True, "metadata": {"retryable": True}}
    events = [
        ev(1, "request.started"),
        ev(2, "runtime.context.loaded", max_steps=2),
        ev(3, "request.interaction.create", type="approval", prompt="Allow write_file?"),
        ev(4, "request.interaction.ack", interaction_id="itr_1", timed_out=True),
        ev(5, "runtime.tool.call.completed", tool_name="write_file", result=denied),
        ev(6, "runtime.step.completed", action_type="tool_call"),
        ev(7, "request.error", error="Worker lost", error_code="INTERNAL_ERROR"),
        ev(8, "request.started"),
        ev(9, "runtime.tool.call.completed", tool_name="x", result=failed),
        ev(10, "runtime.tool.call.completed", tool_name="flaky", result=exhausted),
        ev(11, "runtime.subagent.call.completed", tool_name="InvokeSubagent", result=failed),
        ev(12, "runtime.step.completed", action_type="tool_call"),
        ev(13, "request.completed", response={"text": "Stopped after 2 steps without a final answer."}),
    ]
    facts = event_facts(events)
    kinds = [n["type"] for n in facts["notable_events"]]
    assert kinds == ["interaction", "interaction_timeout", "tool_denied", "error", "retry", "tool_error",
                     "tool_retries_exhausted", "subagent_error", "max_steps"]
    assert facts["status"] == "completed"  # the last terminal event wins (the request was resumed)
    notable = {n["type"]: n for n in facts["notable_events"]}
    assert notable["tool_denied"]["tool_name"] == "write_file" and notable["tool_denied"]["seq"] == 5
    assert notable["error"]["error_code"] == "INTERNAL_ERROR" and notable["retry"]["attempt"] == 2
    assert notable["max_steps"]["max_steps"] == 2
    cancelled = event_facts([ev(1, "request.error", error="Request cancelled", error_code="cancelled")])
    assert cancelled["status"] == "cancelled" and cancelled["notable_events"][0]["type"] == "cancelled"
    assert event_facts([])["status"] is None and event_facts([])["duration_ms"] is None


# -- the host --------------------------------------------------------------------------------


def test_it_adds_masher_as_a_hidden_workflow_agent_with_two_workflows(masher, settings):
    host = get_host()
    assert [a.agent_id for a in host.listed_agents()] == ["primary", "helper"]
    assert host.get(MASHER_AGENT_ID).role == "workflow"
    listed = {w["workflow_id"]: w for w in list_workflows()["workflows"]}
    assert listed[TRACE_DIGEST_WORKFLOW]["tasks"] == [{"task_id": "digest", "agent_id": "masher"}]
    assert listed[EVAL_CURATION_WORKFLOW]["tasks"] == [{"task_id": "curate", "agent_id": "masher"}]
    from django.test import Client

    from mash_api import auth

    settings.MASH_API_KEY = ""
    auth.forget_cached_configuration()
    body = Client().get("/api/v1/agent").json()
    auth.forget_cached_configuration()
    assert [a["agent_id"] for a in body["data"]["agents"]] == ["primary", "helper"]


def test_it_uses_the_anthropic_provider_unless_given_a_factory():
    host = HostBuilder().primary(ScriptedSpec()).enable_masher(model="claude-test").build()
    llm = host.get("masher").spec.build_llm()
    assert isinstance(llm, AnthropicProvider) and llm.app_id == "masher" and llm.model == "claude-test"
    assert set(host.workflows) == {TRACE_DIGEST_WORKFLOW, EVAL_CURATION_WORKFLOW}
    assert host.get("masher").spec.build_tools().names == ["masher_collect", "masher_save_digests",
                                                          "masher_save_evals"]


# -- masher-trace-digest ---------------------------------------------------------------------


def test_it_digests_one_trace_in_trace_mode(masher, tmp_path):
    req = trace(masher, tmp_path)
    run = run_workflow(masher, TRACE_DIGEST_WORKFLOW, mode="trace", trace_id=str(req.trace_id))
    assert task_output(run) == {"mode": "trace", "saved": 1, "trace_ids": [str(req.trace_id)]}
    assert masher_tool_results(run) == [("masher_collect", False), ("masher_save_digests", False)]
    digest = TraceDigest.objects.get()
    assert (digest.agent_id, digest.trace_id, digest.request_id, digest.session_id) == (
        "primary", req.trace_id, req.pk, "s1")
    assert digest.status == "completed" and digest.mode == "trace" and digest.run_id == run.pk
    assert digest.summary == "Scripted summary: completed trace with 1 tool call(s)."
    assert (digest.step_count, digest.tool_call_count, digest.llm_call_count) == (2, 1, 2)
    assert digest.event_count == RuntimeEvent.objects.filter(request=req).count() > 8
    assert digest.tools == ["append_line"]
    assert (digest.input_tokens, digest.output_tokens, digest.total_tokens) == (
        req.input_tokens, req.output_tokens, req.total_tokens)
    assert req.input_tokens == 20 and digest.total_tokens > 20
    assert digest.duration_ms == req.duration_ms is not None
    assert digest.notable_events == []
    # Trace mode keeps no checkpoint; digesting the same trace again replaces its record.
    assert not MasherCheckpoint.objects.exists()
    run_workflow(masher, TRACE_DIGEST_WORKFLOW, mode="trace", trace_id=str(req.trace_id))
    assert TraceDigest.objects.count() == 1


def test_it_digests_a_failed_trace_and_a_denied_tool_call_with_their_notable_events(masher, tmp_path):
    failed = masher.run({"script": ["x"], "llm_error": {"marker": str(tmp_path / "m"), "times": 9,
                                                        "transient": False}})
    assert failed.status == "failed"
    rid = masher.submit({"script": [{"tool_calls": [tool("write_file", path=str(tmp_path / "w"), text="x")]}, "ok"]})
    masher.drain()
    answer_interaction(rid, Interaction.objects.get(request_id=rid).interaction_id, "deny")
    masher.drain()
    denied = masher.request(rid)
    assert denied.status == "completed"
    for req in (failed, denied):
        run_workflow(masher, TRACE_DIGEST_WORKFLOW, mode="trace", trace_id=str(req.trace_id))
    bad = TraceDigest.objects.get(trace_id=failed.trace_id)
    assert bad.status == "failed" and bad.step_count == 0 and bad.total_tokens == 0
    assert [n["type"] for n in bad.notable_events] == ["error"]
    assert bad.notable_events[0]["error_code"] == "LLM_UNAVAILABLE"
    assert bad.summary == "Scripted summary: failed trace with 0 tool call(s)."
    gated = TraceDigest.objects.get(trace_id=denied.trace_id)
    assert [n["type"] for n in gated.notable_events] == ["interaction", "tool_denied"]
    assert gated.tool_call_count == 1 and gated.tools == ["write_file"]


def test_it_digests_every_new_trace_of_an_agent_incrementally(masher, tmp_path):
    first, second = trace(masher, tmp_path, "a"), trace(masher, tmp_path, "b", session_id="s2")
    masher.run({"script": ["helper answer"]}, agent_id="helper")  # another agent's trace: not collected
    run = run_workflow(masher, TRACE_DIGEST_WORKFLOW, mode="incremental", agent_id="primary")
    expected = [str(first.trace_id), str(second.trace_id)]
    assert task_output(run) == {"mode": "incremental", "saved": 2, "trace_ids": expected}
    assert sorted(str(t) for t in TraceDigest.objects.values_list("trace_id", flat=True)) == sorted(expected)
    assert set(TraceDigest.objects.values_list("mode", flat=True)) == {"incremental"}
    checkpoint = MasherCheckpoint.objects.get(agent_id="primary", kind="digest")
    assert checkpoint.last_trace_id == second.trace_id and checkpoint.processed_count == 2

    # Nothing new: the next run saves nothing and leaves the checkpoint where it was.
    again = run_workflow(masher, TRACE_DIGEST_WORKFLOW, mode="incremental", agent_id="primary")
    assert task_output(again) == {"mode": "incremental", "saved": 0, "trace_ids": []}
    assert masher_tool_results(again) == [("masher_collect", False)]
    assert TraceDigest.objects.count() == 2
    assert MasherCheckpoint.objects.get(pk=checkpoint.pk).last_trace_id == second.trace_id
    # The task's previous state reached the second run's message.
    assert '"saved": 2' in Request.objects.get(workflow_run_id=again.pk).message

    # A new trace is digested by the next run, alone. Masher's own task traces never are.
    third = trace(masher, tmp_path, "c")
    latest = run_workflow(masher, TRACE_DIGEST_WORKFLOW, mode="incremental", agent_id="primary")
    assert task_output(latest) == {"mode": "incremental", "saved": 1, "trace_ids": [str(third.trace_id)]}
    assert TraceDigest.objects.count() == 3
    assert not TraceDigest.objects.filter(agent_id=MASHER_AGENT_ID).exists()
    assert MasherCheckpoint.objects.get(pk=checkpoint.pk).last_trace_id == third.trace_id


def test_incremental_save_digests_every_pending_trace_up_to_the_newest_summarised(masher, tmp_path):
    first, second, third = (trace(masher, tmp_path, x) for x in "abc")
    page = collect("incremental", agent_id="primary", limit=1)
    assert [t["trace_id"] for t in page["traces"]] == [str(first.trace_id)] and page["remaining"] == 2
    assert page["checkpoint"] is None and page["traces"][0]["tools"] == ["append_line"]
    result = save_digests([{"trace_id": str(second.trace_id), "summary": "the second"}], mode="incremental",
                          agent_id="primary")
    # The first was left out by the model: it still gets a digest, with a summary from the facts.
    assert result["trace_ids"] == [str(first.trace_id), str(second.trace_id)]
    assert result["automatic_summaries"] == [str(first.trace_id)]
    assert TraceDigest.objects.get(trace_id=first.trace_id).summary.startswith("completed after 2 step(s)")
    assert TraceDigest.objects.get(trace_id=second.trace_id).summary == "the second"
    assert MasherCheckpoint.objects.get(kind="digest").last_trace_id == second.trace_id
    run = run_workflow(masher, TRACE_DIGEST_WORKFLOW, mode="incremental", agent_id="primary", limit=5)
    assert task_output(run)["trace_ids"] == [str(third.trace_id)]


def test_bad_arguments_are_error_results_not_crashes(masher, tmp_path):
    req = trace(masher, tmp_path)
    running = masher.submit({"script": ["later"]})  # accepted, not drained: not finished

    def call(tool_cls, **args):
        return asyncio.run(tool_cls().execute(args))

    cases = [
        (CollectTool, {"mode": "everything"}, "mode must be one of"),
        (CollectTool, {"mode": "trace"}, "needs trace_id"),
        (CollectTool, {"mode": "trace", "trace_id": "not-a-uuid"}, "not a trace id"),
        (CollectTool, {"mode": "trace", "trace_id": "00000000-0000-0000-0000-000000000000"}, "unknown trace"),
        (CollectTool, {"mode": "trace", "trace_id": str(masher.request(running).trace_id)}, "has not finished"),
        (CollectTool, {"mode": "incremental"}, "needs agent_id"),
        (CollectTool, {"mode": "incremental", "agent_id": "ghost"}, "unknown agent"),
        (CollectTool, {"mode": "incremental", "agent_id": "masher"}, "its own traces"),
        (CollectTool, {"mode": "incremental", "agent_id": "primary", "limit": 0}, "limit must be"),
        (CollectTool, {"mode": "trace", "trace_id": str(req.trace_id), "purpose": "x"}, "purpose must be"),
        (CollectTool, {"mode": "trace", "bogus": 1}, "unknown argument"),
        (SaveDigestsTool, {"digests": "nope"}, "must be a list"),
        (SaveDigestsTool, {"digests": [{"trace_id": str(req.trace_id)}]}, "non-empty summary"),
        (SaveDigestsTool, {"digests": [{"trace_id": str(req.trace_id), "summary": "s"}], "run_id": "r:1"},
         "unknown run_id"),
        (SaveDigestsTool, {"digests": [{"trace_id": str(req.trace_id), "summary": "s"}], "mode": "incremental",
                           "agent_id": "helper"}, "do not belong"),
        (SaveEvalsTool, {"trace_ids": ["00000000-0000-0000-0000-000000000000"]}, "unknown trace"),
    ]
    for tool_cls, args, message in cases:
        result = call(tool_cls, **args)
        assert result.is_error and message in result.content, (args, result.content)
    assert not TraceDigest.objects.exists() and not EvalRecord.objects.exists()
    assert not MasherCheckpoint.objects.exists()
    ok = call(CollectTool, mode="trace", trace_id=str(req.pk))  # a request id finds its trace too
    assert not ok.is_error and json.loads(ok.content)["traces"][0]["trace_id"] == str(req.trace_id)

    # Through the workflow, an unknown trace is reported to the model and the run still completes.
    run = run_workflow(masher, TRACE_DIGEST_WORKFLOW, mode="trace", trace_id="00000000-0000-0000-0000-000000000000")
    assert task_output(run) == {"mode": "trace", "saved": 0, "trace_ids": []}
    assert masher_tool_results(run) == [("masher_collect", True)]


# -- masher-online-eval-curation -------------------------------------------------------------


def test_it_curates_one_trace_into_an_eval_record(masher, tmp_path):
    req = trace(masher, tmp_path)
    run = run_workflow(masher, EVAL_CURATION_WORKFLOW, mode="trace", trace_id=str(req.trace_id))
    assert task_output(run) == {"mode": "trace", "saved": 1, "trace_ids": [str(req.trace_id)]}
    record = EvalRecord.objects.get()
    assert record.user_message == req.message and json.loads(record.user_message)["script"][-1] == "appended a"
    assert record.answer == "appended a" == req.response["text"]
    assert record.tools == [{"name": "append_line", "arguments": {"path": str(tmp_path / "out.txt"), "line": "a"},
                             "is_error": False}]
    assert (record.input_tokens, record.output_tokens, record.total_tokens) == (
        req.input_tokens, req.output_tokens, req.total_tokens)
    assert record.status == "completed" and record.run_id == run.pk and record.request_id == req.pk
    assert not TraceDigest.objects.exists()

    failed = masher.run({"script": ["x"], "llm_error": {"marker": str(tmp_path / "m"), "times": 9,
                                                        "transient": False}})
    refused = run_workflow(masher, EVAL_CURATION_WORKFLOW, mode="trace", trace_id=str(failed.trace_id))
    assert task_output(refused)["saved"] == 0 and masher_tool_results(refused) == [("masher_collect", True)]
    assert EvalRecord.objects.count() == 1


def test_it_curates_every_new_completed_trace_incrementally(masher, tmp_path):
    first = trace(masher, tmp_path, "a")
    masher.run({"script": ["x"], "llm_error": {"marker": str(tmp_path / "m"), "times": 9, "transient": False}})
    second = masher.run({"script": ["just text"]}, session_id="s2")
    run = run_workflow(masher, EVAL_CURATION_WORKFLOW, mode="incremental", agent_id="primary")
    expected = [str(first.trace_id), str(second.trace_id)]
    assert task_output(run) == {"mode": "incremental", "saved": 2, "trace_ids": expected}
    records = {str(r.trace_id): r for r in EvalRecord.objects.all()}
    assert set(records) == set(expected)  # the failed trace is no eval case
    plain = records[str(second.trace_id)]
    assert plain.tools == [] and plain.answer == "just text" and plain.total_tokens == second.total_tokens > 0
    assert [t["name"] for t in records[str(first.trace_id)].tools] == ["append_line"]
    checkpoint = MasherCheckpoint.objects.get(agent_id="primary", kind="eval")
    assert checkpoint.last_trace_id == second.trace_id
    assert not MasherCheckpoint.objects.filter(kind="digest").exists()  # each workflow keeps its own

    again = run_workflow(masher, EVAL_CURATION_WORKFLOW, mode="incremental", agent_id="primary")
    assert task_output(again) == {"mode": "incremental", "saved": 0, "trace_ids": []}
    assert EvalRecord.objects.count() == 2

    third = trace(masher, tmp_path, "c")
    latest = run_workflow(masher, EVAL_CURATION_WORKFLOW, mode="incremental", agent_id="primary")
    assert task_output(latest)["trace_ids"] == [str(third.trace_id)]
    assert EvalRecord.objects.count() == 3
    # The digest workflow has its own checkpoint: it still sees all four traces.
    digests = run_workflow(masher, TRACE_DIGEST_WORKFLOW, mode="incremental", agent_id="primary")
    assert task_output(digests)["saved"] == 4


# -- export and admin -------------------------------------------------------------------------


def test_it_exports_jsonl_only_when_enabled(masher, settings, tmp_path):
    req = trace(masher, tmp_path)
    out_dir = settings.DATA_DIR / "masher"
    run_workflow(masher, TRACE_DIGEST_WORKFLOW, mode="trace", trace_id=str(req.trace_id))
    run_workflow(masher, EVAL_CURATION_WORKFLOW, mode="trace", trace_id=str(req.trace_id))
    assert not out_dir.exists()

    settings.MASH_MASHER_EXPORT = True
    other = trace(masher, tmp_path, "b")
    run_workflow(masher, TRACE_DIGEST_WORKFLOW, mode="incremental", agent_id="primary")
    run = run_workflow(masher, EVAL_CURATION_WORKFLOW, mode="trace", trace_id=str(other.trace_id))
    digest_lines = [json.loads(line) for line in (out_dir / DIGESTS_FILE).read_text().splitlines()]
    assert [d["trace_id"] for d in digest_lines] == [str(req.trace_id), str(other.trace_id)]
    assert digest_lines[1]["summary"] == summary_for({"status": "completed", "tool_call_count": 1})
    assert digest_lines[1]["total_tokens"] == other.total_tokens and digest_lines[1]["record"] == "trace_digest"
    eval_lines = [json.loads(line) for line in (out_dir / EVALS_FILE).read_text().splitlines()]
    assert len(eval_lines) == 1 and eval_lines[0]["trace_id"] == str(other.trace_id)
    assert eval_lines[0]["user_message"] == other.message and eval_lines[0]["answer"] == "appended b"
    assert eval_lines[0]["run_id"] == run.pk and [t["name"] for t in eval_lines[0]["tools"]] == ["append_line"]
    # Appending: a second save adds lines, it never rewrites the file.
    run_workflow(masher, EVAL_CURATION_WORKFLOW, mode="trace", trace_id=str(req.trace_id))
    assert len((out_dir / EVALS_FILE).read_text().splitlines()) == 2


def test_the_admin_lists_masher_records(masher, admin_client, tmp_path):
    req = trace(masher, tmp_path)
    run_workflow(masher, TRACE_DIGEST_WORKFLOW, mode="incremental", agent_id="primary")
    run_workflow(masher, EVAL_CURATION_WORKFLOW, mode="trace", trace_id=str(req.trace_id))
    for model, needle in (("tracedigest", str(req.trace_id)), ("evalrecord", str(req.trace_id)),
                          ("mashercheckpoint", "primary")):
        page = admin_client.get(f"/admin/masher/{model}/")
        assert page.status_code == 200, model
        assert needle in page.content.decode(), model
    digest = TraceDigest.objects.get()
    detail = admin_client.get(f"/admin/masher/tracedigest/{digest.pk}/change/")
    assert detail.status_code == 200 and "Scripted summary" in detail.content.decode()
    assert admin_client.get("/admin/masher/tracedigest/add/").status_code == 403
