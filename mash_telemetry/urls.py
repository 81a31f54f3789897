"""Telemetry pages, mounted at /telemetry/ by mash_project.urls (namespace `telemetry`)."""

from django.urls import path, re_path

from mash_telemetry import views

app_name = "telemetry"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("login/", views.LoginView.as_view(), name="login"),
    path("logout/", views.LogoutView.as_view(), name="logout"),
    path("assets/<str:name>", views.asset, name="asset"),
    path("requests/", views.request_list, name="requests"),
    path("requests/<uuid:request_id>/", views.request_detail, name="request"),
    path("requests/<uuid:request_id>/events/", views.request_events, name="request-events"),
    path("requests/<uuid:request_id>/<str:action>/", views.request_action, name="request-action"),
    path("requests/<uuid:request_id>/interactions/<str:interaction_id>/answer/", views.answer, name="answer"),
    path("traces/<uuid:trace_id>/", views.trace_by_id, name="trace"),
    path("sessions/", views.session_list, name="sessions"),
    path("sessions/<int:pk>/", views.session_detail, name="session"),
    path("workflows/", views.run_list, name="workflows"),
    path("workflows/runs/<str:run_id>/", views.run_detail, name="run"),
    path("live/", views.live, name="live"),
    path("memory/", views.memory, name="memory"),
    path("api-log/", views.api_log, name="api-log"),
    path("api-log/<int:pk>/", views.api_log_detail, name="api-log-entry"),
    # Last: any other address under /telemetry/ gets the telemetry 404, with its navigation.
    re_path(r"^(?P<rest>.*)$", views.not_found, name="not-found"),
]
