"""WebSocket routes, collected from the apps that own consumers."""

from mash_api.routing import websocket_urlpatterns as api_websockets

websocket_urlpatterns = [*api_websockets]
