"""The telemetry pages: staff only, server-rendered, thin over `page_data` and `trace`.

Every view is wrapped in `staff_required`: anonymous visitors go to the login page,
signed-in users without staff status get a 403, and a page that is not there is the
telemetry 404 (layout and navigation included). The few POST views (answer, cancel,
resume) also need the matching model permission, as the admin actions do.
"""

from __future__ import annotations

import datetime as dt
import uuid
from functools import wraps
from pathlib import Path

from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.views import redirect_to_login
from django.core.paginator import InvalidPage
from django.http import Http404, HttpResponse, HttpResponsePermanentRedirect
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import Resolver404, resolve, reverse, reverse_lazy
from django.utils import timezone
from django.views import static
from django.views.decorators.http import require_GET, require_POST

from mash_runtime import services
from mash_runtime.errors import ServiceError
from mash_runtime.models import Interaction, Request
from mash_runtime.presentation.forms import AnswerForm
from mash_runtime.presentation.paginators import EstimatedCountPaginator
from mash_telemetry import page_data
from mash_telemetry.forms import (
    RANGES,
    ApiLogFilterForm,
    MemorySearchForm,
    RequestFilterForm,
    RunFilterForm,
    SessionFilterForm,
)
from mash_telemetry.models import ApiRequestLog
from mash_telemetry.trace import build_trace

ASSETS_DIR = Path(__file__).resolve().parent / "static" / "mash_telemetry"
PAGE_SIZE = 50


def staff_required(view):
    @wraps(view)
    def wrapped(request, *args, **kwargs):
        user = request.user
        if not user.is_authenticated:
            return redirect_to_login(request.get_full_path(), reverse("telemetry:login"))
        if not (user.is_active and user.is_staff):
            return render(request, "telemetry/403.html", status=403)
        try:
            return view(request, *args, **kwargs)
        except Http404 as exc:
            return not_found_page(request, str(exc))

    return wrapped


def not_found_page(request, reason: str = ""):
    return render(request, "telemetry/404.html", {"reason": reason, "path": request.path}, status=404)


def may_operate(user, model: str) -> bool:
    return user.has_perm(f"mash_runtime.change_{model}")


def paginate(request, qs, size: int = PAGE_SIZE):
    paginator = EstimatedCountPaginator(qs, size)
    try:
        return paginator.page(request.GET.get("page") or 1)
    except InvalidPage:
        return paginator.page(1)


# -- sign in, assets ---------------------------------------------------------------------


class LoginView(auth_views.LoginView):
    template_name = "telemetry/login.html"
    next_page = reverse_lazy("telemetry:overview")


class LogoutView(auth_views.LogoutView):
    next_page = reverse_lazy("telemetry:login")


@require_GET
def asset(request, name: str):
    """The pages' stylesheet and scripts, served by the app itself: `mash serve` runs daphne,
    which serves no static files, and the pages must look right there without extra setup."""
    response = static.serve(request, name, document_root=str(ASSETS_DIR))
    response["Cache-Control"] = "max-age=3600"
    return response


# -- overview ------------------------------------------------------------------------------


@require_GET
@staff_required
def overview(request):
    now = timezone.now()
    agents = page_data.agent_rows(now - dt.timedelta(hours=24))
    per_hour, legend, total_24h = page_data.requests_per_hour_chart(now)
    return render(request, "telemetry/overview.html", {
        "nav": "overview",
        "health": page_data.host_health(now),
        "agents": agents,
        "per_hour_chart": per_hour,
        "per_hour_legend": legend,
        "requests_24h": total_24h,
        "tokens_chart": page_data.tokens_per_agent_chart(agents),
        "tokens_24h": sum(a.tokens_24h for a in agents),
        "errors": page_data.latest_errors(),
        "recent": page_data.recent_requests(),
    })


# -- requests and traces ----------------------------------------------------------------------


@require_GET
@staff_required
def request_list(request):
    form = RequestFilterForm(request.GET or None, agents=page_data.agent_choices())
    filters = form.cleaned_data if form.is_valid() else {}
    qs = page_data.filter_requests(
        agent=filters.get("agent", ""), status=filters.get("status", ""), session=filters.get("session", ""),
        since=created_since(filters), until=filters.get("until"), q=filters.get("q", ""),
        top_level=filters.get("top", False),
    )
    page = paginate(request, qs)
    splits = page_data.time_splits(list(page.object_list))
    rows = [(r, splits.get(r.pk)) for r in page.object_list]
    return render(request, "telemetry/requests.html", {"nav": "requests", "form": form, "page": page, "rows": rows})


def created_since(filters: dict):
    if filters.get("range"):
        return timezone.now() - dt.timedelta(hours=RANGES[filters["range"]])
    return filters.get("since")


def _trace_context(request, req: Request) -> dict:
    trace = build_trace(req)
    steps_ms = sum(step.total_ms or 0 for step in trace.steps) if trace.steps else None
    return {
        "nav": "requests",
        "trace": trace,
        "req": req,
        "split": page_data.request_time_split(req, steps_ms),
        "task": page_data.task_of_request(req),
        "live": not req.is_terminal,
        "can_operate": may_operate(request.user, "request"),
        "can_answer": may_operate(request.user, "interaction"),
        "pending": [(itr, AnswerForm(itr, prefix=itr.interaction_id)) for itr in trace.pending_interactions()],
    }


@require_GET
@staff_required
def request_detail(request, request_id: uuid.UUID):
    req = get_object_or_404(Request.objects.select_related("agent", "session", "parent"), pk=request_id)
    context = _trace_context(request, req)
    if request.GET.get("fragment"):
        # The live trace asks for this after each WebSocket frame and swaps it in place.
        return render(request, "telemetry/_trace_body.html", context)
    return render(request, "telemetry/trace.html", context)


@require_GET
@staff_required
def request_events(request, request_id: uuid.UUID):
    req = get_object_or_404(Request.objects.select_related("agent", "session"), pk=request_id)
    events, cut = page_data.request_events(req)
    return render(request, "telemetry/request_events.html", {"nav": "requests", "req": req, "events": events,
                                                             "cut": cut})


@require_GET
@staff_required
def trace_by_id(request, trace_id: uuid.UUID):
    req = get_object_or_404(Request.objects.only("pk"), trace_id=trace_id)
    return redirect("telemetry:request", request_id=req.pk)


def operated(request, request_id, call, done) -> HttpResponse:
    """An operator's service call from the request page: its refusal (`ServiceError`) or
    `done(result)` as the page's message, then back to the page."""
    try:
        result = call()
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, done(result))
    return redirect("telemetry:request", request_id=request_id)


@require_POST
@staff_required
def request_action(request, request_id: uuid.UUID, action: str):
    req = get_object_or_404(Request.objects.select_related("agent"), pk=request_id)
    if not may_operate(request.user, "request"):
        return render(request, "telemetry/403.html", status=403)
    operation = {"cancel": services.cancel_request, "resume": services.resume_request}.get(action)
    if operation is None:
        raise Http404("unknown action")
    return operated(request, req.pk, lambda: operation(req.pk),
                    lambda result: f"{action.capitalize()}: request is now {result['status']}.")


@require_POST
@staff_required
def answer(request, request_id: uuid.UUID, interaction_id: str):
    req = get_object_or_404(Request, pk=request_id)
    if not may_operate(request.user, "interaction"):
        return render(request, "telemetry/403.html", status=403)
    # answer_interaction checks that the interaction belongs to this request or one of its subagent requests.
    itr = get_object_or_404(Interaction, pk=interaction_id)
    form = AnswerForm(itr, request.POST, prefix=itr.interaction_id)
    if not form.is_valid():
        messages.error(request, "; ".join(e for errors in form.errors.values() for e in errors))
        return redirect("telemetry:request", request_id=req.pk)
    return operated(request, req.pk, lambda: services.answer_interaction(req.pk, itr.interaction_id, form.answer()),
                    lambda _: f"Answered {itr.interaction_id}.")


# -- sessions ----------------------------------------------------------------------------------


@require_GET
@staff_required
def session_list(request):
    form = SessionFilterForm(request.GET or None, agents=page_data.agent_choices())
    filters = form.cleaned_data if form.is_valid() else {}
    qs = page_data.filter_sessions(agent=filters.get("agent", ""), q=filters.get("q", ""))
    return render(request, "telemetry/sessions.html", {"nav": "sessions", "form": form, "page": paginate(request, qs)})


@require_GET
@staff_required
def session_detail(request, pk: int):
    view = page_data.session_view(pk)
    if view is None:
        raise Http404("no such session")
    return render(request, "telemetry/session.html", {"nav": "sessions", "view": view, "s": view.session})


# -- workflows ---------------------------------------------------------------------------------


@require_GET
@staff_required
def run_list(request):
    workflows = page_data.workflow_choices()
    form = RunFilterForm(request.GET or None, workflows=workflows)
    filters = form.cleaned_data if form.is_valid() else {}
    qs = page_data.filter_runs(workflow=filters.get("workflow", ""), status=filters.get("status", ""),
                             since=created_since(filters), until=filters.get("until"), q=filters.get("q", ""))
    return render(request, "telemetry/workflows.html", {
        "nav": "workflows", "form": form, "page": paginate(request, qs),
        "workflows": page_data.workflow_rows(timezone.now() - dt.timedelta(hours=24)),
    })


@require_GET
@staff_required
def run_detail(request, run_id: str):
    view = page_data.run_view(run_id, all_events=request.GET.get("events") == "all")
    if view is None:
        raise Http404(f"No workflow run {run_id}")
    return render(request, "telemetry/run.html", {"nav": "workflows", "view": view, "run": view.run})


# -- live tail ---------------------------------------------------------------------------------


@require_GET
@staff_required
def live(request):
    agents = page_data.agent_choices()
    agent = request.GET.get("agent", "")
    if agent not in agents:
        agent = ""
    return render(request, "telemetry/live.html", {
        "nav": "live", "agents": agents, "agent": agent, "events": page_data.latest_events(agent, limit=50),
    })


# -- memory search, API request log -------------------------------------------------------------


@require_GET
@staff_required
def memory(request):
    form = MemorySearchForm(request.GET or None, agents=page_data.agent_choices())
    hits, error, terms = None, "", []
    if form.is_valid() and form.cleaned_data["q"].strip():
        data = form.cleaned_data
        terms = page_data.memory_terms(data["q"].strip())
        try:
            hits = page_data.search_memory(data["q"].strip(), data.get("who") or "user", data.get("agent", ""),
                                         data.get("session", ""))
        except ServiceError as exc:
            error = exc.message
    return render(request, "telemetry/memory.html", {"nav": "memory", "form": form, "hits": hits, "error": error,
                                                     "terms": terms, "searched": hits is not None or bool(error)})


@require_GET
@staff_required
def api_log(request):
    form = ApiLogFilterForm(request.GET or None)
    filters = form.cleaned_data if form.is_valid() else {}
    qs = page_data.filter_api_log(filters.get("method", ""), (filters.get("status") or "").strip(),
                                (filters.get("path") or "").strip())
    rows, next_before = page_data.keyset_page(qs, filters.get("before"))
    page_data.attach_api_log_links(rows)
    return render(request, "telemetry/api_log.html", {"nav": "api", "form": form, "rows": rows,
                                                      "next_before": next_before,
                                                      "paged": bool(filters.get("before"))})


@require_GET
@staff_required
def api_log_detail(request, pk: int):
    row = get_object_or_404(ApiRequestLog, pk=pk)
    page_data.attach_api_log_links([row])
    return render(request, "telemetry/api_log_detail.html", {"nav": "api", "row": row})


def not_found(request, rest: str = ""):
    """Every other path under /telemetry/: the telemetry 404, or the path with its slash
    when that is a page (what APPEND_SLASH would do, which a catch-all route stops).

    Open to anyone, like any 404: it shows nothing but the address asked for, and the
    navigation only to staff (the layout's rule)."""
    if not request.path.endswith("/"):
        try:
            match = resolve(request.path_info + "/")
        except Resolver404:
            match = None
        if match is not None and match.url_name != "not-found":
            query = request.META.get("QUERY_STRING", "")
            return HttpResponsePermanentRedirect(request.path + "/" + (f"?{query}" if query else ""))
    return not_found_page(request, "There is no telemetry page at this address.")
