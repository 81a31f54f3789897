"""The API request log in the admin: read-only, filterable, searchable, no full counts."""

from __future__ import annotations

from django.contrib import admin

from mash_telemetry.models import ApiRequestLog

CHANGELIST = "/admin/mash_telemetry/apirequestlog/"


def test_it_lists_filters_and_searches_rows(admin_client, make_log):
    make_log("/api/v1/agent/primary", "GET", 200)
    make_log("/h2a/agent/primary/request", "POST", 500)
    page = admin_client.get(CHANGELIST).content.decode()
    assert "/api/v1/agent/primary" in page and "/h2a/agent/primary/request" in page

    page = admin_client.get(CHANGELIST, {"status_code": 500}).content.decode()
    assert "/h2a/agent/primary/request" in page and "/api/v1/agent/primary<" not in page
    page = admin_client.get(CHANGELIST, {"method": "GET"}).content.decode()
    assert "/api/v1/agent/primary" in page and "/h2a/agent/primary/request" not in page
    page = admin_client.get(CHANGELIST, {"q": "h2a"}).content.decode()
    assert "/h2a/agent/primary/request" in page and "/api/v1/agent/primary<" not in page


def test_it_is_read_only(admin_client, make_log):
    row = make_log("/api/v1/agent", request_headers={"Authorization": "[redacted]"})
    model_admin = admin.site._registry[ApiRequestLog]
    assert model_admin.show_full_result_count is False
    assert admin_client.get(f"{CHANGELIST}add/").status_code == 403
    response = admin_client.get(f"{CHANGELIST}{row.pk}/change/")
    assert response.status_code == 200
    assert 'name="_save"' not in response.content.decode()  # a view page, no save button
    response = admin_client.post(f"{CHANGELIST}{row.pk}/change/", {"path": "/changed"})
    assert response.status_code == 403
    assert ApiRequestLog.objects.get(pk=row.pk).path == "/api/v1/agent"
