"""OpenTelemetry export: every finished request as a trace, by the GenAI semantic conventions.

Off by default: nothing is exported (and `opentelemetry` is never imported) unless
`OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set and
`OTEL_SDK_DISABLED` is not `true`. Then, when a request reaches a terminal state
(`mash_runtime.signals.request_terminal`, sent by `lifecycle.after_terminal`), its id is
queued for a background thread of this process, which rebuilds the spans from the
request's stored events (they carry the timings) and hands them to the SDK's
`BatchSpanProcessor` and OTLP/HTTP exporter. So exporting never slows a request (the
hook only queues an id) and never fails one (every error is swallowed; a full queue
drops the id, an export failure is counted, and each is logged once per process).

One request is one trace (a subagent's request joins its parent's trace, under the
tool call that started it):

    invoke_agent <agent>         the request, from submit to end (queued time included)
      step <n>                   one loop step of the agent
        chat <model>             the LLM call of the step (tokens, finish reason)
        execute_tool <tool>      each tool call (a subagent call parents the child's trace)
      await_input <type>         an approval or question waiting for its answer
      chat <model>               the structured-output call, when the request had one

Attributes follow the GenAI conventions (`gen_ai.operation.name`, `gen_ai.provider.name`,
`gen_ai.request.model`, `gen_ai.response.model`, `gen_ai.usage.input_tokens`,
`gen_ai.usage.output_tokens`, `gen_ai.conversation.id` = the session id,
`gen_ai.agent.name`, `gen_ai.tool.name`, `gen_ai.tool.call.id`), plus `mash.*` ones (ids,
status, where the time went). Message content is not exported unless
`OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true` (then tool arguments and
results, clipped). The standard `OTEL_*` variables (service name, resource attributes,
headers, timeout, sampler) apply; the service name defaults to `mash`. Span ids are
derived from the request and the step, so a child request exported before its parent
still points at the right parent span; a resumed request that ends again is exported
again (a new root span per attempt, in the same trace).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from mash_runtime.signals import request_terminal

logger = logging.getLogger("mash_telemetry.otel")

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
CAPTURE_CONTENT = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
DEFAULT_SERVICE_NAME = "mash"
# Request ids waiting for the export thread; past this the newest are dropped (and counted).
QUEUE_LIMIT = 10_000
CONTENT_LIMIT = 4096
MAX_EVENTS = 20_000
# Where the SDK and the OTLP exporter log export trouble: their first warning is let through.
EXPORTER_LOGGERS = ("opentelemetry.exporter.otlp.common.http", "opentelemetry.exporter.otlp.proto.http._common",
                    "opentelemetry.sdk.trace.export", "opentelemetry.sdk._shared_internal")


def enabled(environ=None) -> bool:
    env = os.environ if environ is None else environ
    if str(env.get("OTEL_SDK_DISABLED", "")).strip().lower() == "true":
        return False
    return any(str(env.get(name, "")).strip() for name in ENDPOINT_VARIABLES)


# -- counting and logging once -----------------------------------------------------------


@dataclass
class Stats:
    """What this process exported and what it lost (read by tests and operators' shells)."""

    requests: int = 0
    spans: int = 0
    dropped: int = 0  # ids the full queue could not take
    build_failures: int = 0  # requests whose spans could not be built
    export_failures: int = 0  # batches the exporter did not deliver
    logged: set = field(default_factory=set)

    def problem(self, kind: str, message: str, *args) -> None:
        """Count `kind` and log its first occurrence only."""
        setattr(self, kind, getattr(self, kind) + 1)
        if kind not in self.logged:
            self.logged.add(kind)
            logger.warning(message + " (further ones are counted in mash_telemetry.otel.stats, not logged)", *args)


stats = Stats()


class _FirstRecordOnly(logging.Filter):
    """Lets the exporter's first warning through (it names the cause), drops the rest."""

    def __init__(self):
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        if self.seen:
            return False
        self.seen = True
        return True


# -- the plan of a request's spans (plain data, no opentelemetry) --------------------------


@dataclass
class SpanPlan:
    key: str  # unique within the request: "request", "step:0", "llm:0", "tool:tool.0.0", ...
    name: str
    parent: str | None  # another plan's key; None: the root (its parent is `TracePlan.remote_parent`)
    start: float  # epoch seconds
    end: float
    kind: str = "internal"  # internal | client
    attributes: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # a description sets the span's status to ERROR


@dataclass
class TracePlan:
    trace_id: int  # 128 bits
    attempt: int
    request_id: str
    remote_parent: int | None  # span id of the parent request's tool-call span, for a subagent request
    spans: list[SpanPlan]

    def span(self, key: str) -> SpanPlan | None:
        return next((s for s in self.spans if s.key == key), None)


def span_id(request_id, attempt: int, key: str) -> int:
    digest = hashlib.blake2b(f"{request_id}:{attempt}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") or 1


# The runtime's provider names (`LLMProvider.provider`, in `llm.request.complete`) by the
# conventions' well-known values.
PROVIDERS = {"anthropic": "anthropic", "openai": "openai", "openai-chat": "openai", "gemini": "gcp.gemini",
             "scripted": "mash.scripted"}


def provider_name(model: str, provider: str = "") -> str:
    """`gen_ai.provider.name`: from the provider the event names, else guessed from the model
    name (events stored before they named it)."""
    if provider:
        return PROVIDERS.get(provider, provider)
    name = (model or "").lower()
    for prefix, provider in (("claude", "anthropic"), ("gpt", "openai"), ("chatgpt", "openai"), ("o1", "openai"),
                             ("o3", "openai"), ("o4", "openai"), ("gemini", "gcp.gemini"), ("mistral", "mistral_ai"),
                             ("command", "cohere"), ("deepseek", "deepseek"), ("grok", "x_ai")):
        if name.startswith(prefix):
            return provider
    if name == "scripted":
        return "mash.scripted"
    return "unknown"


def _clip(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str, sort_keys=True)
    return text if len(text) <= CONTENT_LIMIT else text[: CONTENT_LIMIT - 1] + "…"


def plan_request(request_id, *, capture_content: bool | None = None) -> TracePlan | None:
    """The spans of one request, from its row, its stored events and its children's rows."""
    from mash_runtime.models import Request, RuntimeEvent, WorkflowTaskRun
    from mash_telemetry.page_data import MARK_TYPES, split_time

    if capture_content is None:
        capture_content = str(os.environ.get(CAPTURE_CONTENT, "")).strip().lower() == "true"
    req = Request.objects.select_related("agent", "session").filter(pk=request_id).first()
    if req is None:
        return None
    events = list(RuntimeEvent.objects.filter(request=req).exclude(event_type__startswith="subagent.")
                  .order_by("seq")[:MAX_EVENTS])
    agent_id = req.agent.agent_id
    conversation = req.session.session_id
    common = {"gen_ai.agent.name": agent_id, "gen_ai.conversation.id": conversation}
    configured_model = req.agent.model_name or ""

    # The trace: the top of the request's family; a subagent request hangs under its call.
    root, remote_parent = req, None
    if req.parent_id:
        parent = Request.objects.only("id", "parent_id", "trace_id", "run_attempt").filter(pk=req.parent_id).first()
        if parent is not None:
            step = str((req.metadata or {}).get("parent_step") or "")
            remote_parent = span_id(parent.pk, parent.run_attempt, f"tool:{step}")
            root = parent
            for _ in range(16):
                if not root.parent_id:
                    break
                up = Request.objects.only("id", "parent_id", "trace_id").filter(pk=root.parent_id).first()
                if up is None:
                    break
                root = up
    children = {str((c.metadata or {}).get("parent_step") or ""): c
                for c in Request.objects.filter(parent=req).only("id", "created_at", "finished_at", "metadata",
                                                                 "status")}

    created = req.created_at.timestamp()
    last = max([created, *(e.created_at for e in events)])
    end = req.finished_at.timestamp() if req.finished_at else last
    spans: list[SpanPlan] = []
    llm_usage: dict[Any, dict] = {}
    steps: dict[int, SpanPlan] = {}
    interactions: dict[str, SpanPlan] = {}

    def step_span(index: int, at: float) -> SpanPlan:
        if index not in steps:
            steps[index] = SpanPlan(f"step:{index}", f"step {index + 1}", "request", at, at,
                                    attributes={**common, "mash.step.index": index})
            spans.append(steps[index])
        return steps[index]

    def llm_attributes(usage: dict, model: str) -> dict[str, Any]:
        attributes = {
            **common,
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": provider_name(model or configured_model, str(usage.get("provider") or "")),
            "gen_ai.request.model": configured_model or model,
            "gen_ai.response.model": model or configured_model,
            "gen_ai.usage.input_tokens": int(usage.get("input_tokens") or 0),
            "gen_ai.usage.output_tokens": int(usage.get("output_tokens") or 0),
        }
        if usage.get("cache_read_tokens"):
            attributes["gen_ai.usage.cache_read.input_tokens"] = int(usage["cache_read_tokens"])
        if usage.get("cache_write_tokens"):
            attributes["gen_ai.usage.cache_creation.input_tokens"] = int(usage["cache_write_tokens"])
        if usage.get("stop_reason"):
            attributes["gen_ai.response.finish_reasons"] = (str(usage["stop_reason"]),)
        return attributes

    for event in events:
        p = event.payload if isinstance(event.payload, dict) else {}
        kind, at = event.event_type, float(event.created_at)
        if kind == "llm.request.complete":
            if event.loop_index is None:
                model = str(p.get("model") or "")
                start = at - float(p.get("duration_ms") or 0) / 1000
                spans.append(SpanPlan(f"llm:{event.step_key or event.seq}", f"chat {model or configured_model}",
                                      "request", start, at, kind="client",
                                      attributes={**llm_attributes(p, model),
                                                  "mash.llm.purpose": event.step_key or "extra"}))
            else:
                llm_usage[event.loop_index] = p
        elif kind == "runtime.llm.think.completed" and event.loop_index is not None:
            index = event.loop_index
            usage = dict(llm_usage.get(index) or {})
            if not usage:
                tokens = p.get("token_usage") or {}
                usage = {"input_tokens": tokens.get("input"), "output_tokens": tokens.get("output"),
                         "stop_reason": p.get("stop_reason")}
            model = str(usage.get("model") or "")
            # The call's own duration (newer events carry it) or the think step's.
            start = at - float(usage.get("duration_ms") or p.get("duration_ms") or 0) / 1000
            step = step_span(index, start)
            step.attributes["mash.step.action_type"] = str(p.get("action_type") or "")
            spans.append(SpanPlan(f"llm:{index}", f"chat {model or configured_model}", step.key, start, at,
                                  kind="client", attributes=llm_attributes(usage, model)))
            step.start, step.end = min(step.start, start), max(step.end, at)
        elif kind in ("runtime.tool.call.completed", "runtime.subagent.call.completed"):
            parts = event.step_key.split(".")
            index = event.loop_index if event.loop_index is not None else (
                int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else 0)
            result = p.get("result") if isinstance(p.get("result"), dict) else {}
            start = at - float(p.get("duration_ms") or 0) / 1000
            child = children.get(event.step_key)
            if child is not None:
                start = min(start, child.created_at.timestamp())
            step = step_span(index, start)
            name = str(p.get("tool_name") or "?")
            attributes = {**common, "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name,
                          "gen_ai.tool.call.id": str(p.get("tool_call_id") or ""), "gen_ai.tool.type": "function"}
            if child is not None:
                attributes["mash.subagent.request_id"] = str(child.pk)
            if capture_content:
                attributes["gen_ai.tool.call.arguments"] = _clip(p.get("arguments", {}))
                attributes["gen_ai.tool.call.result"] = _clip(result.get("content", ""))
            error = None
            if result.get("is_error"):
                error = _clip(result.get("content", "tool error"))[:200]
                attributes["error.type"] = "tool_error"
            spans.append(SpanPlan(f"tool:{event.step_key}", f"execute_tool {name}", step.key, start, at,
                                  attributes=attributes, error=error))
            step.start, step.end = min(step.start, start), max(step.end, at)
        elif kind == "runtime.step.completed" and event.loop_index is not None:
            start = at - float(p.get("duration_ms") or 0) / 1000
            step = step_span(event.loop_index, start)
            step.start, step.end = min(step.start, start), max(step.end, at)
            step.attributes["mash.step.action_type"] = str(p.get("action_type") or "")
        elif kind == "request.interaction.create":
            itr = str(p.get("interaction_id") or event.seq)
            interactions[itr] = SpanPlan(f"input:{itr}", f"await_input {p.get('type') or 'answer'}", "request", at,
                                         end, attributes={**common, "mash.interaction.id": itr,
                                                          "mash.interaction.type": str(p.get("type") or "")})
            if p.get("subagent_request_id"):
                interactions[itr].attributes["mash.subagent.request_id"] = str(p["subagent_request_id"])
            spans.append(interactions[itr])
        elif kind == "request.interaction.ack":
            itr = str(p.get("interaction_id") or "")
            if itr in interactions:
                interactions[itr].end = at
                interactions[itr].attributes["mash.interaction.timed_out"] = bool(p.get("timed_out"))

    providers = [str(u.get("provider")) for u in llm_usage.values() if u.get("provider")]
    marks = [(e.event_type, e.created_at) for e in events if e.event_type in MARK_TYPES]
    split = split_time(req, marks, now=None)
    root_attributes = {
        **common,
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.id": agent_id,
        "gen_ai.provider.name": provider_name(configured_model, providers[0] if providers else ""),
        "gen_ai.request.model": configured_model,
        "gen_ai.usage.input_tokens": int(req.input_tokens),
        "gen_ai.usage.output_tokens": int(req.output_tokens),
        "mash.request.id": str(req.pk),
        "mash.trace_id": str(req.trace_id),
        "mash.request.status": req.status,
        "mash.request.attempt": int(req.run_attempt),
        "mash.request.steps": len(steps),
        "mash.time.queued_ms": split.queued_ms,
        "mash.time.session_wait_ms": split.session_ms,
        "mash.time.running_ms": split.running_ms,
        "mash.time.input_wait_ms": split.input_ms,
    }
    if req.cache_read_tokens:
        root_attributes["gen_ai.usage.cache_read.input_tokens"] = int(req.cache_read_tokens)
    if req.cache_write_tokens:
        root_attributes["gen_ai.usage.cache_creation.input_tokens"] = int(req.cache_write_tokens)
    if req.parent_id:
        root_attributes["mash.parent_request.id"] = str(req.parent_id)
    if req.workflow_run_id:
        task = WorkflowTaskRun.objects.filter(request=req).values("task_id", "index").first() or {}
        root_attributes["mash.workflow.run_id"] = str(req.workflow_run_id)
        root_attributes["mash.workflow.id"] = str((req.metadata or {}).get("workflow_id") or "")
        if task:
            root_attributes["mash.workflow.task_id"] = str(task["task_id"])
    error = None
    if req.status == Request.Status.FAILED:
        error = (req.error or "failed")[:500]
        root_attributes["error.type"] = req.error_code or "failed"
    elif req.status == Request.Status.CANCELLED:
        root_attributes["error.type"] = "cancelled"
    suffix = f" (attempt {req.run_attempt + 1})" if req.run_attempt else ""
    spans.insert(0, SpanPlan("request", f"invoke_agent {agent_id}{suffix}", None, created, max(end, created),
                             attributes=root_attributes, error=error))
    for span in spans:  # nothing outside its request, nothing ending before it starts
        span.start = min(max(span.start, created), end)
        span.end = min(max(span.end, span.start), max(end, span.start))
    return TracePlan(trace_id=root.trace_id.int, attempt=req.run_attempt, request_id=str(req.pk),
                     remote_parent=remote_parent, spans=spans)


# -- the SDK side (imported only when export is on) --------------------------------------------


class Exporter:
    """This process's tracer provider, span processor and exporter (the export thread is
    the module's: `submit`).

    `span_exporter` replaces the OTLP/HTTP exporter (tests pass the SDK's in-memory one);
    `batch=False` uses a simple span processor and `background=False` exports in the
    caller's thread (both for tests only).
    """

    def __init__(self, span_exporter=None, *, batch: bool = True, background: bool = True):
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        resource = Resource.create({})
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": DEFAULT_SERVICE_NAME}))
        if span_exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            span_exporter = OTLPSpanExporter()
        self.quiet = _FirstRecordOnly()
        self.quiet_loggers = {type(span_exporter).__module__, *EXPORTER_LOGGERS}
        for name in self.quiet_loggers:
            logging.getLogger(name).addFilter(self.quiet)
        self.span_exporter = span_exporter
        self.ids = _planned_ids()
        # Our own provider, never the global one: a host app's OpenTelemetry setup is left alone.
        self.provider = TracerProvider(resource=resource, id_generator=self.ids, shutdown_on_exit=True)
        wrapped = _counting(span_exporter)
        self.provider.add_span_processor(BatchSpanProcessor(wrapped) if batch else SimpleSpanProcessor(wrapped))
        self.tracer = self.provider.get_tracer("mash_telemetry.otel")
        self.background = background

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the queued requests are built and their spans handed to the exporter."""
        deadline = time.monotonic() + timeout
        if not _queue_drained(deadline):
            return False
        return self.provider.force_flush(int(max(deadline - time.monotonic(), 0.001) * 1000))

    def shutdown(self) -> None:
        self.flush(5)
        self.provider.shutdown()
        for name in self.quiet_loggers:
            logging.getLogger(name).removeFilter(self.quiet)

    # -- building spans -------------------------------------------------------------------

    def export_request(self, request_id) -> int:
        """Build one request's spans and hand them to the processor; returns how many."""
        try:
            plan = plan_request(request_id)
        except Exception as exc:
            stats.problem("build_failures", "OpenTelemetry spans of request %s could not be built: %s", request_id,
                          exc)
            return 0
        if plan is None:
            return 0
        count = self.emit(plan)
        stats.requests += 1
        stats.spans += count
        return count

    def emit(self, plan: TracePlan) -> int:
        from opentelemetry import trace
        from opentelemetry.context import Context
        from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

        kinds = {"internal": SpanKind.INTERNAL, "client": SpanKind.CLIENT}
        ids = {span.key: span_id(plan.request_id, plan.attempt, span.key) for span in plan.spans}
        flags = TraceFlags(TraceFlags.SAMPLED)
        if plan.remote_parent is not None:
            root_context = trace.set_span_in_context(NonRecordingSpan(SpanContext(
                trace_id=plan.trace_id, span_id=plan.remote_parent, is_remote=True, trace_flags=flags)), Context())
        else:
            root_context = Context()  # not whatever span the calling code has open
        emitted = 0
        for span in plan.spans:
            if span.parent is None:
                context = root_context
            else:
                context = trace.set_span_in_context(NonRecordingSpan(SpanContext(
                    trace_id=plan.trace_id, span_id=ids[span.parent], is_remote=False, trace_flags=flags)), Context())
            self.ids.plan(plan.trace_id, ids[span.key])
            otel_span = self.tracer.start_span(span.name, context=context, kind=kinds.get(span.kind, SpanKind.INTERNAL),
                                               attributes=span.attributes, start_time=_ns(span.start))
            if span.parent is None:
                flags = otel_span.get_span_context().trace_flags
                if not flags.sampled:  # the sampler dropped the request: drop its children too
                    otel_span.end(end_time=_ns(span.end))
                    return 0
            if span.error is not None:
                otel_span.set_status(Status(StatusCode.ERROR, span.error))
            otel_span.end(end_time=_ns(span.end))
            emitted += 1
        return emitted


def _ns(seconds: float) -> int:
    return int(round(seconds * 1e9))


def _planned_ids():
    """An id generator handing the SDK the ids we planned (derived from the request; set
    per thread just before each span starts), random ones otherwise."""
    from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator

    class PlannedIds(IdGenerator):
        def __init__(self):
            self.random = RandomIdGenerator()
            self.local = threading.local()

        def plan(self, trace_id: int, span: int) -> None:
            self.local.trace_id, self.local.span_id = trace_id, span

        def generate_trace_id(self) -> int:
            planned = getattr(self.local, "trace_id", None)
            self.local.trace_id = None
            return planned or self.random.generate_trace_id()

        def generate_span_id(self) -> int:
            planned = getattr(self.local, "span_id", None)
            self.local.span_id = None
            return planned or self.random.generate_span_id()

    return PlannedIds()


def _counting(inner):
    """`inner` wrapped: an exception becomes a failure, and failures are counted and logged
    once (the batch processor's thread must never see an exception)."""
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class Counting(SpanExporter):
        def export(self, spans):
            try:
                result = inner.export(spans)
            except Exception as exc:
                stats.problem("export_failures", "OpenTelemetry export raised %s: %s", type(exc).__name__, exc)
                return SpanExportResult.FAILURE
            if result != SpanExportResult.SUCCESS:
                stats.problem("export_failures", "OpenTelemetry export of %d span(s) to %s failed", len(spans),
                              _endpoint())
            return result

        def shutdown(self):
            try:
                inner.shutdown()
            except Exception:
                pass

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            try:
                return inner.force_flush(timeout_millis)
            except Exception:
                return False

    return Counting()


def _endpoint() -> str:
    return next((os.environ[name] for name in ENDPOINT_VARIABLES if os.environ.get(name)), "?")


# -- wiring -------------------------------------------------------------------------------------

_exporter: Exporter | None = None
_exporter_lock = threading.Lock()
# The ids of finished requests waiting for this process's export thread (stdlib only: the
# engine's thread that queues them never imports opentelemetry nor builds the exporter).
_queue: queue.Queue | None = None
_thread: threading.Thread | None = None
_thread_pid = 0
_thread_lock = threading.Lock()


def exporter() -> Exporter:
    """This process's exporter, made on first use (by the export thread, for the first
    finished request)."""
    global _exporter
    with _exporter_lock:
        if _exporter is None:
            _exporter = Exporter()
        return _exporter


def submit(request_id) -> None:
    """Queue a finished request for export; returns at once."""
    custom = _exporter
    if custom is not None and not custom.background:
        custom.export_request(request_id)  # tests: in the caller's thread
        return
    try:
        _export_queue().put_nowait(str(request_id))
    except queue.Full:
        stats.problem("dropped", "OpenTelemetry export queue is full (%d requests): request %s not exported",
                      QUEUE_LIMIT, request_id)


def _export_queue() -> queue.Queue:
    global _queue, _thread, _thread_pid
    with _thread_lock:
        if _thread is None or not _thread.is_alive() or _thread_pid != os.getpid():
            # A forked worker process starts its own thread (threads do not survive a fork).
            _thread_pid = os.getpid()
            _queue = queue.Queue(maxsize=QUEUE_LIMIT)
            _thread = threading.Thread(target=_work, args=(_queue,), name="mash-otel-export", daemon=True)
            _thread.start()
        return _queue


def _work(q: queue.Queue) -> None:
    from django.db import connections

    while True:
        request_id = q.get()
        try:
            exporter().export_request(request_id)
        except Exception as exc:  # the SDK missing or broken: count it, keep the thread
            stats.problem("build_failures", "OpenTelemetry export of request %s failed: %s", request_id, exc)
        finally:
            q.task_done()
            if q.empty():
                connections.close_all()  # this thread's connections only


def _queue_drained(deadline: float) -> bool:
    q = _queue
    if q is None:
        return True
    with q.all_tasks_done:
        while q.unfinished_tasks:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            q.all_tasks_done.wait(left)
    return True


def on_request_terminal(sender, request, **kwargs) -> None:
    """Receiver of `request_terminal`: queue the request for export. Never raises."""
    try:
        submit(request.pk)
    except Exception as exc:
        stats.problem("build_failures", "OpenTelemetry export is not available: %s", exc)


def install(custom: Exporter | None = None) -> None:
    """Export every request that ends from now on (with `custom`: through that exporter)."""
    global _exporter
    if custom is not None:
        with _exporter_lock:
            _exporter = custom
    request_terminal.connect(on_request_terminal, dispatch_uid="mash_telemetry.otel")


def uninstall() -> None:
    """Disconnect, and flush and shut down the exporter (tests)."""
    global _exporter
    request_terminal.disconnect(dispatch_uid="mash_telemetry.otel")
    _queue_drained(time.monotonic() + 5)
    with _exporter_lock:
        current, _exporter = _exporter, None
    if current is not None:
        current.shutdown()


def install_from_environment() -> bool:
    """Called when the app loads: connect the export only when the environment asks for it."""
    if not enabled():
        return False
    install()
    return True
