"""Tails read tables by ascending id: a row whose id a tail has passed still reaches it
when it commits late (mash_api.stream_readers.IdCursor)."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, connections

from mash_api import stream_readers
from mash_api.stream_readers import IdCursor
from mash_runtime.models import RuntimeEvent


def event(req, pk: int | None = None, event_type: str = "e", agent_id: str = "primary") -> RuntimeEvent:
    seq = RuntimeEvent.objects.filter(request=req).count() + 1
    return RuntimeEvent.objects.create(id=pk, request=req, seq=seq, event_type=event_type, agent_id=agent_id,
                                       session_id="s1", trace_id=req.trace_id)


def ids(rows) -> list[int]:
    return [row.id for row in rows]


@pytest.fixture
def no_start_window(monkeypatch):
    """Only the holes a test makes: ids below its first row may be other tests' rolled-back ones."""
    monkeypatch.setattr(stream_readers, "START_WINDOW", 0)


def test_a_row_that_fills_a_hole_below_the_cursor_is_sent_late(make_request, no_start_window):
    req = make_request()
    start = event(req).id
    cursor = IdCursor(start)
    assert cursor.read(RuntimeEvent.objects.all()) == []
    after = event(req, pk=start + 2)  # start + 1 is taken by a transaction that has not committed yet
    assert ids(cursor.read(RuntimeEvent.objects.all())) == [after.id]
    assert list(cursor.gaps) == [start + 1]
    late = event(req, pk=start + 1)
    assert ids(cursor.read(RuntimeEvent.objects.all())) == [late.id]
    assert cursor.gaps == {} and cursor.read(RuntimeEvent.objects.all()) == []


def test_rows_the_filter_leaves_out_are_not_holes(make_request, no_start_window):
    req = make_request()
    cursor = IdCursor(event(req).id)
    cursor.read(RuntimeEvent.objects.all())
    other = event(req, agent_id="helper")
    mine = event(req)
    assert ids(cursor.read(RuntimeEvent.objects.filter(agent_id="primary"))) == [mine.id]
    assert cursor.gaps == {} and cursor.position == mine.id > other.id


def test_a_hole_that_never_fills_is_forgotten(make_request, no_start_window, monkeypatch):
    req = make_request()
    start = event(req).id
    cursor = IdCursor(start)
    event(req, pk=start + 3)
    cursor.read(RuntimeEvent.objects.all())
    assert sorted(cursor.gaps) == [start + 1, start + 2]
    monkeypatch.setattr(stream_readers, "GAP_SECONDS", 0.0)  # a rolled-back insert's id: it never shows
    assert cursor.read(RuntimeEvent.objects.all()) == [] and cursor.gaps == {}


def test_a_tail_opened_now_watches_the_ids_just_below_now(make_request):
    req = make_request()
    start = event(req).id
    newest = event(req, pk=start + 2)  # start + 1: taken before the tail opened, committed after
    cursor = IdCursor()
    assert cursor.read(RuntimeEvent.objects.all()) == [] and cursor.position == newest.id
    late = event(req, pk=start + 1)
    assert ids(cursor.read(RuntimeEvent.objects.all())) == [late.id]


@pytest.mark.django_db(transaction=True)
def test_an_event_committed_after_a_later_one_reaches_the_tail(make_request):
    """The real case: two writers, the one that took the lower id commits last."""
    if connection.vendor != "postgresql":
        pytest.skip("SQLite's writers take turns: ids commit in order")
    req = make_request()
    cursor = IdCursor()
    cursor.read(RuntimeEvent.objects.all())
    inserted, release = threading.Event(), threading.Event()

    def slow_writer():
        try:
            from django.db import transaction

            with transaction.atomic():
                event(req, event_type="slow")  # takes the lower id ...
                inserted.set()
                release.wait(10)  # ... and commits last
        finally:
            connections.close_all()

    writer = threading.Thread(target=slow_writer)
    writer.start()
    assert inserted.wait(10)
    fast = RuntimeEvent.objects.create(request=req, seq=99, event_type="fast", agent_id="primary", session_id="s1",
                                       trace_id=req.trace_id)
    assert [row.event_type for row in cursor.read(RuntimeEvent.objects.all())] == ["fast"]
    release.set()
    writer.join(10)
    slow = RuntimeEvent.objects.get(event_type="slow")
    assert slow.id < fast.id
    assert ids(cursor.read(RuntimeEvent.objects.all())) == [slow.id]
