"""OpenTelemetry export (mash_telemetry/otel.py): each finished request becomes one trace whose
spans follow the GenAI semantic conventions, built from the request's stored events.

Requests run through the in-process engine; spans go to the SDK's in-memory exporter or,
through the real OTLP/HTTP exporter and batch processor, to a collector on loopback.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mash_runtime.models import Interaction, Request
from mash_runtime.services import answer_interaction
from mash_telemetry import otel
from tests.runtime.conftest import engine  # noqa: F401  (the in-process engine fixture)

REPO = Path(__file__).resolve().parents[2]


def tool(name, **arguments):
    return {"name": name, "arguments": arguments}


@pytest.fixture(autouse=True)
def fresh_stats(monkeypatch):
    monkeypatch.setattr(otel, "stats", otel.Stats())
    for name in otel.ENDPOINT_VARIABLES + ("OTEL_SDK_DISABLED", otel.CAPTURE_CONTENT):
        monkeypatch.delenv(name, raising=False)
    yield
    otel.uninstall()


@pytest.fixture
def memory_exporter():
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    spans = InMemorySpanExporter()
    otel.install(otel.Exporter(spans, batch=False, background=False))
    return spans


def by_name(spans) -> dict:
    found = {}
    for span in spans:
        found.setdefault(span.name, []).append(span)
    return found


def parent_of(span, spans):
    if span.parent is None:
        return None
    return next((s for s in spans if s.context.span_id == span.parent.span_id), None)


def run_with_subagent(engine, tmp_path):  # noqa: F811
    """A request that calls a tool, then a subagent that asks a question (answered), then answers."""
    child = {"script": [{"text": "Asking.", "tool_calls": [tool("AskUser", question="Which file?")]}, "helper done"]}
    rid = engine.submit({"script": [
        {"text": "Writing it down.", "tool_calls": [tool("append_line", path=str(tmp_path / "out"), line="x")]},
        {"tool_calls": [tool("InvokeSubagent", agent_id="helper", prompt=json.dumps(child))]},
        "All done.",
    ]}, session_id="otel-session")
    engine.drain()
    asked = Interaction.objects.get(status="pending")
    answer_interaction(rid, asked.interaction_id, "README.md")
    engine.drain()
    assert Request.objects.get(pk=rid).status == "completed"
    return rid


def test_a_finished_request_becomes_one_trace_of_steps_llm_calls_and_tool_calls(
        engine, memory_exporter, tmp_path):  # noqa: F811
    rid = run_with_subagent(engine, tmp_path)
    req = Request.objects.select_related("session").get(pk=rid)
    child = Request.objects.get(parent=req)
    spans = list(memory_exporter.get_finished_spans())
    names = by_name(spans)

    # One trace: the parent request's, with the subagent's request inside it.
    assert {s.context.trace_id for s in spans} == {req.trace_id.int}
    roots = [s for s in spans if s.parent is None]
    assert [r.name for r in roots] == ["invoke_agent primary"]
    root = roots[0]
    assert root.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert root.attributes["gen_ai.agent.name"] == "primary"
    assert root.attributes["gen_ai.conversation.id"] == "otel-session"
    assert root.attributes["gen_ai.usage.input_tokens"] == req.input_tokens
    assert root.attributes["gen_ai.usage.output_tokens"] == req.output_tokens
    assert root.attributes["mash.request.id"] == str(req.pk)
    assert root.attributes["mash.request.status"] == "completed"

    # Steps under the request; an LLM call per step under its step.
    steps = [s for s in spans if s.name.startswith("step ") and parent_of(s, spans) is root]
    assert sorted(s.name for s in steps) == ["step 1", "step 2", "step 3"]
    chats = [s for s in names["chat scripted"] if s.attributes["gen_ai.agent.name"] == "primary"]
    assert len(chats) == 3
    for chat in chats:
        assert parent_of(chat, spans).name.startswith("step ")
        assert chat.kind.name == "CLIENT"
        assert chat.attributes["gen_ai.operation.name"] == "chat"
        assert chat.attributes["gen_ai.provider.name"] == "mash.scripted"
        assert chat.attributes["gen_ai.request.model"] == "scripted"
        assert chat.attributes["gen_ai.usage.input_tokens"] > 0
        assert chat.attributes["gen_ai.usage.output_tokens"] > 0
        assert chat.attributes["gen_ai.conversation.id"] == "otel-session"
    assert sum(c.attributes["gen_ai.usage.output_tokens"] for c in chats) == req.output_tokens

    # Tool calls under their step, named by the tool.
    append = names["execute_tool append_line"][0]
    assert parent_of(append, spans).name == "step 1"
    assert append.attributes["gen_ai.operation.name"] == "execute_tool"
    assert append.attributes["gen_ai.tool.name"] == "append_line"
    assert append.attributes["gen_ai.tool.call.id"]
    assert "gen_ai.tool.call.arguments" not in append.attributes  # content is opt-in
    invoke = names["execute_tool InvokeSubagent"][0]
    assert parent_of(invoke, spans).name == "step 2"
    assert invoke.attributes["mash.subagent.request_id"] == str(child.pk)

    # The subagent's request hangs under the call that started it, with its own steps and tools.
    helper = names["invoke_agent helper"][0]
    assert parent_of(helper, spans) is invoke
    assert helper.attributes["gen_ai.agent.name"] == "helper"
    assert helper.attributes["mash.parent_request.id"] == str(req.pk)
    ask = names["execute_tool AskUser"][0]
    assert parent_of(parent_of(ask, spans), spans) is helper
    # Its question is a wait for input, in the helper's request and surfaced to the parent.
    waits = names["await_input info"]
    assert {parent_of(w, spans).name for w in waits} == {"invoke_agent primary", "invoke_agent helper"}

    # Children inside their parents, on the time axis too.
    for span in spans:
        parent = parent_of(span, spans)
        if parent is not None:
            assert parent.start_time <= span.start_time <= span.end_time <= parent.end_time, span.name
    assert otel.stats.requests == 2 and otel.stats.export_failures == 0


def test_failed_requests_carry_an_error_status_and_type(engine, memory_exporter, tmp_path):  # noqa: F811
    rid = engine.submit({"llm_error": {"marker": str(tmp_path / "m"), "times": 9, "transient": False},
                         "script": ["x"]}, session_id="bad")
    engine.drain()
    req = Request.objects.get(pk=rid)
    assert req.status == "failed"
    (root,) = [s for s in memory_exporter.get_finished_spans() if s.parent is None]
    assert root.status.status_code.name == "ERROR"
    assert root.attributes["error.type"] == req.error_code
    assert root.attributes["mash.request.status"] == "failed"


def test_tool_content_is_exported_only_when_asked(engine, memory_exporter, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv(otel.CAPTURE_CONTENT, "true")
    engine.run({"script": [{"tool_calls": [tool("append_line", path=str(tmp_path / "o"), line="secret-ish")]},
                           "ok"]}, session_id="content")
    (call,) = [s for s in memory_exporter.get_finished_spans() if s.name == "execute_tool append_line"]
    assert "secret-ish" in call.attributes["gen_ai.tool.call.arguments"]
    assert call.attributes["gen_ai.tool.call.result"] == "appended secret-ish"


def test_structured_output_calls_and_workflow_tasks_are_spans_too(engine, memory_exporter, settings):  # noqa: F811
    from mash_runtime.host import get_host, set_host
    from mash_runtime.host_sync import sync_host
    from mash_runtime.workflows.engine import start_run

    settings.MASH_HOST_APP = "tests.apps.workflow_host:build_host"
    set_host(None)
    sync_host(get_host())
    run = start_run("count-and-report", input={"step": 2})
    engine.drain()
    roots = [s for s in memory_exporter.get_finished_spans() if s.parent is None]
    assert sorted(r.name for r in roots) == ["invoke_agent counter", "invoke_agent reporter"]
    for root in roots:
        assert root.attributes["mash.workflow.run_id"] == run["run_id"]
        assert root.attributes["mash.workflow.id"] == "count-and-report"
    assert {r.attributes["mash.workflow.task_id"] for r in roots} == {"count", "report"}
    structured = [s for s in memory_exporter.get_finished_spans()
                  if s.attributes.get("mash.llm.purpose") == "structured"]
    assert len(structured) == 2 and all(s.attributes["gen_ai.operation.name"] == "chat" for s in structured)


# -- through the real OTLP/HTTP exporter and batch processor ---------------------------------------


class Collector:
    """An OTLP/HTTP receiver on loopback: keeps every ExportTraceServiceRequest it is sent."""

    def __init__(self, status: int = 200):
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        self.requests: list = []
        self.paths: list[str] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                collector.paths.append(self.path)
                if status == 200:
                    message = ExportTraceServiceRequest()
                    message.ParseFromString(body)
                    collector.requests.append(message)
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def spans(self) -> list:
        return [span for message in self.requests for rs in message.resource_spans for ss in rs.scope_spans
                for span in ss.spans]

    def resources(self) -> list[dict]:
        return [{kv.key: kv.value.string_value for kv in rs.resource.attributes}
                for message in self.requests for rs in message.resource_spans]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def attributes(span) -> dict:
    out = {}
    for kv in span.attributes:
        value = kv.value
        out[kv.key] = value.string_value or value.int_value or value.bool_value or [
            v.string_value for v in value.array_value.values]
    return out


@pytest.fixture
def collector():
    running = Collector()
    yield running
    running.close()


def test_the_batch_exporter_delivers_otlp_http_to_a_collector(engine, collector, monkeypatch, tmp_path):  # noqa: F811
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "mash-under-test")
    assert otel.install_from_environment()
    rid = engine.run({"script": [{"tool_calls": [tool("append_line", path=str(tmp_path / "o"), line="x")]}, "done"]},
                     session_id="otlp").pk
    assert otel.exporter().flush(timeout=30)
    assert collector.paths and set(collector.paths) == {"/v1/traces"}
    spans = collector.spans()
    names = sorted(s.name for s in spans)
    assert names == ["chat scripted", "chat scripted", "execute_tool append_line", "invoke_agent primary",
                     "step 1", "step 2"]
    req = Request.objects.get(pk=rid)
    assert {s.trace_id for s in spans} == {req.trace_id.bytes}
    by = {s.name: s for s in spans}
    root = by["invoke_agent primary"]
    assert root.parent_span_id == b""
    assert by["step 1"].parent_span_id == root.span_id
    assert by["execute_tool append_line"].parent_span_id == by["step 1"].span_id
    chat_attrs = attributes(next(s for s in spans if s.name == "chat scripted"))
    assert chat_attrs["gen_ai.operation.name"] == "chat"
    assert chat_attrs["gen_ai.provider.name"] == "mash.scripted"
    assert chat_attrs["gen_ai.request.model"] == "scripted"
    assert chat_attrs["gen_ai.usage.input_tokens"] > 0 and chat_attrs["gen_ai.usage.output_tokens"] > 0
    assert chat_attrs["gen_ai.conversation.id"] == "otlp"
    assert chat_attrs["gen_ai.agent.name"] == "primary"
    assert attributes(by["execute_tool append_line"])["gen_ai.tool.name"] == "append_line"
    assert {r["service.name"] for r in collector.resources()} == {"mash-under-test"}


def test_export_failures_never_fail_requests_and_are_logged_once(engine, monkeypatch, caplog, tmp_path):  # noqa: F811
    refusing = Collector(status=400)
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", refusing.endpoint)
        assert otel.install_from_environment()
        caplog.set_level(logging.WARNING)
        for i in range(3):
            assert engine.run({"script": [f"answer {i}"]}, session_id=f"refused-{i}").status == "completed"
            otel.exporter().flush(timeout=30)  # one batch per request: three failed exports
        assert len(refusing.paths) == 3
        assert otel.stats.export_failures == 3 and otel.stats.requests == 3
        ours = [r for r in caplog.records if r.name == "mash_telemetry.otel"]
        assert len(ours) == 1 and "failed" in ours[0].getMessage()
        theirs = [r for r in caplog.records if r.name.startswith("opentelemetry")]
        assert len(theirs) <= 1
    finally:
        refusing.close()


def test_a_broken_exporter_or_span_builder_never_fails_a_request(engine, monkeypatch, caplog):  # noqa: F811
    from opentelemetry.sdk.trace.export import SpanExporter

    class Raising(SpanExporter):
        def export(self, spans):
            raise ConnectionError("collector gone")

    otel.install(otel.Exporter(Raising(), batch=False, background=False))
    assert engine.run({"script": ["fine"]}, session_id="raising").status == "completed"
    assert otel.stats.export_failures >= 1
    monkeypatch.setattr(otel, "plan_request", lambda *a, **k: 1 / 0)
    assert engine.run({"script": ["still fine"]}, session_id="broken-builder").status == "completed"
    assert otel.stats.build_failures == 1


def test_without_the_endpoint_nothing_connects_and_opentelemetry_is_not_imported(tmp_path):
    probe = ("import os, sys, django; django.setup(); "
             "from mash_runtime.signals import request_terminal; "
             "print(any(m.startswith('opentelemetry.sdk') for m in sys.modules), bool(request_terminal.receivers))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update({"DJANGO_SETTINGS_MODULE": "mash_project.settings", "MASH_DATA_DIR": str(tmp_path),
                "PYTHONPATH": str(REPO)})
    off = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert off.stdout.split() == ["False", "False"], off.stderr[-2000:]
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://127.0.0.1:9"
    on = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    # Connected, and still not imported: the SDK loads with the first finished request.
    assert on.stdout.split() == ["False", "True"], on.stderr[-2000:]
    env["OTEL_SDK_DISABLED"] = "true"
    disabled = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=120)
    assert disabled.stdout.split() == ["False", "False"], disabled.stderr[-2000:]
