"""Admin for every runtime record, built for big append-only tables (healthchecks' habits).

- History (events, checkpoints, turns, interactions, the API request log, workflow run
  events) is read-only and cannot be deleted here: it is what happened, and retention
  is `mash prune`.
- No N+1: list columns read only the row, `list_select_related` joins, or annotations
  made in `get_queryset` (correlated subqueries, so only the page's rows pay for them).
- The event, checkpoint, request and log tables page with `EstimatedCountPaginator`
  and `show_full_result_count = False`: no unbounded COUNT(*) per page load.
- Filters use fixed choices instead of `SELECT DISTINCT` over a big table, and search
  maps a UUID to an indexed equality instead of a `LIKE` over every row.
- Operator actions go through `mash_runtime.services` (cancel, resume, answer), the
  same code the API runs, and need the model's change permission.
"""

from __future__ import annotations

import json
import uuid
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.db.models import Count, IntegerField, OuterRef, Q, Subquery, Sum
from django.db.models.functions import Coalesce
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from mash_runtime import models as runtime_models
from mash_runtime.models import (Agent, Interaction, MemoryTurn, Request, RuntimeEvent, Session, StepCheckpoint,
                                 Worker)
from mash_runtime.services import ServiceError, answer_interaction, cancel_request, resume_request
from mash_telemetry.forms import AnswerForm
from mash_telemetry.models import ApiRequestLog
from mash_telemetry.paginators import EstimatedCountPaginator
from mash_telemetry.templatetags.telemetry import ms
from mash_telemetry.trace import pretty

# Operators act on a page of rows; a larger selection is most likely a mistake.
MAX_ACTION_ROWS = 500


# -- helpers ------------------------------------------------------------------------------


def change_url(model, pk) -> str:
    meta = model._meta
    return reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[pk])


def changelist_url(model, **params) -> str:
    meta = model._meta
    url = reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist")
    return f"{url}?{urlencode(params)}" if params else url


def link(model, pk, label) -> str:
    if pk is None:
        return "–"
    return format_html('<a href="{}">{}</a>', change_url(model, pk), label)


def json_block(value) -> str:
    return format_html('<pre style="white-space: pre-wrap; max-height: 40em; overflow: auto">{}</pre>', pretty(value))


def json_display(field: str, description: str):
    """An admin display column showing JSON field `field` as an indented block."""

    @admin.display(description=description)
    def shown(self, obj):
        return json_block(getattr(obj, field))

    return shown


def clip(text, limit: int = 80) -> str:
    flat = " ".join(str(text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def count_of(model, fk: str, **filters):
    """A correlated COUNT subquery: evaluated per displayed row, not as a GROUP BY over the table."""
    qs = model.objects.filter(**{fk: OuterRef("pk")}, **filters).order_by().values(fk)
    return Coalesce(Subquery(qs.annotate(n=Count("pk")).values("n")[:1], output_field=IntegerField()), 0)


def as_uuid(term: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(term.strip())
    except ValueError:
        return None


def limited(request, queryset, model_admin) -> list | None:
    rows = list(queryset[: MAX_ACTION_ROWS + 1])
    if len(rows) > MAX_ACTION_ROWS:
        model_admin.message_user(request, f"Select at most {MAX_ACTION_ROWS} rows per action.", messages.ERROR)
        return None
    return rows


class FixedChoicesFilter(admin.SimpleListFilter):
    """Exact-value filter with known choices: no SELECT DISTINCT over a big table.

    A value outside the choices (typed into the URL) still filters, so links like
    `?status_code=418` work.
    """

    field = ""
    options: tuple = ()

    def lookups(self, request, model_admin):
        return [(value, label) for value, label in self.options]

    def queryset(self, request, queryset):
        value = self.value()
        if value in (None, ""):
            return queryset
        return queryset.filter(**{self.field: value})


class HistoryAdmin(admin.ModelAdmin):
    """A record of what happened: viewable, never added, edited or deleted here."""

    show_full_result_count = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class RequestChildAdmin:
    """For rows that belong to a request: a link to it, and a request id typed into search finds them."""

    def get_search_results(self, request, queryset, search_term):
        value = as_uuid(search_term)
        if value is not None:
            return queryset.filter(request_id=value), False
        return super().get_search_results(request, queryset, search_term)

    @admin.display(description="request", ordering="request_id")
    def request_ref(self, obj):
        return request_link(obj)


class BigTableAdmin(HistoryAdmin):
    paginator = EstimatedCountPaginator
    list_per_page = 100
    ordering = ("-pk",)


# -- agents and sessions -------------------------------------------------------------------


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    list_display = ("agent_id", "role", "model_name", "active", "sessions", "requests", "tokens", "updated_at")
    list_filter = ("role", "active")
    search_fields = ("agent_id",)
    readonly_fields = ("agent_id", "role", "model_name", "active", "shown_metadata", "shown_config", "related",
                       "created_at", "updated_at")
    fields = readonly_fields
    show_full_result_count = False

    def get_queryset(self, request):
        tokens = (
            Session.objects.filter(agent=OuterRef("pk")).order_by().values("agent")
            .annotate(n=Sum("session_total_tokens")).values("n")[:1]
        )
        return super().get_queryset(request).annotate(
            session_count=count_of(Session, "agent"),
            request_count=count_of(Request, "agent"),
            token_total=Coalesce(Subquery(tokens, output_field=IntegerField()), 0),
        )

    @admin.display(description="sessions", ordering="session_count")
    def sessions(self, obj):
        return format_html('<a href="{}">{}</a>', changelist_url(Session, agent__id__exact=obj.pk), obj.session_count)

    @admin.display(description="requests", ordering="request_count")
    def requests(self, obj):
        return format_html('<a href="{}">{}</a>', changelist_url(Request, agent__id__exact=obj.pk), obj.request_count)

    @admin.display(description="session tokens", ordering="token_total")
    def tokens(self, obj):
        return f"{obj.token_total:,}"

    shown_metadata = json_display("metadata", "metadata")
    shown_config = json_display("config", "config")

    @admin.display(description="records")
    def related(self, obj):
        return format_html(
            '<a href="{}">sessions</a> · <a href="{}">requests</a> · <a href="{}">turns</a> · '
            '<a href="{}">telemetry</a>',
            changelist_url(Session, agent__id__exact=obj.pk), changelist_url(Request, agent__id__exact=obj.pk),
            changelist_url(MemoryTurn, agent__id__exact=obj.pk),
            reverse("telemetry:requests") + "?" + urlencode({"agent": obj.agent_id}),
        )

    def has_add_permission(self, request):
        return False  # agents come from the host app (`sync_agents`)

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        # Only an agent the host no longer defines, and only when nothing of it still runs.
        if obj is None:
            return super().has_delete_permission(request)
        return (super().has_delete_permission(request, obj) and not obj.active
                and not obj.requests.exclude(status__in=Request.TERMINAL).exists())


@admin.register(Session)
class SessionAdmin(admin.ModelAdmin):
    list_display = ("session_id", "agent", "requests", "turns", "session_total_tokens", "last_activity_at",
                    "created_at", "telemetry")
    list_filter = ("agent",)
    search_fields = ("session_id", "=agent__agent_id")
    list_select_related = ("agent",)
    raw_id_fields = ("agent",)
    readonly_fields = ("session_id", "agent", "session_total_tokens", "last_request_seq", "created_at",
                       "last_activity_at", "related")
    fields = readonly_fields
    show_full_result_count = False
    ordering = ("-last_activity_at",)

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(
            turn_count=count_of(MemoryTurn, "session", kind=MemoryTurn.Kind.TURN))

    @admin.display(description="requests", ordering="last_request_seq")
    def requests(self, obj):
        # last_request_seq counts every request the session ever had (pruned ones included).
        return format_html('<a href="{}">{}</a>', changelist_url(Request, session__id__exact=obj.pk),
                           obj.last_request_seq)

    @admin.display(description="turns", ordering="turn_count")
    def turns(self, obj):
        return format_html('<a href="{}">{}</a>', changelist_url(MemoryTurn, session__id__exact=obj.pk),
                           obj.turn_count)

    @admin.display(description="")
    def telemetry(self, obj):
        return format_html('<a href="{}">history</a>', reverse("telemetry:session", args=[obj.pk]))

    @admin.display(description="records")
    def related(self, obj):
        return format_html('<a href="{}">requests</a> · <a href="{}">turns</a> · <a href="{}">session page</a>',
                           changelist_url(Request, session__id__exact=obj.pk),
                           changelist_url(MemoryTurn, session__id__exact=obj.pk),
                           reverse("telemetry:session", args=[obj.pk]))

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        # Deleting a session deletes its requests: never while one of them is unfinished.
        if obj is None:
            return super().has_delete_permission(request)
        return (super().has_delete_permission(request, obj)
                and not obj.requests.exclude(status__in=Request.TERMINAL).exists())


# -- requests ----------------------------------------------------------------------------------


class RequestKindFilter(admin.SimpleListFilter):
    title = "kind"
    parameter_name = "kind"

    def lookups(self, request, model_admin):
        return (("top", "top-level"), ("subagent", "subagent calls"))

    def queryset(self, request, queryset):
        if self.value() == "top":
            return queryset.filter(parent__isnull=True)
        if self.value() == "subagent":
            return queryset.filter(parent__isnull=False)
        return queryset


class OperatorActions:
    """Permission checks named for the admin's `permissions=[...]` on actions."""

    def has_operate_permission(self, request):
        return request.user.has_perm("mash_runtime.change_request")

    def has_answer_permission(self, request, obj=None):
        return request.user.has_perm("mash_runtime.change_interaction")


# Workflows are being added to the runtime; the request admin shows the link once it exists.
WORKFLOW_RUN = ("workflow_run",) if any(f.name == "workflow_run" for f in Request._meta.get_fields()) else ()


@admin.register(Request)
class RequestAdmin(OperatorActions, HistoryAdmin):
    list_display = ("short_id", "agent", "session_link", "status", "tokens", "duration", "events",
                    "pending_questions", "created_at")
    list_filter = ("status", RequestKindFilter, "agent", ("created_at", admin.DateFieldListFilter))
    search_fields = ("=id",)
    list_select_related = ("agent", "session")
    raw_id_fields = ("agent", "session", "parent", *WORKFLOW_RUN)
    paginator = EstimatedCountPaginator
    actions = ("cancel_selected", "resume_selected")
    fieldsets = (
        (None, {"fields": ("id", "agent", "session", "parent", "status", "related", "message")}),
        ("Result", {"fields": ("shown_response", "error", "error_code", "retryable", "structured_schema")}),
        ("Tokens and timing", {"fields": ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
                                          "created_at", "started_at", "finished_at", "duration")}),
        ("Execution", {"classes": ("collapse",), "fields": (
            "trace_id", "session_seq", "last_seq", "run_attempt", "recovery_attempts", "cancel_requested",
            "lease_owner", "lease_expires_at", *WORKFLOW_RUN, "shown_metadata")}),
    )
    readonly_fields = ("id", "agent", "session", "parent", "status", "related", "message", "shown_response", "error",
                       "error_code", "retryable", "structured_schema", "input_tokens", "output_tokens",
                       "cache_read_tokens", "cache_write_tokens", "created_at", "started_at", "finished_at",
                       "duration", "trace_id", "session_seq", "last_seq", "run_attempt", "recovery_attempts",
                       "cancel_requested", "lease_owner", "lease_expires_at", *WORKFLOW_RUN, "shown_metadata")

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(
            pending_count=count_of(Interaction, "request", status=Interaction.Status.PENDING))

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if not term:
            return queryset, False
        value = as_uuid(term)
        if value is not None:
            return queryset.filter(Q(pk=value) | Q(trace_id=value) | Q(parent_id=value)), False
        return queryset.filter(Q(message__icontains=term) | Q(session__session_id=term)), False

    @admin.display(description="request", ordering="pk")
    def short_id(self, obj):
        return format_html('<span title="{}">{}</span>{}', obj.pk, str(obj.pk)[:8],
                           " ↳" if obj.parent_id else "")

    @admin.display(description="session", ordering="session__session_id")
    def session_link(self, obj):
        return link(Session, obj.session_id, clip(obj.session.session_id, 40))

    @admin.display(description="tokens")
    def tokens(self, obj):
        return f"{obj.total_tokens:,}"

    @admin.display(description="duration")
    def duration(self, obj):
        return ms(obj.duration_ms)

    @admin.display(description="events", ordering="last_seq")
    def events(self, obj):
        return format_html('<a href="{}">{}</a>', changelist_url(RuntimeEvent, request__id__exact=obj.pk),
                           obj.last_seq)

    @admin.display(description="pending", ordering="pending_count")
    def pending_questions(self, obj):
        if not obj.pending_count:
            return ""
        return format_html('<a href="{}">{} pending</a>',
                           changelist_url(Interaction, request__id__exact=obj.pk, status__exact="pending"),
                           obj.pending_count)

    @admin.display(description="records")
    def related(self, obj):
        links = [
            ("trace", reverse("telemetry:request", args=[obj.pk])),
            (f"{obj.last_seq} events", changelist_url(RuntimeEvent, request__id__exact=obj.pk)),
            ("checkpoints", changelist_url(StepCheckpoint, request__id__exact=obj.pk)),
            ("interactions", changelist_url(Interaction, request__id__exact=obj.pk)),
            ("subagent requests", changelist_url(Request, parent__id__exact=obj.pk)),
        ]
        turn = MemoryTurn.objects.filter(request=obj).values_list("pk", flat=True).first()
        if turn is not None:
            links.append(("memory turn", change_url(MemoryTurn, turn)))
        return format_html_join(" · ", '<a href="{1}">{0}</a>', links)

    shown_response = json_display("response", "response")

    @admin.display(description="structured output schema")
    def structured_schema(self, obj):
        return json_block(obj.structured_output) if obj.structured_output is not None else "–"

    shown_metadata = json_display("metadata", "metadata")

    @admin.action(description="Cancel selected requests", permissions=["operate"])
    def cancel_selected(self, request, queryset):
        ids = limited(request, queryset.values_list("pk", flat=True), self)
        if ids is None:
            return
        outcome: dict[str, int] = {}
        for pk in ids:
            status = cancel_request(pk)["status"]
            outcome[status] = outcome.get(status, 0) + 1
        self.message_user(request, "Cancel: " + ", ".join(f"{n} {s}" for s, n in sorted(outcome.items())),
                          messages.SUCCESS)

    @admin.action(description="Resume selected failed or cancelled requests", permissions=["operate"])
    def resume_selected(self, request, queryset):
        ids = limited(request, queryset.values_list("pk", flat=True), self)
        if ids is None:
            return
        resumed = sum(resume_request(pk)["status"] == "resumed" for pk in ids)
        skipped = len(ids) - resumed
        self.message_user(request, f"Resumed {resumed} request(s)"
                          + (f"; {skipped} were not failed or cancelled" if skipped else "") + ".",
                          messages.SUCCESS if resumed else messages.WARNING)


# -- events and checkpoints ----------------------------------------------------------------------


class EventFamilyFilter(admin.SimpleListFilter):
    title = "event family"
    parameter_name = "family"
    families = ("request.", "runtime.", "llm.", "subagent.")

    def lookups(self, request, model_admin):
        return [(f.rstrip("."), f + "*") for f in self.families]

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(event_type__startswith=self.value() + ".")
        return queryset


class EventTypeFilter(FixedChoicesFilter):
    title = "event type"
    parameter_name = "event_type"
    field = "event_type"
    options = tuple((t, t) for t in (
        "request.accepted", "request.waiting", "request.started", "request.interaction.create",
        "request.interaction.ack", "request.completed", "request.error", "runtime.context.loaded",
        "llm.request.complete", "runtime.llm.think.completed", "runtime.tool.call.completed",
        "runtime.subagent.call.completed", "runtime.step.completed", "runtime.turn.persisted",
    ))


class AgentIdFilter(admin.SimpleListFilter):
    """`agent_id` is a plain column on events: its choices come from the small agents table."""

    title = "agent"
    parameter_name = "agent_id"

    def lookups(self, request, model_admin):
        return [(a, a) for a in Agent.objects.order_by("agent_id").values_list("agent_id", flat=True)]

    def queryset(self, request, queryset):
        return queryset.filter(agent_id=self.value()) if self.value() else queryset


def request_link(obj) -> str:
    # From the foreign key column alone: no join, no extra query per row.
    return format_html('<a href="{}" title="{}">{}</a>', change_url(Request, obj.request_id), obj.request_id,
                       str(obj.request_id)[:8])


@admin.register(RuntimeEvent)
class RuntimeEventAdmin(RequestChildAdmin, BigTableAdmin):
    list_display = ("id", "request_ref", "seq", "event_type", "agent_id", "session_id", "step_key", "when")
    list_filter = (EventFamilyFilter, EventTypeFilter, AgentIdFilter)
    search_fields = ("=session_id",)
    search_help_text = "A request or trace id, an exact session id, or the start of an event type."
    raw_id_fields = ("request",)
    fields = ("id", "request_ref", "seq", "event_type", "agent_id", "session_id", "trace_id", "loop_index",
              "step_key", "dedupe_key", "when", "shown_payload")
    readonly_fields = fields

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if not term:
            return queryset, False
        value = as_uuid(term)
        if value is not None:
            return queryset.filter(Q(request_id=value) | Q(trace_id=value)), False
        return queryset.filter(Q(session_id=term) | Q(event_type__startswith=term)), False

    @admin.display(description="created", ordering="created_at")
    def when(self, obj):
        from mash_telemetry.templatetags.telemetry import epoch

        moment = epoch(obj.created_at)
        return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if moment else "–"

    shown_payload = json_display("payload", "payload")


class CheckpointKindFilter(FixedChoicesFilter):
    title = "kind"
    parameter_name = "kind"
    field = "kind"
    options = (("llm", "llm"), ("tool", "tool"), ("subagent", "subagent"), ("subagent.start", "subagent.start"))


@admin.register(StepCheckpoint)
class StepCheckpointAdmin(RequestChildAdmin, BigTableAdmin):
    list_display = ("id", "request_ref", "step_key", "kind", "duration_ms", "created_at")
    list_filter = (CheckpointKindFilter,)
    search_fields = ("=step_key",)
    search_help_text = "A request id or an exact step key (plan.0, tool.1.0, ...)."
    raw_id_fields = ("request",)
    fields = ("id", "request_ref", "step_key", "kind", "duration_ms", "created_at", "shown_output")
    readonly_fields = fields

    shown_output = json_display("output", "output")


# -- interactions ---------------------------------------------------------------------------------


@admin.register(Interaction)
class InteractionAdmin(RequestChildAdmin, OperatorActions, HistoryAdmin):
    list_display = ("interaction_id", "request_ref", "type", "status", "short_prompt", "shown_answer",
                    "created_at", "expires_at", "answer_link")
    list_filter = ("status", "type")
    search_fields = ("=interaction_id",)
    search_help_text = "An interaction id (itr_...) or a request id."
    raw_id_fields = ("request",)
    actions = ("approve_selected", "deny_selected")
    fields = ("interaction_id", "request_ref", "step_key", "type", "status", "prompt", "shown_schema",
              "timeout_seconds", "expires_at", "shown_default", "shown_response", "answered_at", "created_at",
              "answer_link")
    readonly_fields = fields
    ordering = ("-created_at",)

    @admin.display(description="prompt")
    def short_prompt(self, obj):
        return clip(obj.prompt, 80)

    @admin.display(description="answer")
    def shown_answer(self, obj):
        if obj.status == Interaction.Status.PENDING:
            return ""
        return clip(json.dumps(obj.response, ensure_ascii=False), 60)

    @admin.display(description="")
    def answer_link(self, obj):
        if obj.status != Interaction.Status.PENDING:
            return ""
        return format_html('<a class="button" href="{}">answer</a>',
                           reverse("admin:mash_runtime_interaction_answer", args=[obj.pk]))

    shown_schema = json_display("schema", "schema")
    shown_default = json_display("default_response", "default answer (on timeout)")
    shown_response = json_display("response", "response")

    def get_urls(self):
        return [
            path("<path:object_id>/answer/", self.admin_site.admin_view(self.answer_view),
                 name="mash_runtime_interaction_answer"),
            *super().get_urls(),
        ]

    def answer_view(self, request, object_id):
        itr = get_object_or_404(Interaction.objects.select_related("request", "request__agent"), pk=object_id)
        if not self.has_answer_permission(request, itr):
            raise PermissionDenied
        change = change_url(Interaction, itr.pk)
        form = AnswerForm(itr, request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                answer_interaction(itr.request_id, itr.interaction_id, form.answer())
            except ServiceError as exc:
                self.message_user(request, exc.message, messages.ERROR)
            else:
                self.message_user(request, f"Answered {itr.interaction_id}; the request continues.", messages.SUCCESS)
                return HttpResponseRedirect(change)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Answer {itr.interaction_id}",
            "interaction": itr,
            "form": form,
            "change_url": change,
            "trace_url": reverse("telemetry:request", args=[itr.request_id]),
        }
        return TemplateResponse(request, "admin/mash_runtime/interaction/answer.html", context)

    def _answer_selected(self, request, queryset, response: str):
        rows = limited(request, queryset.filter(status=Interaction.Status.PENDING, type=Interaction.Type.APPROVAL), self)
        if rows is None:
            return
        done, failed = 0, []
        for itr in rows:
            try:
                answer_interaction(itr.request_id, itr.interaction_id, response)
                done += 1
            except ServiceError as exc:
                failed.append(f"{itr.interaction_id}: {exc.message}")
        self.message_user(request, f"Answered {done} approval(s) with '{response}'."
                          + (" Not answered: " + "; ".join(failed) if failed else ""),
                          messages.WARNING if failed else messages.SUCCESS)

    @admin.action(description="Approve selected pending approvals", permissions=["answer"])
    def approve_selected(self, request, queryset):
        self._answer_selected(request, queryset, "approve")

    @admin.action(description="Deny selected pending approvals", permissions=["answer"])
    def deny_selected(self, request, queryset):
        self._answer_selected(request, queryset, "deny")


# -- memory ---------------------------------------------------------------------------------------


@admin.register(Worker)
class WorkerAdmin(HistoryAdmin):
    """Worker processes by their heartbeat rows; a row not seen for a while is a process gone."""

    list_display = ("name", "hostname", "pid", "slots", "in_use", "draining", "live", "last_seen_at", "started_at")
    list_filter = ("hostname", "draining")
    fields = ("name", "hostname", "pid", "slots", "in_use", "draining", "started_at", "last_seen_at")
    readonly_fields = fields
    ordering = ("-last_seen_at",)

    @admin.display(boolean=True, description=f"seen in the last {Worker.LIVE_SECONDS} s")
    def live(self, obj):
        from datetime import timedelta

        from django.utils import timezone

        return obj.last_seen_at >= timezone.now() - timedelta(seconds=Worker.LIVE_SECONDS)


@admin.register(MemoryTurn)
class MemoryTurnAdmin(HistoryAdmin):
    list_display = ("turn_id", "agent", "session_link", "kind", "short_user", "short_agent", "tokens",
                    "session_total_tokens", "created_at", "trace")
    list_filter = ("kind", "agent")
    search_fields = ("user_message", "agent_response")
    list_select_related = ("agent", "session")
    raw_id_fields = ("agent", "session", "request")
    paginator = EstimatedCountPaginator
    fields = ("turn_id", "agent", "session", "request", "kind", "user_message", "agent_response", "shown_usage",
              "session_total_tokens", "shown_signals", "shown_metadata", "created_at")
    readonly_fields = fields
    ordering = ("-created_at",)

    def get_search_results(self, request, queryset, search_term):
        value = as_uuid(search_term)
        if value is not None:
            return queryset.filter(Q(pk=value) | Q(request_id=value)), False
        return super().get_search_results(request, queryset, search_term)

    @admin.display(description="session", ordering="session__session_id")
    def session_link(self, obj):
        return link(Session, obj.session_id, clip(obj.session.session_id, 40))

    @admin.display(description="user")
    def short_user(self, obj):
        return clip(obj.user_message, 60)

    @admin.display(description="agent answer")
    def short_agent(self, obj):
        return clip(obj.agent_response, 60)

    @admin.display(description="tokens")
    def tokens(self, obj):
        total = (obj.token_usage or {}).get("total_tokens")
        return f"{total:,}" if isinstance(total, int) else "–"

    @admin.display(description="")
    def trace(self, obj):
        if not obj.request_id:
            return ""
        return format_html('<a href="{}">trace</a>', reverse("telemetry:request", args=[obj.request_id]))

    shown_usage = json_display("token_usage", "token usage")
    shown_signals = json_display("signals", "signals")
    shown_metadata = json_display("metadata", "metadata")


# -- workflows (registered when the runtime defines them) -------------------------------------------


def model_fields(model, names) -> tuple:
    """The names that are fields of `model`: an admin that names a missing field fails every check."""
    present = {f.name for f in model._meta.get_fields()}
    return tuple(n for n in names if n in present)


WorkflowDefinition = getattr(runtime_models, "WorkflowDefinition", None)
WorkflowRun = getattr(runtime_models, "WorkflowRun", None)
WorkflowRunEvent = getattr(runtime_models, "WorkflowRunEvent", None)
WorkflowTaskRun = getattr(runtime_models, "WorkflowTaskRun", None)
WorkflowTaskState = getattr(runtime_models, "WorkflowTaskState", None)
PublishedSkill = getattr(runtime_models, "PublishedSkill", None)

if WorkflowDefinition is not None:

    @admin.register(WorkflowDefinition)
    class WorkflowDefinitionAdmin(admin.ModelAdmin):
        list_display = model_fields(WorkflowDefinition, ("workflow_id", "source", "agent", "active", "updated_at"))
        list_filter = model_fields(WorkflowDefinition, ("source", "active"))
        search_fields = model_fields(WorkflowDefinition, ("workflow_id",))
        list_select_related = model_fields(WorkflowDefinition, ("agent",))
        raw_id_fields = model_fields(WorkflowDefinition, ("agent",))
        show_full_result_count = False


if WorkflowRun is not None:

    @admin.register(WorkflowRun)
    class WorkflowRunAdmin(HistoryAdmin):
        list_display = model_fields(WorkflowRun, ("run_id", "workflow", "status", "task_index", "created_at",
                                                  "finished_at"))
        list_filter = model_fields(WorkflowRun, ("status",))
        search_fields = tuple(f"={n}" for n in model_fields(WorkflowRun, ("run_id", "dedup_key")))
        list_select_related = model_fields(WorkflowRun, ("workflow",))
        raw_id_fields = model_fields(WorkflowRun, ("workflow",))
        paginator = EstimatedCountPaginator


if WorkflowRunEvent is not None:

    @admin.register(WorkflowRunEvent)
    class WorkflowRunEventAdmin(BigTableAdmin):
        list_display = model_fields(WorkflowRunEvent, ("id", "run", "seq", "event_type", "created_at"))
        search_fields = tuple(f"={n}" for n in model_fields(WorkflowRunEvent, ("run",)))
        raw_id_fields = model_fields(WorkflowRunEvent, ("run",))


if WorkflowTaskRun is not None:

    @admin.register(WorkflowTaskRun)
    class WorkflowTaskRunAdmin(HistoryAdmin):
        list_display = model_fields(WorkflowTaskRun, ("id", "run", "index", "task_id", "agent_id", "status",
                                                      "started_at", "finished_at"))
        list_filter = model_fields(WorkflowTaskRun, ("status",))
        raw_id_fields = model_fields(WorkflowTaskRun, ("run", "request"))
        paginator = EstimatedCountPaginator


if WorkflowTaskState is not None:

    @admin.register(WorkflowTaskState)
    class WorkflowTaskStateAdmin(HistoryAdmin):
        list_display = model_fields(WorkflowTaskState, ("id", "workflow", "task_id", "run", "updated_at"))
        list_select_related = model_fields(WorkflowTaskState, ("workflow",))
        raw_id_fields = model_fields(WorkflowTaskState, ("workflow", "run"))


if PublishedSkill is not None:

    @admin.register(PublishedSkill)
    class PublishedSkillAdmin(admin.ModelAdmin):
        list_display = model_fields(PublishedSkill, ("name", "agent", "type", "updated_at"))
        list_filter = model_fields(PublishedSkill, ("type",))
        search_fields = model_fields(PublishedSkill, ("name",))
        list_select_related = model_fields(PublishedSkill, ("agent",))
        raw_id_fields = model_fields(PublishedSkill, ("agent",))


# -- API request log (written by mash_telemetry/middleware.py) ------------------------------------


class MethodFilter(FixedChoicesFilter):
    title = "method"
    parameter_name = "method"
    field = "method"
    options = tuple((m, m) for m in ("GET", "POST", "PUT", "PATCH", "DELETE"))


class StatusCodeFilter(FixedChoicesFilter):
    title = "status code"
    parameter_name = "status_code"
    field = "status_code"
    options = tuple((str(c), str(c)) for c in (200, 201, 202, 204, 400, 401, 403, 404, 405, 409, 410, 422, 500, 503))


@admin.register(ApiRequestLog)
class ApiRequestLogAdmin(BigTableAdmin):
    list_display = ("created_at", "method", "path", "status_code", "duration_ms", "streaming", "client")
    list_filter = (MethodFilter, StatusCodeFilter)
    search_fields = ("path",)
    show_full_result_count = False  # append-only and large: no COUNT(*) per page
    readonly_fields = [f.name for f in ApiRequestLog._meta.fields]
