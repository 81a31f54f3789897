"""WebSocket routes, collected from the apps that own consumers."""

websocket_urlpatterns: list = []
