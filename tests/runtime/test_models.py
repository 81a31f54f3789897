import threading
import uuid

import pytest
from django.db import IntegrityError, close_old_connections, connection, transaction

from mash_runtime.models import Interaction, Request, RuntimeEvent, StepCheckpoint

def append_one(request, event_type, payload, dedupe_key=None):
    """One event appended by the model alone (no mirroring, no doorbell): (event, created)."""
    return RuntimeEvent.append_many(request, [(event_type, payload, dedupe_key, None, "")])[0]



def test_it_numbers_events_from_one_without_gaps(make_request):
    req = make_request()
    seqs = [append_one(req, "agent.trace.x", {"i": i})[0].seq for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    req.refresh_from_db()
    assert req.last_seq == 5


def test_it_keeps_seq_unique_per_request(make_request):
    req = make_request()
    append_one(req, "request.accepted", {})
    with pytest.raises(IntegrityError), transaction.atomic():
        RuntimeEvent.objects.create(
            request=req, seq=1, event_type="dup", agent_id="primary", session_id="s1", trace_id=req.trace_id
        )


def test_it_numbers_each_request_separately(make_request):
    a, b = make_request(session_id="a"), make_request(session_id="b")
    append_one(a, "e", {})
    append_one(a, "e", {})
    assert append_one(b, "e", {})[0].seq == 1


def test_it_returns_the_first_event_for_a_repeated_dedupe_key(make_request):
    req = make_request()
    first, created = append_one(req, "runtime.tool.call.completed", {"n": 1}, dedupe_key="tool.0.0")
    again, created_again = append_one(req, "runtime.tool.call.completed", {"n": 2}, dedupe_key="tool.0.0")
    assert created and not created_again
    assert again.pk == first.pk and again.payload == {"n": 1}
    nxt, _ = append_one(req, "x", {})
    # The skipped duplicate must not burn a seq: streams stay contiguous.
    assert nxt.seq == 2
    assert RuntimeEvent.objects.filter(request=req).count() == 2


def test_it_rejects_a_duplicate_dedupe_key_at_the_database(make_request):
    req = make_request()
    append_one(req, "e", {}, dedupe_key="k")
    with pytest.raises(IntegrityError), transaction.atomic():
        RuntimeEvent.objects.create(
            request=req, seq=99, event_type="e", agent_id="primary", session_id="s1", trace_id=req.trace_id,
            dedupe_key="k",
        )


def test_it_allows_many_events_without_dedupe_key(make_request):
    req = make_request()
    for _ in range(3):
        append_one(req, "e", {})
    assert RuntimeEvent.objects.filter(request=req, dedupe_key__isnull=True).count() == 3


@pytest.mark.django_db(transaction=True)
def test_it_hands_out_distinct_seqs_to_concurrent_appenders(make_request):
    req = make_request()
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            local = Request.objects.select_related("agent", "session").get(pk=req.pk)
            for i in range(15):
                append_one(local, "e", {"w": n, "i": i}, dedupe_key=f"w{n}.{i % 10}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            close_old_connections()
            connection.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    seqs = list(RuntimeEvent.objects.filter(request=req).order_by("seq").values_list("seq", flat=True))
    # 4 workers x 10 distinct dedupe keys each; repeats were dropped without gaps.
    assert seqs == list(range(1, 41))


def test_it_stores_a_checkpoint_once(make_request):
    req = make_request()
    StepCheckpoint.store(req.pk, "plan.0", "llm", {"v": 1})
    kept = StepCheckpoint.store(req.pk, "plan.0", "llm", {"v": 2})
    assert kept.output == {"v": 1}
    assert StepCheckpoint.objects.filter(request=req).count() == 1


def test_it_gives_interactions_prefixed_ids(make_request):
    from django.utils import timezone

    req = make_request()
    itr = Interaction.objects.create(
        request=req, step_key="approval.0.0", type="approval", prompt="ok?", timeout_seconds=300,
        expires_at=timezone.now(),
    )
    assert itr.interaction_id.startswith("itr_") and len(itr.interaction_id) == 16
    int(itr.interaction_id[4:], 16)


def test_it_names_stream_events_for_the_wire(make_request):
    req = make_request()
    accepted, _ = append_one(req, "request.accepted", {})
    think, _ = append_one(req, "runtime.llm.think.completed", {})
    assert accepted.stream_name == "request.accepted"
    assert think.stream_name == "agent.trace"
    data = think.to_dict()
    assert data["request_seq"] == 2 and data["event_type"] == "runtime.llm.think.completed"
    assert isinstance(data["created_at"], float)


def test_insert_rows_splits_what_one_statement_cannot_hold(make_request):
    from django.db import connection

    from mash_runtime.db import insert_rows

    req = make_request()
    fields = [f for f in RuntimeEvent._meta.concrete_fields if f is not RuntimeEvent._meta.auto_field]
    size = connection.ops.bulk_batch_size(fields, [None] * 100_000)
    if size >= 100_000:
        pytest.skip("this database puts no cap on a statement's parameters")
    count = size + 5  # one batch more than fits
    rows = [RuntimeEvent(request=req, seq=i + 1, event_type="e", agent_id="a", session_id="s", trace_id=req.trace_id,
                         payload={"i": i}) for i in range(count)]
    insert_rows(rows)
    assert RuntimeEvent.objects.filter(request=req).count() == count
    assert all(row.pk for row in rows) and len({row.pk for row in rows}) == count


def _fields(obj) -> dict:
    return {f.attname: getattr(obj, f.attname) for f in obj._meta.concrete_fields}


def test_select_rows_reads_what_the_orm_reads(make_request):
    from mash_runtime.db import select_rows

    parent = make_request(session_id="p")
    req = make_request(parent=parent, metadata={"k": ["v", 1, None]}, structured_output={"type": "object"})
    orm = Request.objects.select_related("agent", "session", "parent").get(pk=req.pk)
    (found,) = select_rows(Request, {"pk": req.pk}, related=("agent", "session", "parent"))
    assert _fields(found) == _fields(orm)
    # Related rows come joined, as select_related's do: reading them takes no query.
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        assert _fields(found.agent) == _fields(orm.agent)
        assert _fields(found.session) == _fields(orm.session)
        assert found.parent.pk == parent.pk
    assert len(queries) == 0
    assert found._state.adding is False and found._state.db == "default"


def test_select_rows_joins_a_missing_optional_row_as_none(make_request):
    from mash_runtime.db import select_rows

    req = make_request()
    (found,) = select_rows(Request, {"pk": req.pk}, related=("parent",))
    assert found.parent is None and found.parent_id is None
    assert select_rows(Request, {"pk": uuid.uuid4()}, related=("agent",)) == []


def test_select_rows_can_leave_a_rows_big_columns_unread(make_request):
    from django.test.utils import CaptureQueriesContext

    from mash_runtime.db import select_rows

    req = make_request(message="a long prompt " * 100)
    with CaptureQueriesContext(connection) as queries:
        (found,) = select_rows(Request, {"pk": req.pk}, related=("agent",), only=("agent",))
        assert found.pk == req.pk and found.agent.agent_id == "primary"
    assert len(queries) == 1
    assert {"message", "response", "metadata"} <= found.get_deferred_fields()
    assert "agent_id" not in found.get_deferred_fields()
    assert found.message == req.message  # deferred, as with only(): read when asked for


def test_select_rows_pages_by_a_greater_than_key_in_order(make_request):
    from mash_runtime.db import select_rows

    req, other = make_request(session_id="a"), make_request(session_id="b")
    for i in range(6):
        append_one(req, "e", {"i": i, "nested": {"text": 'quote " and \\ slash'}})
    append_one(other, "e", {"i": 99})
    page = select_rows(RuntimeEvent, {"request": req.pk, "seq__gt": 2}, order_by="seq", limit=3)
    assert [e.seq for e in page] == [3, 4, 5]
    assert [e.payload["i"] for e in page] == [2, 3, 4]
    assert page[0].payload["nested"] == {"text": 'quote " and \\ slash'}
    assert [_fields(e) for e in page] == [_fields(e) for e in RuntimeEvent.objects.filter(request=req, seq__gt=2)[:3]]


@pytest.mark.django_db(transaction=True)
def test_a_runs_append_is_one_statement_and_yields_to_anyone_who_appended_first(make_request):
    if connection.vendor != "postgresql":
        pytest.skip("the one-statement append is PostgreSQL's")
    from django.test.utils import CaptureQueriesContext

    req = make_request()
    append_one(req, "request.accepted", {}, dedupe_key="accepted")
    req._event_keys = {"accepted"}  # what a run's request object knows of its stream
    step = StepCheckpoint(request_id=req.pk, step_key="plan.0", kind="llm", output={"text": "hi"})
    with CaptureQueriesContext(connection) as queries:
        events = RuntimeEvent.append_in_one_statement(req, [("a", {"i": 1}, "k1", 0, "plan.0"), ("b", {}, None, 0, "")],
                                                      along=[step])
    assert len(queries) == 1  # no BEGIN, no COMMIT: the statement commits on its own
    assert [e.seq for e in events] == [2, 3] and all(e.pk for e in events) and req.last_seq == 3
    assert StepCheckpoint.objects.filter(request=req, step_key="plan.0").exists()
    assert list(RuntimeEvent.objects.filter(request=req).values_list("seq", flat=True)) == [1, 2, 3]

    other = Request.objects.get(pk=req.pk)  # someone else appends: this object's view is stale
    append_one(other, "request.interaction.ack", {})
    late = StepCheckpoint(request_id=req.pk, step_key="tool.0", kind="tool", output={})
    assert RuntimeEvent.append_in_one_statement(req, [("c", {}, "k3", 0, "")], along=[late]) is None
    assert RuntimeEvent.objects.filter(request=req).count() == 4  # nothing written: the caller goes the long way
    assert not StepCheckpoint.objects.filter(request=req, step_key="tool.0").exists()
    assert RuntimeEvent.append_in_one_statement(req, [("d", {}, "k1", 0, "")]) is None  # a key it already has


@pytest.mark.django_db(transaction=True)
def test_a_new_request_in_a_known_session_is_one_statement():
    from django.test.utils import CaptureQueriesContext

    from mash_runtime.models import Agent, Session
    from mash_runtime.services import create_request

    agent = Agent.objects.create(agent_id="primary", role="primary")
    first = create_request(agent, "one", session_id="s")  # a new session: made the ordinary way
    with CaptureQueriesContext(connection) as queries:
        second = create_request(agent, "two", session_id="s", metadata={"k": "v"})
    if connection.vendor == "postgresql":
        assert len(queries) == 1  # no BEGIN, no COMMIT: the statement commits on its own
    assert (first.session_seq, second.session_seq) == (1, 2)
    assert second.session.pk == first.session.pk and second.session.session_id == "s"
    stored = Request.objects.get(pk=second.pk)
    assert (stored.session_id, stored.session_seq, stored.last_seq, stored.metadata) == (first.session.pk, 2, 1, {"k": "v"})
    (event,) = RuntimeEvent.objects.filter(request=second)
    assert (event.seq, event.event_type, event.dedupe_key, event.session_id) == (1, "request.accepted", "accepted", "s")
    assert event.payload == {"request_id": str(second.pk), "agent_id": "primary", "session_id": "s", "status": "accepted"}
    assert Session.objects.get(pk=first.session.pk).last_request_seq == 2
    # The object the caller gets back appends on from there, as after the ordinary path.
    assert append_one(second, "x", {})[0].seq == 2 and second.last_seq == 2
    assert append_one(first, "x", {})[0].seq == 2
