from django.urls import path

from mash_api.consumers import RequestStreamConsumer, TelemetryTailConsumer

websocket_urlpatterns = [
    path("ws/v1/agent/<str:agent_id>/request/<str:request_id>/", RequestStreamConsumer.as_asgi()),
    path("ws/v1/agents/<str:agent_id>/requests/<str:request_id>/", RequestStreamConsumer.as_asgi()),
    path("ws/v1/telemetry/", TelemetryTailConsumer.as_asgi()),
]
