"""Routes of http-api.md, each under its compat spelling and the plural REST alias."""

from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from mash_api.views import agents, h2a, sessions, sse, telemetry, workflows


def both(singular: str, plural: str, suffix: str, view, name: str):
    """`agent/...` (compat) and `agents/...` (REST alias) for one view."""
    return [
        path(f"{singular}{suffix}", view, name=name),
        path(f"{plural}{suffix}", view, name=f"{name}-alias"),
    ]


# Under `agent/<agent_id>` (and `agents/<agent_id>`): (path, view, name).
AGENT_ROUTES = [
    ("", agents.AgentDetailView, "agent-detail"),
    ("/sessions", sessions.SessionListView, "session-list"),
    ("/sessions/<str:session_id>", sessions.SessionDetailView, "session-detail"),
    ("/sessions/<str:session_id>/history", sessions.SessionHistoryView, "session-history"),
    ("/sessions/<str:session_id>/signals", sessions.SessionSignalsView, "session-signals"),
    ("/sessions/<str:session_id>/compact", sessions.CompactSessionView, "session-compact"),
    ("/session/<str:session_id>/trace/<str:trace_id>/reasoning", sessions.ReasoningTraceView, "trace-reasoning"),
    ("/sessions/<str:session_id>/trace/<str:trace_id>/reasoning", sessions.ReasoningTraceView,
     "trace-reasoning-sessions"),
    ("/skill", workflows.PublishSkillView, "skill-publish"),
    ("/skill/<str:name>", workflows.PublishedSkillView, "skill-remove"),
    ("/workflow", workflows.PublishWorkflowView, "workflow-publish"),
    ("/workflow/<str:workflow_id>", workflows.PublishedWorkflowView, "workflow-remove"),
]

# Under `.../request/<request_id>/` (either spelling of each word): an action, named `request-<action>`.
REQUEST_ACTIONS = [
    ("events", sse.request_events),
    ("status", agents.RequestStatusView),
    ("resume", agents.ResumeRequestView),
    ("cancel", agents.CancelRequestView),
    ("interaction", agents.InteractionView),
]


def view_of(view):
    """A class-based view's callable (a new one per route), or the function view itself."""
    return view.as_view() if isinstance(view, type) else view


def agent_routes():
    routes = []
    for agent_word in ("agent", "agents"):
        alias = "" if agent_word == "agent" else "-alias"
        a = f"{agent_word}/<str:agent_id>"
        routes.append(path(f"{agent_word}", agents.AgentListView.as_view(), name=f"agent-list{alias}"))
        routes += [path(f"{a}{suffix}", view_of(view), name=f"{name}{alias}") for suffix, view, name in AGENT_ROUTES]
        for request_word in ("request", "requests"):
            ralias = alias or ("" if request_word == "request" else "-alias")
            r = f"{a}/{request_word}"
            routes.append(path(r, agents.SubmitRequestView.as_view(), name=f"request-submit{ralias}{request_word}"))
            routes += [path(f"{r}/<str:request_id>/{action}", view_of(view),
                            name=f"request-{action}{ralias}{request_word}") for action, view in REQUEST_ACTIONS]
    return routes

api_v1 = [
    path("health", agents.HealthView.as_view(), name="health"),
    *agent_routes(),
    *both("workflow", "workflows", "", workflows.WorkflowListView.as_view(), "workflow-list"),
    *both("workflow", "workflows", "/<str:workflow_id>/run", workflows.RunWorkflowView.as_view(), "workflow-run"),
    *both("workflow", "workflows", "/<str:workflow_id>/runs", workflows.RunListView.as_view(), "workflow-runs"),
    *both("workflow", "workflows", "/<str:workflow_id>/runs/<str:run_id>", workflows.RunDetailView.as_view(),
          "workflow-run-detail"),
    *both("workflow", "workflows", "/<str:workflow_id>/runs/<str:run_id>/events", workflows.run_events,
          "workflow-run-events"),
    *both("workflow", "workflows", "/<str:workflow_id>/runs/<str:run_id>/cancel", workflows.RunCancelView.as_view(),
          "workflow-run-cancel"),
    *both("workflow", "workflows", "/<str:workflow_id>/runs/<str:run_id>/resume", workflows.RunResumeView.as_view(),
          "workflow-run-resume"),
    path("telemetry/events", telemetry.EventListView.as_view(), name="telemetry-events"),
    path("telemetry/events/stream", sse.telemetry_event_stream, name="telemetry-events-stream"),
    path("telemetry/memory/search", telemetry.MemorySearchView.as_view(), name="telemetry-memory-search"),
    # The API request log's routes (telemetry/api/...) are mash_telemetry's: mash_project/urls.py.
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("redoc/", SpectacularRedocView.as_view(url_name="api-schema"), name="api-redoc"),
]

h2a_routes = [
    path("health", h2a.health, name="h2a-health"),
    path("agent/<str:agent_id>/request", h2a.submit, name="h2a-submit"),
    path("agent/<str:agent_id>/request/<str:request_id>", h2a.stream, name="h2a-stream"),
    path("agent/<str:agent_id>/request/<str:request_id>/interaction", h2a.interaction, name="h2a-interaction"),
    path("agent/<str:agent_id>/request/<str:request_id>/status", h2a.status, name="h2a-status"),
    path("agent/<str:agent_id>/request/<str:request_id>/resume", h2a.resume, name="h2a-resume"),
]
