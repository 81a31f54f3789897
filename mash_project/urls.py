from django.contrib import admin
from django.urls import include, path

from mash_api.urls import api_v1, h2a_routes
from mash_api.views.agents import RootView

urlpatterns = [
    path("", RootView.as_view(), name="root"),
    path("api/v1/", include(api_v1)),
    # The API request log's routes live with its model.
    path("api/v1/telemetry/api/", include("mash_telemetry.api_urls")),
    path("h2a/", include(h2a_routes)),
    path("admin/", admin.site.urls),
    path("telemetry/", include("mash_telemetry.urls")),
]

handler400 = "mash_api.errors.handler400"
handler404 = "mash_api.errors.handler404"
handler500 = "mash_api.errors.handler500"
