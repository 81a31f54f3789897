"""Admin for every runtime record, built for big append-only tables (healthchecks' habits).

- History (events, checkpoints, turns, interactions, workflow run events) is read-only
  and cannot be deleted here: it is what happened, and retention is `mash prune`.
- No N+1: list columns read only the row, `list_select_related` joins, or annotations
  made in `get_queryset` (correlated subqueries, so only the page's rows pay for them).
- The event, checkpoint and request tables page with `EstimatedCountPaginator`
  and `show_full_result_count = False`: no unbounded COUNT(*) per page load.
- Filters use fixed choices instead of `SELECT DISTINCT` over a big table, and search
  maps a UUID to an indexed equality instead of a `LIKE` over every row.
- Operator actions go through `mash_runtime.services` (cancel, resume, answer), the
  same code the API runs, and need the model's change permission.
- Changelists show a few chosen columns that fit a 1400 px screen (previews clipped,
  long ids cut with the whole value on hover); every timestamp follows the pages' one
  clock (`mash_runtime.presentation.clock`: server time zone, labelled, seconds shown).

The bases and column helpers here (`MashAdmin`, `HistoryAdmin`, `BigTableAdmin`,
`FixedChoicesFilter`, `clipped`, `when_display`, ...) serve the other apps' admins too
(`mash_telemetry/admin.py`). The presentation pieces (the clock, duration and JSON text, the
answer form, the paginator) are `mash_runtime.presentation`, which the telemetry pages use
too: this package imports nothing of mash_telemetry. Admin modules load through autodiscover
once every app is ready, and the engine never imports this one.
"""

from __future__ import annotations

import json
import uuid
from urllib.parse import urlencode

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, IntegerField, OuterRef, Q, Subquery, Sum
from django.db.models.functions import Coalesce
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from mash_runtime.errors import ServiceError
from mash_runtime.models import (
    Agent,
    Interaction,
    MemoryTurn,
    PublishedSkill,
    Request,
    RuntimeEvent,
    Session,
    StepCheckpoint,
    Worker,
    WorkflowDefinition,
    WorkflowRun,
    WorkflowRunEvent,
    WorkflowTaskRun,
    WorkflowTaskState,
)
from mash_runtime.presentation import clock
from mash_runtime.presentation.formats import duration_text, pretty
from mash_runtime.presentation.forms import AnswerForm
from mash_runtime.presentation.paginators import EstimatedCountPaginator
from mash_runtime.services import answer_interaction, cancel_request, resume_request
from mash_runtime.workflows.validation import validate_tasks

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


def clipped(text, limit: int = 60, css: str = "clip") -> str:
    """`text` cut to `limit` characters (and to the column's width by admin.css), the whole
    of it on hover."""
    flat = " ".join(str(text or "").split())
    shown = flat if len(flat) <= limit else flat[: limit - 1] + "…"
    return format_html('<span class="{}" title="{}">{}</span>', css, flat[:2000], shown)


def number_display(field: str, description: str, sortable: bool = True):
    """A column showing the number in `field` with thousands separators."""

    @admin.display(description=description, ordering=field if sortable else None)
    def shown(self, obj):
        return f"{getattr(obj, field):,}"

    return shown


def count_link_display(model, parent: str, count: str, description: str):
    """A column sorted by `count` (a field or an annotation) showing it as a link to the
    changelist of the `model` rows whose `parent` is this row."""

    @admin.display(description=description, ordering=count)
    def shown(self, obj):
        return format_html('<a href="{}">{}</a>', changelist_url(model, **{f"{parent}__id__exact": obj.pk}),
                           getattr(obj, count))

    return shown


def when_display(field: str, description: str):
    """A timestamp column or field by the pages' one clock (server time zone, labelled,
    seconds shown; the full timestamp and the relative time on hover)."""

    @admin.display(description=description, ordering=field)
    def shown(self, obj):
        return clock.when(getattr(obj, field), ago=False)

    return shown


def trace_link(request_id, label: str = "trace") -> str:
    if not request_id:
        return "–"
    return format_html('<a href="{}">{}</a>', reverse("telemetry:request", args=[request_id]), label)


def id_or_text_search(queryset, search_term: str, by_id, by_text):
    """A big table's search: a UUID becomes indexed equalities (`by_id(value)`, a Q), any other
    text `by_text(term)`, never a LIKE over every searchable column; no text, every row."""
    term = search_term.strip()
    if not term:
        return queryset, False
    value = as_uuid(term)
    return queryset.filter(by_id(value) if value is not None else by_text(term)), False


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


# The app list beside every page took 300 px of a 1400 px screen, and with a changelist's
# filters that left 750 px for the table: dates and tokens went behind a sideways scroll.
# The admin's index and breadcrumbs navigate; the pages keep the table's width.
admin.site.enable_nav_sidebar = False


class TimestampColumns:
    """The records' timestamp columns, one each by the pages' one clock: an admin lists (in
    `list_display`, `fields`, `readonly_fields`) those its model has."""

    created = when_display("created_at", "created")
    updated = when_display("updated_at", "updated")
    started = when_display("started_at", "started")
    finished = when_display("finished_at", "finished")
    last_activity = when_display("last_activity_at", "last activity")
    lease_expires = when_display("lease_expires_at", "lease expires")
    expires = when_display("expires_at", "expires")
    answered = when_display("answered_at", "answered")
    last_seen = when_display("last_seen_at", "last seen")


class MashAdmin(TimestampColumns, admin.ModelAdmin):
    """The admin pages of Mash's records: compact changelists (admin.css)."""

    class Media:
        css = {"all": ("mash_runtime/admin.css",)}


class ReadOnly:
    """Viewable, never added, edited or deleted here."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class HistoryAdmin(ReadOnly, MashAdmin):
    """A record of what happened: viewable, never added, edited or deleted here."""

    show_full_result_count = False


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
class AgentAdmin(MashAdmin):
    list_display = ("agent_id", "role", "model_name", "active", "sessions", "requests", "tokens", "updated")
    list_filter = ("role", "active")
    search_fields = ("agent_id",)
    readonly_fields = ("agent_id", "role", "model_name", "active", "shown_metadata", "shown_config", "related",
                       "created", "updated")
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

    sessions = count_link_display(Session, "agent", "session_count", "sessions")
    requests = count_link_display(Request, "agent", "request_count", "requests")
    tokens = number_display("token_total", "session tokens")

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
        return False  # agents come from the host app (`host_sync.sync_host`)

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        # Only an agent the host no longer defines, and only one without history: deleting
        # would delete its sessions and requests, which are not deletable here (the admin
        # could only say "Cannot delete"); `mash prune` removes old history first.
        if obj is None:
            return super().has_delete_permission(request)
        return (super().has_delete_permission(request, obj) and not obj.active
                and not obj.sessions.exists() and not obj.requests.exists())


@admin.register(Session)
class SessionAdmin(MashAdmin):
    list_display = ("short_session_id", "agent", "requests", "turns", "tokens", "last_activity", "telemetry")
    list_filter = ("agent",)
    search_fields = ("session_id", "=agent__agent_id")
    list_select_related = ("agent",)
    raw_id_fields = ("agent",)
    readonly_fields = ("session_id", "agent", "session_total_tokens", "last_request_seq", "created",
                       "last_activity", "related")
    fields = readonly_fields
    show_full_result_count = False
    ordering = ("-last_activity_at",)

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(
            turn_count=count_of(MemoryTurn, "session", kind=MemoryTurn.Kind.TURN))

    @admin.display(description="session", ordering="session_id")
    def short_session_id(self, obj):
        return clipped(obj.session_id, 60)

    tokens = number_display("session_total_tokens", "tokens")

    # last_request_seq counts every request the session ever had (pruned ones included).
    requests = count_link_display(Request, "session", "last_request_seq", "requests")
    turns = count_link_display(MemoryTurn, "session", "turn_count", "turns")

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
        # Deleting a session would delete its requests, events and turns, which are history and
        # not deletable here: the button could only lead to "Cannot delete". Retention is
        # `mash prune`.
        return False


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


WORKFLOW_RUN = ("workflow_run",)


@admin.register(Request)
class RequestAdmin(OperatorActions, HistoryAdmin):
    list_display = ("short_id", "created", "agent", "shown_status", "short_message", "tokens", "duration", "events")
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
                                          "created", "started", "finished", "duration")}),
        ("Execution", {"classes": ("collapse",), "fields": (
            "trace_id", "session_seq", "last_seq", "run_attempt", "recovery_attempts", "cancel_requested",
            "lease_owner", "lease_expires", *WORKFLOW_RUN, "shown_metadata")}),
    )
    readonly_fields = ("id", "agent", "session", "parent", "status", "related", "message", "shown_response", "error",
                       "error_code", "retryable", "structured_schema", "input_tokens", "output_tokens",
                       "cache_read_tokens", "cache_write_tokens", "created", "started", "finished",
                       "duration", "trace_id", "session_seq", "last_seq", "run_attempt", "recovery_attempts",
                       "cancel_requested", "lease_owner", "lease_expires", *WORKFLOW_RUN, "shown_metadata")

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(
            pending_count=count_of(Interaction, "request", status=Interaction.Status.PENDING))

    def get_search_results(self, request, queryset, search_term):
        return id_or_text_search(queryset, search_term,
                                 lambda value: Q(pk=value) | Q(trace_id=value) | Q(parent_id=value),
                                 lambda term: Q(message__icontains=term) | Q(session__session_id=term))

    @admin.display(description="request", ordering="pk")
    def short_id(self, obj):
        return format_html('<span title="{}">{}</span>{}', obj.pk, str(obj.pk)[:8],
                           " ↳" if obj.parent_id else "")

    @admin.display(description="message")
    def short_message(self, obj):
        return clipped(obj.message, 80)

    tokens = number_display("total_tokens", "tokens", sortable=False)

    @admin.display(description="duration")
    def duration(self, obj):
        return duration_text(obj.duration_ms)

    events = count_link_display(RuntimeEvent, "request", "last_seq", "events")

    @admin.display(description="status", ordering="status")
    def shown_status(self, obj):
        """The status, and a link to its unanswered questions when it has some."""
        if not obj.pending_count:
            return obj.get_status_display()
        return format_html('{} · <a href="{}">{} pending</a>', obj.get_status_display(),
                           changelist_url(Interaction, request__id__exact=obj.pk, status__exact="pending"),
                           obj.pending_count)

    @admin.display(description="records")
    def related(self, obj):
        links = [
            ("trace", reverse("telemetry:request", args=[obj.pk])),
            (f"{obj.last_seq} events", changelist_url(RuntimeEvent, request__id__exact=obj.pk)),
            ("event log page", reverse("telemetry:request-events", args=[obj.pk])),
            ("checkpoints", changelist_url(StepCheckpoint, request__id__exact=obj.pk)),
            ("interactions", changelist_url(Interaction, request__id__exact=obj.pk)),
            ("subagent requests", changelist_url(Request, parent__id__exact=obj.pk)),
        ]
        turn = MemoryTurn.objects.filter(request=obj).values_list("pk", flat=True).first()
        if turn is not None:
            links.append(("memory turn", change_url(MemoryTurn, turn)))
        if getattr(obj, "workflow_run_id", None):
            links.append(("workflow run", reverse("telemetry:run", args=[obj.workflow_run_id])))
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
    list_display = ("id", "request_ref", "seq", "event_type", "agent_id", "step_key", "when")
    list_filter = (EventFamilyFilter, EventTypeFilter, AgentIdFilter)
    search_fields = ("=session_id",)
    search_help_text = "A request or trace id, an exact session id, or the start of an event type."
    raw_id_fields = ("request",)
    fields = ("id", "request_ref", "seq", "event_type", "agent_id", "session_id", "trace_id", "loop_index",
              "step_key", "dedupe_key", "when", "shown_payload")
    readonly_fields = fields

    def get_search_results(self, request, queryset, search_term):
        return id_or_text_search(queryset, search_term,
                                 lambda value: Q(request_id=value) | Q(trace_id=value),
                                 lambda term: Q(session_id=term) | Q(event_type__startswith=term))

    when = when_display("created_at", "created")

    shown_payload = json_display("payload", "payload")


class CheckpointKindFilter(FixedChoicesFilter):
    title = "kind"
    parameter_name = "kind"
    field = "kind"
    options = (("llm", "llm"), ("tool", "tool"), ("subagent", "subagent"), ("subagent.start", "subagent.start"))


@admin.register(StepCheckpoint)
class StepCheckpointAdmin(RequestChildAdmin, BigTableAdmin):
    list_display = ("id", "request_ref", "step_key", "kind", "duration_ms", "created")
    list_filter = (CheckpointKindFilter,)
    search_fields = ("=step_key",)
    search_help_text = "A request id or an exact step key (plan.0, tool.1.0, ...)."
    raw_id_fields = ("request",)
    fields = ("id", "request_ref", "step_key", "kind", "duration_ms", "created", "shown_output")
    readonly_fields = fields

    shown_output = json_display("output", "output")


# -- interactions ---------------------------------------------------------------------------------


@admin.register(Interaction)
class InteractionAdmin(RequestChildAdmin, OperatorActions, HistoryAdmin):
    list_display = ("interaction_id", "request_ref", "type", "status", "short_prompt", "shown_answer",
                    "created", "expires", "answer_link")
    list_filter = ("status", "type")
    search_fields = ("=interaction_id",)
    search_help_text = "An interaction id (itr_...) or a request id."
    raw_id_fields = ("request",)
    actions = ("approve_selected", "deny_selected")
    fields = ("interaction_id", "request_ref", "step_key", "type", "status", "prompt", "shown_schema",
              "timeout_seconds", "expires", "shown_default", "shown_response", "answered", "created",
              "answer_link")
    readonly_fields = fields
    ordering = ("-created_at",)

    @admin.display(description="prompt")
    def short_prompt(self, obj):
        return clipped(obj.prompt, 60)

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

    list_display = ("name", "hostname", "pid", "slots", "in_use", "draining", "live", "last_seen", "started")
    list_filter = ("hostname", "draining")
    fields = ("name", "hostname", "pid", "slots", "in_use", "draining", "started", "last_seen")
    readonly_fields = fields
    ordering = ("-last_seen_at",)

    @admin.display(boolean=True, description=f"seen in the last {Worker.LIVE_SECONDS} s")
    def live(self, obj):
        from datetime import timedelta

        from django.utils import timezone

        return obj.last_seen_at >= timezone.now() - timedelta(seconds=Worker.LIVE_SECONDS)


@admin.register(MemoryTurn)
class MemoryTurnAdmin(HistoryAdmin):
    list_display = ("short_turn_id", "created", "agent", "session_link", "short_user", "short_agent", "tokens",
                    "trace")
    list_filter = ("kind", "agent")
    search_fields = ("user_message", "agent_response")
    list_select_related = ("agent", "session")
    raw_id_fields = ("agent", "session", "request")
    paginator = EstimatedCountPaginator
    fields = ("turn_id", "agent", "session", "request", "kind", "user_message", "agent_response", "shown_usage",
              "session_total_tokens", "shown_signals", "shown_metadata", "created")
    readonly_fields = fields
    ordering = ("-created_at",)

    def get_search_results(self, request, queryset, search_term):
        value = as_uuid(search_term)
        if value is not None:
            return queryset.filter(Q(pk=value) | Q(request_id=value)), False
        return super().get_search_results(request, queryset, search_term)

    @admin.display(description="turn", ordering="turn_id")
    def short_turn_id(self, obj):
        return format_html('<span title="{}">{}</span>', obj.turn_id, str(obj.turn_id)[:8])

    @admin.display(description="session", ordering="session__session_id")
    def session_link(self, obj):
        return link(Session, obj.session_id, clipped(obj.session.session_id, 28, "clip short"))

    @admin.display(description="user")
    def short_user(self, obj):
        label = clipped(obj.user_message, 80, "clip mid")
        return format_html("{} {}", label, "(summary)") if obj.kind == MemoryTurn.Kind.SUMMARY else label

    @admin.display(description="agent answer")
    def short_agent(self, obj):
        return clipped(obj.agent_response, 80, "clip mid")

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


# -- workflows -----------------------------------------------------------------------------------


def run_page_link(run_id, label=None) -> str:
    if not run_id:
        return "–"
    return format_html('<a href="{}">{}</a>', reverse("telemetry:run", args=[run_id]), label or run_id)


class WorkflowDefinitionForm(forms.ModelForm):
    """Takes only a task list the publish API would accept (checked against the host, which
    the model does not know)."""

    def clean_tasks(self):
        try:
            return validate_tasks(self.cleaned_data.get("tasks"), code="INVALID_AGENT_WORKFLOW")
        except ServiceError as exc:
            raise ValidationError(exc.message) from None


@admin.register(WorkflowDefinition)
class WorkflowDefinitionAdmin(MashAdmin):
    form = WorkflowDefinitionForm
    list_display = ("workflow_id", "source", "agent", "task_list", "active", "updated")
    list_filter = ("source", "active")
    search_fields = ("workflow_id",)
    list_select_related = ("agent",)
    raw_id_fields = ("agent",)
    show_full_result_count = False

    @admin.display(description="tasks")
    def task_list(self, obj):
        tasks = obj.tasks if isinstance(obj.tasks, list) else []
        return clipped(" → ".join(str(t.get("task_id")) for t in tasks if isinstance(t, dict)), 60)


@admin.display(description="request")
def request_and_trace_links(self, obj):
    """A task run's column: its request's admin page and trace (– before it has a request)."""
    if not obj.request_id:
        return "–"
    return format_html("{} · {}", link(Request, obj.request_id, str(obj.request_id)[:8]), trace_link(obj.request_id))


class TaskRunInline(TimestampColumns, ReadOnly, admin.TabularInline):
    """A run's tasks on its page: status, links to each task's request and trace, output."""

    model = WorkflowTaskRun
    extra = 0
    can_delete = False
    show_change_link = True
    fields = ("index", "task_id", "agent_id", "status", "request_links", "short_output", "short_error", "started",
              "finished")
    readonly_fields = fields
    ordering = ("index",)

    request_links = request_and_trace_links

    @admin.display(description="output")
    def short_output(self, obj):
        return clipped(pretty(obj.output), 80) if obj.output is not None else "–"

    @admin.display(description="error")
    def short_error(self, obj):
        return clipped(obj.error, 60) or "–"


@admin.register(WorkflowRun)
class WorkflowRunAdmin(HistoryAdmin):
    list_display = ("short_run_id", "workflow", "status", "progress", "created", "duration", "telemetry")
    list_filter = ("status", "workflow")
    search_fields = ("=run_id", "=dedup_key")
    search_help_text = "An exact run id or dedup key."
    list_select_related = ("workflow",)
    raw_id_fields = ("workflow",)
    paginator = EstimatedCountPaginator
    inlines = (TaskRunInline,)
    fields = ("run_id", "workflow", "status", "dedup_key", "related", "progress", "created", "started", "finished",
              "duration", "error", "shown_input", "shown_output")
    readonly_fields = fields

    @admin.display(description="run", ordering="run_id")
    def short_run_id(self, obj):
        return clipped(obj.run_id, 48)

    @admin.display(description="tasks")
    def progress(self, obj):
        tasks = obj.workflow.tasks if isinstance(obj.workflow.tasks, list) else []
        at = min(obj.task_index + 1, len(tasks)) if tasks else obj.task_index + 1
        return f"task {at} of {len(tasks)}"

    @admin.display(description="duration")
    def duration(self, obj):
        return duration_text(obj.elapsed_ms())

    @admin.display(description="")
    def telemetry(self, obj):
        return run_page_link(obj.pk, "run page")

    @admin.display(description="records")
    def related(self, obj):
        return format_html_join(" · ", '<a href="{1}">{0}</a>', [
            ("run page (timeline)", reverse("telemetry:run", args=[obj.pk])),
            ("task runs", changelist_url(WorkflowTaskRun, run__run_id__exact=obj.pk)),
            ("task requests", changelist_url(Request, workflow_run__run_id__exact=obj.pk)),
            (f"{obj.last_seq} events", changelist_url(WorkflowRunEvent, run__run_id__exact=obj.pk)),
        ])

    shown_input = json_display("input", "input")

    @admin.display(description="output")
    def shown_output(self, obj):
        """The run's output with its task requests as links (the rest as indented JSON)."""
        output = obj.output
        if output is None:
            return "–"
        if not isinstance(output, dict) or not isinstance(output.get("task_requests"), dict):
            return json_block(output)
        rows = format_html_join("", "<li><strong>{}</strong>: {} · {}</li>", [
            (task_id, link(Request, request_id, str(request_id)[:8]), trace_link(request_id))
            for task_id, request_id in output["task_requests"].items()
        ])
        rest = {k: v for k, v in output.items() if k != "task_requests"}
        return format_html("<div>task requests:<ul>{}</ul></div>{}", rows, json_block(rest))


@admin.register(WorkflowRunEvent)
class WorkflowRunEventAdmin(BigTableAdmin):
    list_display = ("id", "run_short", "seq", "event_type", "task", "when")
    search_fields = ("=run__run_id",)
    search_help_text = "An exact run id."
    raw_id_fields = ("run",)
    fields = ("id", "run_ref", "seq", "event_type", "dedupe_key", "when", "shown_payload")
    readonly_fields = fields

    @admin.display(description="run", ordering="run_id")
    def run_ref(self, obj):
        return format_html("{} · {}", link(WorkflowRun, obj.run_id, obj.run_id), run_page_link(obj.run_id, "run page"))

    @admin.display(description="run", ordering="run_id")
    def run_short(self, obj):
        return link(WorkflowRun, obj.run_id, clipped(obj.run_id, 40, "clip mid"))

    @admin.display(description="task")
    def task(self, obj):
        return str((obj.payload or {}).get("task_id") or "") if isinstance(obj.payload, dict) else ""

    when = when_display("created_at", "created")
    shown_payload = json_display("payload", "payload")


@admin.register(WorkflowTaskRun)
class WorkflowTaskRunAdmin(HistoryAdmin):
    list_display = ("task_label", "run_link", "agent_id", "status", "request_links", "started", "finished")
    list_filter = ("status",)
    search_fields = ("=run__run_id", "=task_id")
    search_help_text = "An exact run id or task id."
    list_select_related = ("run",)
    raw_id_fields = ("run", "request")
    paginator = EstimatedCountPaginator
    fields = ("run_ref", "index", "task_id", "agent_id", "status", "request_links", "started", "finished", "error",
              "shown_output")
    readonly_fields = fields

    @admin.display(description="task", ordering="index")
    def task_label(self, obj):
        return format_html('<span title="{}">{}. {}</span>', str(obj), obj.index + 1, obj.task_id)

    @admin.display(description="run", ordering="run_id")
    def run_link(self, obj):
        return link(WorkflowRun, obj.run_id, clipped(obj.run_id, 40, "clip mid"))

    @admin.display(description="run", ordering="run_id")
    def run_ref(self, obj):
        return format_html("{} · {}", link(WorkflowRun, obj.run_id, obj.run_id), run_page_link(obj.run_id, "run page"))

    request_links = request_and_trace_links

    shown_output = json_display("output", "output (the task's new state)")


@admin.register(WorkflowTaskState)
class WorkflowTaskStateAdmin(HistoryAdmin):
    list_display = ("__str__", "run_ref", "updated")
    list_select_related = ("workflow",)
    raw_id_fields = ("workflow", "run")
    fields = ("workflow", "task_id", "run_ref", "updated", "shown_state")
    readonly_fields = fields

    @admin.display(description="last run", ordering="run_id")
    def run_ref(self, obj):
        return run_page_link(obj.run_id)

    shown_state = json_display("state", "state (handed to the next run)")


@admin.register(PublishedSkill)
class PublishedSkillAdmin(MashAdmin):
    list_display = ("name", "agent", "type", "updated")
    list_filter = ("type",)
    search_fields = ("name",)
    list_select_related = ("agent",)
    raw_id_fields = ("agent",)
