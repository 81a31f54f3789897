"""Each statement written out in mash_runtime/db.py gives what its ORM equivalent (its
docstring's) gives, on SQLite and PostgreSQL; the PostgreSQL-only one-statement paths store
what the portable paths store."""

from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.db import connection
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from mash_runtime import db
from mash_runtime.models import Agent, MemoryTurn, PublishedSkill, Request, RuntimeEvent, Session

pytestmark = pytest.mark.django_db(transaction=True)

VOLATILE = {"id", "request_id", "trace_id", "created_at", "started_at", "finished_at", "session_id"}

def append_one(request, event_type, payload, dedupe_key=None):
    """One event appended by the model alone (no mirroring, no doorbell): (event, created)."""
    return RuntimeEvent.append_many(request, [(event_type, payload, dedupe_key, None, "")])[0]



def stored(obj) -> dict:
    row = type(obj).objects.filter(pk=obj.pk).values().get()
    return {k: v for k, v in row.items() if k not in VOLATILE}


def test_a_request_made_in_one_statement_is_stored_as_the_portable_path_stores_it(monkeypatch):
    from mash_runtime import services

    agent = Agent.objects.create(agent_id="primary", role="primary")
    Session.objects.create(agent=agent, session_id="fast")
    Session.objects.create(agent=agent, session_id="slow")
    fast = services.create_request(agent, "hello", session_id="fast", metadata={"k": [1, "two"]})
    monkeypatch.setattr(services, "insert_request_in_one_statement", lambda *args, **kwargs: False)
    slow = services.create_request(agent, "hello", session_id="slow", metadata={"k": [1, "two"]})

    assert stored(fast) == stored(slow)
    assert (fast.session_seq, slow.session_seq) == (1, 1)
    fast_events = [stored(e) for e in RuntimeEvent.objects.filter(request=fast)]
    slow_events = [stored(e) for e in RuntimeEvent.objects.filter(request=slow)]
    for event in fast_events + slow_events:
        event.pop("payload")["request_id"]  # each names its own request
    assert fast_events == slow_events and len(fast_events) == 1
    assert (Session.objects.get(session_id="fast").last_request_seq,
            Session.objects.get(session_id="slow").last_request_seq) == (1, 1)


def test_a_runs_one_statement_append_stores_what_append_many_stores(make_request):
    items = [("runtime.step", {"text": 'quote " \\ slash', "n": [1, 2.5]}, "k1", 0, "plan.0"),
             ("runtime.other", {}, None, None, "")]
    fast_req, slow_req = make_request(session_id="a"), make_request(session_id="b")
    for req in (fast_req, slow_req):
        append_one(req, "request.accepted", {}, dedupe_key="accepted")
        req._event_keys = {"accepted"}
    fast = RuntimeEvent.append_in_one_statement(fast_req, items)
    if connection.vendor != "postgresql":
        assert fast is None  # SQLite: the caller takes append_many
        fast = [event for event, _ in RuntimeEvent.append_many(fast_req, items)]
    slow = [event for event, _ in RuntimeEvent.append_many(slow_req, items)]
    assert [stored(e) for e in fast] == [stored(e) for e in slow]
    assert fast_req.last_seq == slow_req.last_seq == 3


def put_in_case(case: str, req, earlier, now) -> None:
    """Bring `req` (behind `earlier` in its session) into the state a claim case names."""
    changes = {
        "expired": (req, {"lease_owner": "gone", "lease_expires_at": now - timedelta(seconds=5)}),
        "held": (req, {"lease_owner": "other", "lease_expires_at": now + timedelta(seconds=30)}),
        "terminal": (req, {"status": Request.Status.FAILED}),
        "behind_an_earlier_one": (earlier, {"status": Request.Status.RUNNING}),
        "started_before": (req, {"started_at": now - timedelta(seconds=5)}),
        "cancel_requested": (req, {"cancel_requested": True}),
        "subagent": (req, {"parent": earlier}),
    }
    if case in changes:
        row, values = changes[case]
        Request.objects.filter(pk=row.pk).update(**values)


@pytest.mark.parametrize("case", ["free", "expired", "held", "terminal", "behind_an_earlier_one"])
def test_the_claims_update_matches_what_its_orm_filter_finds(make_request, case):
    now = timezone.now()
    earlier = make_request(session_id="s", status=Request.Status.COMPLETED)
    req = make_request(session_id="s")
    put_in_case(case, req, earlier, now)
    unfinished_earlier = Request.objects.filter(session=OuterRef("session"), session_seq__lt=OuterRef("session_seq"),
                                                ).exclude(status__in=Request.TERMINAL)
    orm_finds = (Request.objects.filter(pk=req.pk).exclude(status__in=Request.TERMINAL)
                 .filter(Q(lease_expires_at=None) | Q(lease_expires_at__lt=now))
                 .filter(~Exists(unfinished_earlier)).exists())
    before = Request.objects.get(pk=req.pk).last_seq

    taken = db.take_lease(Request, req.pk, "me", now, 30)

    assert (taken is not None) == orm_finds == (case in ("free", "expired"))
    after = Request.objects.get(pk=req.pk)
    if taken is not None:
        assert (after.lease_owner, after.status, after.last_seq, taken) == ("me", "running", before + 1, before + 1)
    else:
        assert after.last_seq == before and after.lease_owner != "me"


def test_recent_history_is_what_its_two_orm_queries_give(make_request):
    reqs = [make_request(session_id="h", message=f"m{n}") for n in range(6)]
    session = reqs[0].session

    def turn(req, kind=MemoryTurn.Kind.TURN, response=None):
        return MemoryTurn.objects.create(agent=req.agent, session=session, request=req, kind=kind,
                                         user_message=req.message, agent_response=response or f"r-{req.message}")

    turn(reqs[0])
    turn(reqs[1])
    summary = MemoryTurn.objects.create(agent=reqs[0].agent, session=session, kind=MemoryTurn.Kind.SUMMARY,
                                        agent_response="the summary")
    for req in reqs[2:5]:
        turn(req)

    rows = db.recent_history(MemoryTurn, Request, session.pk, before_seq=reqs[5].session_seq, limit=2)

    newest_summary = MemoryTurn.objects.filter(session=session, kind=MemoryTurn.Kind.SUMMARY).order_by(
        "-created_at").first()
    recent = (MemoryTurn.objects.filter(session=session, kind=MemoryTurn.Kind.TURN,
                                        request__session_seq__lt=reqs[5].session_seq,
                                        created_at__gt=newest_summary.created_at)
              .order_by("-request__session_seq")[:2])
    expected = [(0, "", newest_summary.agent_response)] + sorted(
        (t.request.session_seq, t.user_message, t.agent_response) for t in recent)
    assert [tuple(row) for row in rows] == expected
    assert summary.agent_response == rows[0][2] and [row[1] for row in rows[1:]] == ["m3", "m4"]


def test_published_skill_rows_are_what_the_orm_reads():
    agent = Agent.objects.create(agent_id="skilled", role="primary")
    other = Agent.objects.create(agent_id="other", role="primary")
    for name in ("zeta", "alpha"):
        PublishedSkill.objects.create(agent=agent, name=name, description=f"d {name}", content=f"c {name}")
    PublishedSkill.objects.create(agent=other, name="beta", content="not mine")

    rows = db.published_skill_rows(PublishedSkill, "skilled")

    orm = PublishedSkill.objects.filter(agent__agent_id="skilled").order_by("name").values_list(
        "name", "description", "content", "location")
    assert [tuple(row) for row in rows] == list(orm)
    assert db.published_skill_rows(PublishedSkill, "nobody") == []


class _Host:
    """A host of one agent, "primary", as lifecycle asks it (`agents`, `get`)."""

    agents = {"primary": SimpleNamespace(config=SimpleNamespace(conversation_history_turns=3))}

    def get(self, agent_id):
        return self.agents.get(agent_id)


def test_a_first_start_claimed_in_one_statement_is_stored_as_the_portable_claim_stores_it(make_request, monkeypatch):
    from mash_runtime.run import lifecycle

    monkeypatch.setattr(lifecycle, "get_host", _Host)
    fixed = timezone.now()
    monkeypatch.setattr(lifecycle.timezone, "now", lambda: fixed)  # the leases' expiry alike
    fast_req, slow_req = make_request(session_id="fast"), make_request(session_id="slow")
    for req in (fast_req, slow_req):
        append_one(req, "request.accepted", {}, dedupe_key="accepted")
    leases = []
    monkeypatch.setattr(lifecycle, "take_lease", lambda *args: leases.append(args) or db.take_lease(*args))
    fast = lifecycle._claim(str(fast_req.pk), "me")
    # PostgreSQL took the one statement; SQLite has only the portable claim.
    assert len(leases) == (0 if connection.vendor == "postgresql" else 1)
    monkeypatch.setattr(lifecycle, "claim_first_start", lambda *args, **kwargs: None)
    slow = lifecycle._claim(str(slow_req.pk), "me")

    assert stored(fast.request) == stored(slow.request)
    assert stored(Request.objects.get(pk=fast_req.pk)) == stored(Request.objects.get(pk=slow_req.pk))
    assert (fast.first_start, fast.request.last_seq, fast.request._event_keys) == (
        slow.first_start, slow.request.last_seq, slow.request._event_keys) == (True, 2, {"accepted", "started.0"})
    assert fast.request.agent.agent_id == "primary" and fast.request.session.session_id == "fast"

    def events(req):
        rows = [stored(e) for e in RuntimeEvent.objects.filter(request=req)]
        for row in rows:
            row["payload"].pop("request_id", None)
            row["payload"].pop("session_id", None)
        return rows

    assert events(fast_req) == events(slow_req)
    # The event object handed to the ring is the stored row.
    for state, req in ((fast, fast_req), (slow, slow_req)):
        (started,) = state.claim_events
        row = RuntimeEvent.objects.get(pk=started.pk)
        assert (row.seq, row.event_type, row.payload, row.dedupe_key, row.created_at) == (
            started.seq, started.event_type, started.payload, started.dedupe_key, started.created_at)
        assert row.payload == {"request_id": str(req.pk), "agent_id": "primary",
                               "session_id": req.session.session_id, "status": "started"}


@pytest.mark.parametrize("case", ["started_before", "cancel_requested", "subagent", "not_hosted", "held",
                                  "behind_an_earlier_one", "terminal"])
def test_the_one_statement_claim_writes_nothing_where_the_portable_claim_must_decide(make_request, case):
    now = timezone.now()
    earlier = make_request(session_id="s", status=Request.Status.COMPLETED)
    req = make_request(session_id="s")
    append_one(req, "request.accepted", {}, dedupe_key="accepted")
    hosted = ["someone-else"] if case == "not_hosted" else ["primary"]
    put_in_case(case, req, earlier, now)
    before = stored(Request.objects.get(pk=req.pk))

    assert db.claim_first_start(Request, RuntimeEvent, req.pk, "me", now, 30, hosted, 1.0) is None
    assert stored(Request.objects.get(pk=req.pk)) == before
    assert RuntimeEvent.objects.filter(request=req).count() == 1


def test_a_completion_in_one_statement_stores_what_the_portable_completion_stores(engine, tmp_path, monkeypatch):
    from mash_runtime.models import StepCheckpoint
    from mash_runtime.run import lifecycle

    one_statement = []
    real = lifecycle.complete_in_one_statement

    def counted(*args, **kwargs):
        done = real(*args, **kwargs)
        one_statement.append(done is not None)
        return done

    monkeypatch.setattr(lifecycle, "complete_in_one_statement", counted)

    def plan(name):
        out = tmp_path / f"{name}.txt"
        return {"script": [{"tool_calls": [{"name": "append_line", "arguments": {"path": str(out), "line": "x"}}]},
                           "done"]}

    # Two turns each, so the second completion adds to a session total that is not zero.
    fast = [engine.run(plan("f1"), session_id="fast"), engine.run(plan("f2"), session_id="fast")]
    # PostgreSQL took the one statement; SQLite has only the portable completion.
    assert one_statement == [connection.vendor == "postgresql"] * 2
    monkeypatch.setattr(lifecycle, "complete_in_one_statement", lambda *args, **kwargs: None)
    slow = [engine.run(plan("f1"), session_id="slow"), engine.run(plan("f2"), session_id="slow")]

    ignored = {"request_id", "session_id", "trace_id", "turn_id", "created_at", "duration_ms", "path", "latency_ms"}

    def scrub(value):
        if isinstance(value, dict):
            return {k: scrub(v) for k, v in value.items() if k not in ignored}
        if isinstance(value, list):
            return [scrub(v) for v in value]
        return value.replace(str(tmp_path), "") if isinstance(value, str) else value

    for f, s in zip(fast, slow):
        assert f.status == s.status == "completed"
        assert scrub(stored(f)) == scrub(stored(s))
        assert [scrub(stored(e)) for e in engine.events(f.pk)] == [scrub(stored(e)) for e in engine.events(s.pk)]
        assert scrub(stored(MemoryTurn.objects.get(request=f))) == scrub(stored(MemoryTurn.objects.get(request=s)))
        assert ([scrub(stored(c)) for c in StepCheckpoint.objects.filter(request=f).order_by("step_key")] ==
                [scrub(stored(c)) for c in StepCheckpoint.objects.filter(request=s).order_by("step_key")])
    fast_session, slow_session = (Session.objects.get(session_id=name) for name in ("fast", "slow"))
    assert fast_session.session_total_tokens == slow_session.session_total_tokens > 0
    completed = engine.events(fast[1].pk)[-1].payload
    assert completed["session_total_tokens"] == fast_session.session_total_tokens
    assert MemoryTurn.objects.get(request=fast[1]).session_total_tokens == fast_session.session_total_tokens


def test_the_runs_reads_by_request_id_read_what_they_read_by_session_and_agent(make_request):
    from mash_runtime.memory.history import load_history

    reqs = [make_request(session_id="h", message=f"m{n}") for n in range(5)]
    session = reqs[0].session
    for req in reqs[:3]:
        MemoryTurn.objects.create(agent=req.agent, session=session, request=req, user_message=req.message,
                                  agent_response=f"r-{req.message}")
    MemoryTurn.objects.create(agent=reqs[0].agent, session=session, kind=MemoryTurn.Kind.SUMMARY,
                              agent_response="the summary")
    MemoryTurn.objects.create(agent=reqs[3].agent, session=session, request=reqs[3], user_message="m3",
                              agent_response="r-m3")
    PublishedSkill.objects.create(agent=reqs[0].agent, name="alpha", description="d", content="c")
    target = reqs[4]

    for limit in (0, 1, 5):
        by_request = db.read_rows(db.history_statement(MemoryTurn, Request, limit, of_request=target.pk))
        assert by_request == db.recent_history(MemoryTurn, Request, session.pk, target.session_seq, limit)
        # Read once for the longest history, then kept to each agent's own length.
        longest = db.read_rows(db.history_statement(MemoryTurn, Request, 5, of_request=target.pk))
        assert load_history(target, limit, rows=longest) == load_history(target, limit)
    skills = db.read_rows(db.published_skills_statement(PublishedSkill, of_request=target.pk, request_model=Request))
    assert skills == db.published_skill_rows(PublishedSkill, "primary") and len(skills) == 1
    # Together in one pipeline (PostgreSQL), or one after another: the same rows.
    statements = [db.history_statement(MemoryTurn, Request, 5, of_request=target.pk),
                  db.published_skills_statement(PublishedSkill, of_request=target.pk, request_model=Request)]
    assert db.pipelined(statements) == [db.read_rows(statement) for statement in statements]


def test_a_first_start_claim_brings_the_reads_the_portable_claim_makes_after_it(make_request, monkeypatch):
    from mash_runtime.run import lifecycle

    monkeypatch.setattr(lifecycle, "get_host", _Host)
    earlier = [make_request(session_id="r", message=f"m{n}", status=Request.Status.COMPLETED) for n in range(3)]
    for req in earlier:
        MemoryTurn.objects.create(agent=req.agent, session=req.session, request=req, user_message=req.message,
                                  agent_response=f"r-{req.message}")
    PublishedSkill.objects.create(agent=earlier[0].agent, name="beta", description="d", content="c")
    req = make_request(session_id="r")

    state = lifecycle._claim(str(req.pk), "me")

    if connection.vendor != "postgresql":
        assert state.reads is None  # SQLite: prepare_run reads them itself
        return
    history, skills = state.reads
    assert history == db.recent_history(MemoryTurn, Request, req.session_id, req.session_seq, 3)
    assert len(history) == 3
    assert skills == db.published_skill_rows(PublishedSkill, "primary")
