"""Two rules of the telemetry pages: one clock (every timestamp in the server's time zone,
labelled, seconds shown, relative time next to it, full timestamp on hover), and where a
request's time went (queued, waiting for the session, running, waiting for input)."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from django.utils import timezone

from mash_runtime.models import Interaction, Request, RuntimeEvent
from mash_runtime.presentation import clock
from mash_telemetry.page_data import split_time
from tests.runtime.conftest import engine  # noqa: F401  (the in-process engine fixture)
from tests.telemetry.test_pages import client_for, html, runs, users  # noqa: F401  (fixtures)

MOMENT = dt.datetime(2026, 12, 2, 8, 4, 49, 817_000, tzinfo=dt.timezone.utc)


# -- the clock -------------------------------------------------------------------------------


def test_a_time_is_shown_in_the_server_zone_with_its_label_seconds_and_the_full_stamp_on_hover(settings):
    settings.TIME_ZONE = "UTC"
    html_text = str(clock.when(MOMENT, now=MOMENT + dt.timedelta(minutes=3)))
    assert "Dec 02 08:04:49 <span class=\"tz\">UTC</span>" in html_text
    assert 'title="2026-12-02 08:04:49.817 UTC (UTC+00:00) · 3 min ago"' in html_text
    assert 'datetime="2026-12-02T08:04:49.817+00:00"' in html_text
    assert '<span class="ago">3 min ago</span>' in html_text


@pytest.mark.parametrize("zone, shown, label, offset", [
    ("America/New_York", "Dec 02 03:04:49", "EST", "-05:00"),
    ("Asia/Kolkata", "Dec 02 13:34:49", "IST", "+05:30"),
    ("America/Sao_Paulo", "Dec 02 05:04:49", "UTC-03:00", "-03:00"),  # a zone without an abbreviation
])
def test_the_server_zone_decides_not_the_reader(settings, zone, shown, label, offset):
    settings.TIME_ZONE = zone
    with timezone.override(zone):
        text = str(clock.when(MOMENT))
        assert f'{shown} <span class="tz">{label}</span>' in text
        assert f"(UTC{offset})" in text
        labels = clock.zone_attrs()
        assert labels["zone"] == zone and f'"{offset}": "{label}"' in labels["labels"]


def test_epoch_seconds_read_like_datetimes_and_nothing_is_a_dash():
    assert str(clock.when(MOMENT.timestamp(), ago=False)) == str(clock.when(MOMENT, ago=False))
    assert clock.when(None) == "–" and clock.when("") == "–"


def test_relative_times_read_naturally():
    now = MOMENT
    assert clock.relative(now, now) == "just now"
    assert clock.relative(now - dt.timedelta(seconds=42), now) == "42 s ago"
    assert clock.relative(now - dt.timedelta(hours=5), now) == "5 h ago"
    assert clock.relative(now + dt.timedelta(minutes=2), now) == "in 2 min"


def test_every_page_labels_its_times_by_the_server_zone(runs, users, settings):  # noqa: F811
    from mash_telemetry.models import ApiRequestLog

    settings.TIME_ZONE = "Asia/Kolkata"
    staff = client_for(users["operator"])
    req = Request.objects.get(pk=runs["main"])
    ApiRequestLog.objects.create(method="GET", path="/api/v1/health", status_code=200, duration_ms=1.0)
    created = timezone.localtime(req.created_at, timezone=dt.timezone(dt.timedelta(hours=5, minutes=30)))
    expected = f"{clock.MONTHS[created.month - 1]} {created.day:02d} {created:%H:%M:%S}"
    with timezone.override("Asia/Kolkata"):
        for url in ("/telemetry/requests/", f"/telemetry/requests/{req.pk}/", "/telemetry/"):
            page = html(staff.get(url))
            assert f'{expected} <span class="tz">IST</span>' in page, url
        live = html(staff.get("/telemetry/live/"))
        assert 'data-zone="Asia/Kolkata"' in live and "&quot;+05:30&quot;: &quot;IST&quot;" in live
        assert "times in IST" in live
        # No page prints a time without its zone: every <time> has its label.
        for url in ("/telemetry/sessions/", "/telemetry/api-log/", "/telemetry/live/",
                    f"/telemetry/requests/{req.pk}/events/"):
            page = html(staff.get(url))
            stamps = re.findall(r'<time class="when"[^>]*>([^<]*)<span class="tz">([^<]*)</span>', page)
            assert stamps, url
            assert all(label == "IST" and re.search(r"\d\d:\d\d:\d\d $", text) for text, label in stamps), url
        # And so does the admin.
        listing = html(staff.get("/admin/mash_runtime/request/"))
        assert f'{expected} <span class="tz">IST</span>' in listing


# -- where the time went ------------------------------------------------------------------------


def fake_request(created: float, finished: float | None, status: str = "completed") -> Request:
    as_dt = lambda s: dt.datetime.fromtimestamp(s, tz=dt.timezone.utc)  # noqa: E731
    return Request(created_at=as_dt(created), started_at=as_dt(created), status=status,
                   finished_at=as_dt(finished) if finished is not None else None)


def test_the_split_tells_queue_session_wait_running_and_input_apart():
    req = fake_request(1000.0, 1005.0)
    marks = [("request.accepted", 1000.0), ("request.waiting", 1000.1), ("request.started", 1002.0),
             ("request.interaction.create", 1002.5), ("request.interaction.ack", 1004.5),
             ("request.completed", 1005.0)]
    split = split_time(req, marks, steps_ms=30)
    assert (split.queued_ms, split.session_ms, split.running_ms, split.input_ms) == (100, 1900, 1000, 2000)
    assert split.total_ms == 5000 and split.waiting_ms == 4000 and split.overhead_ms == 970
    assert [p[0] for p in split.parts()] == ["queued", "session", "running", "input"]


def test_two_questions_at_once_count_once_and_a_resume_counts_the_stop():
    req = fake_request(0.0, 10.0)
    marks = [("request.started", 1.0), ("request.interaction.create", 2.0), ("request.interaction.create", 2.5),
             ("request.interaction.ack", 3.0), ("request.interaction.ack", 4.0), ("request.error", 5.0),
             ("request.started", 7.0), ("request.completed", 10.0)]
    split = split_time(req, marks)
    assert (split.queued_ms, split.running_ms, split.input_ms, split.stopped_ms) == (1000, 5000, 2000, 2000)
    assert split.total_ms == 10_000


def test_an_unfinished_request_is_split_up_to_now():
    req = fake_request(0.0, None, status="awaiting_input")
    split = split_time(req, [("request.started", 1.0), ("request.interaction.create", 2.0)],
                       now=dt.datetime.fromtimestamp(12.0, tz=dt.timezone.utc))
    assert (split.running_ms, split.input_ms, split.total_ms, split.finished) == (1000, 10000, 12000, False)


def test_the_trace_and_the_list_show_where_a_queued_request_spent_its_time(engine, users):  # noqa: F811
    first = engine.submit({"script": [{"tool_calls": [{"name": "write_file", "arguments": {
        "path": "/tmp/mash-never-written", "text": "x"}}]}, "ok"]}, session_id="busy")
    behind = engine.submit({"script": ["second"]}, session_id="busy")
    engine.drain()  # the first waits for its approval, the second for the session
    itr = Interaction.objects.get(request_id=first, status="pending")
    from mash_runtime.services import answer_interaction

    answer_interaction(first, itr.interaction_id, "deny")
    engine.drain()
    assert {Request.objects.get(pk=first).status, Request.objects.get(pk=behind).status} == {"completed"}
    assert RuntimeEvent.objects.filter(request_id=behind, event_type="request.waiting").exists()
    staff = client_for(users["staff"])
    page = html(staff.get(f"/telemetry/requests/{behind}/"))
    split = page.split('id="time-split"', 1)[1].split("</dd>", 1)[0]
    assert "<svg" in split and "waiting for the session" in split and "running" in split
    page = html(staff.get(f"/telemetry/requests/{first}/"))
    assert "waiting for input" in page.split('id="time-split"', 1)[1].split("</dd>", 1)[0]
    listing = html(staff.get("/telemetry/requests/"))
    row = listing.split(f'data-request="{behind}"', 1)[1].split("</tr>", 1)[0]
    assert 'class="split"' in row and "waiting for the session" in row and "waiting</span>" in row
