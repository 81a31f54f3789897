"""Full-text memory search: the same fixtures and expectations on SQLite (FTS5) and
PostgreSQL (tsvector + GIN). Run this file with and without DATABASE_URL."""

from __future__ import annotations

import pytest
from django.db import connection

from mash_runtime.memory import search as ms
from mash_runtime.memory.search import (
    MemorySearchService,
    Retriever,
    RetrieverHit,
    SearchScope,
    SearchValidationError,
    fuse,
    make_preview,
    parse_query,
    search_memory,
)
from mash_runtime.models import Agent, MemoryTurn, Session

FILLER = [
    ("what is the weather like today", "sunny with a light breeze"),
    ("recommend a book about history", "try a survey of the ancient world"),
    ("how do I bake bread", "flour water salt yeast and patience"),
    ("translate hello into french", "bonjour"),
    ("what time zone is tokyo in", "japan standard time"),
    ("list three prime numbers", "two three five"),
    ("who wrote hamlet", "william shakespeare"),
    ("convert ten miles to kilometres", "about sixteen kilometres"),
    ("suggest a name for a cat", "whiskers"),
    ("explain photosynthesis briefly", "plants turn light into sugar"),
]

LONG_TAIL = "lorem ipsum dolor sit amet " * 40 + "the hidden needle is here " + "consectetur adipiscing elit " * 10


class Corpus:
    """Turns of two agents; the session id "s1" exists for both."""

    def __init__(self):
        self.alpha = Agent.objects.create(agent_id="alpha", role="primary")
        self.beta = Agent.objects.create(agent_id="beta", role="subagent")
        self.a1 = Session.objects.create(agent=self.alpha, session_id="s1")
        self.a2 = Session.objects.create(agent=self.alpha, session_id="s2")
        self.b1 = Session.objects.create(agent=self.beta, session_id="s1")
        self.ids: dict[str, str] = {}
        self.add("pool3", self.a1, "tune the server", "pool pool pool settings")
        self.add("pool1", self.a1, "and the docs?",
                 "the pool settings for the database server are documented elsewhere in the long guide")
        self.add("both", self.a1, "postgresql pool sizing", "depends on the workers")
        self.add("pool_only", self.a1, "pool sizing for workers", "use twice the cores")
        self.add("pg_only", self.a2, "postgresql replication setup", "streaming replication with slots")
        self.add("cafe", self.a2, "Café au lait recipe ☕", "Mix café and lait. 日本語 also works: 東京")
        self.add("bobby", self.a2, "Robert'); DROP TABLE students;--", "Little Bobby Tables; SELECT * FROM users WHERE 1=1")
        self.add("beta_pool", self.b1, "postgresql pool question from beta", "beta answer about a pool")
        self.add("fox_user", self.a1, "tell me about the red fox", "it is a small carnivore")
        self.add("fox_agent", self.a1, "which animal did we discuss", "we talked about the red fox yesterday")
        self.add("long", self.a2, "find the needle", LONG_TAIL)
        self.add("code", self.a2, "where is mash_runtime/engine.py defined?",
                 "see https://example.com/a-b and mail ops@example.org about foo-bar v3.14")
        for i, (user, agent) in enumerate(FILLER):
            self.add(f"filler{i}", self.a2 if i % 2 else self.b1, user, agent)

    def add(self, name, session, user, agent):
        turn = MemoryTurn.objects.create(agent=session.agent, session=session, user_message=user, agent_response=agent)
        self.ids[name] = str(turn.turn_id)
        return turn

    def names(self, outcome):
        by_id = {v: k for k, v in self.ids.items()}
        return [by_id[r.turn_id] for r in outcome.results]


@pytest.fixture
def corpus(db):
    ms._schema_ok.clear()
    return Corpus()


def names(corpus, query, **kwargs):
    kwargs.setdefault("limit", 20)
    return corpus.names(search_memory(query, **kwargs))


# -- ranking ----------------------------------------------------------------------------------


def test_more_occurrences_in_a_shorter_text_rank_first(corpus):
    outcome = search_memory("@agent: pool", agent_id="alpha", limit=10)
    found = corpus.names(outcome)
    assert found[:2] == ["pool3", "pool1"]
    scores = [r.score for r in outcome.results]
    assert scores[0] == 1.0 and all(0.0 < s < 1.0 for s in scores[1:]), scores
    assert scores == sorted(scores, reverse=True)
    assert all(r.column == "agent_response" for r in outcome.results)


def test_a_turn_matching_more_terms_ranks_first(corpus):
    found = names(corpus, "@user: postgresql pool", agent_id="alpha")
    assert found[0] == "both"
    assert set(found) == {"both", "pool_only", "pg_only"}


def test_a_prefix_picks_the_column(corpus):
    assert names(corpus, "@user: red fox") == ["fox_user"]
    assert names(corpus, "@agent: red fox") == ["fox_agent"]
    assert names(corpus, "@AGENT:fox") == ["fox_agent"]


def test_an_unprefixed_query_searches_both_columns_and_keeps_the_best_score(corpus):
    outcome = search_memory("red fox", agent_id="alpha", limit=10)
    assert sorted(corpus.names(outcome)) == ["fox_agent", "fox_user"]
    columns = {corpus.names(outcome)[i]: r.column for i, r in enumerate(outcome.results)}
    assert columns == {"fox_user": "user_message", "fox_agent": "agent_response"}
    # "pool" is in both columns of beta's turn: one result, scored by its better column.
    beta = search_memory("pool", agent_id="beta", limit=10)
    assert corpus.names(beta) == ["beta_pool"] and beta.results[0].score == 1.0


def test_quoted_phrases_match_words_in_order(corpus):
    assert names(corpus, '@agent: "red fox"') == ["fox_agent"]
    assert names(corpus, '@agent: "fox red"') == []


def test_results_respect_the_limit(corpus):
    assert len(search_memory("@agent: pool", limit=1).results) == 1


# -- filters ----------------------------------------------------------------------------------


def test_filters_by_agent_and_session(corpus):
    assert set(names(corpus, "@user: postgresql")) == {"both", "pg_only", "beta_pool"}
    assert set(names(corpus, "@user: postgresql", agent_id="alpha")) == {"both", "pg_only"}
    assert names(corpus, "@user: postgresql", agent_id="beta") == ["beta_pool"]
    assert set(names(corpus, "@user: postgresql", session_id="s1")) == {"both", "beta_pool"}
    assert names(corpus, "@user: postgresql", agent_id="alpha", session_id="s1") == ["both"]
    assert names(corpus, "@user: postgresql", agent_id="alpha", session_id="s2") == ["pg_only"]
    assert names(corpus, "@user: postgresql", agent_id="nobody") == []
    assert names(corpus, "@user: postgresql", session_id="nowhere") == []


def test_summary_turns_are_not_search_results(corpus):
    MemoryTurn.objects.create(agent=corpus.alpha, session=corpus.a1, kind=MemoryTurn.Kind.SUMMARY,
                              user_message="[summary]", agent_response="the red fox was discussed")
    assert names(corpus, "@agent: fox") == ["fox_agent"]


# -- text handling --------------------------------------------------------------------------


@pytest.mark.parametrize("query,expected", [
    ("@user: café", ["cafe"]),
    ("@agent: 日本語", ["cafe"]),
    ("@agent: 東京", ["cafe"]),
    ("@user: CAFÉ", ["cafe"]),
])
def test_unicode_queries(corpus, query, expected):
    assert names(corpus, query) == expected


@pytest.mark.parametrize("query,expected", [
    ('@user: C++ && (foo) OR "bar" -baz* ^~', set()),
    ("@agent: ***", set()),
    ('@user: "unbalanced quote', set()),
    ("@user: NEAR(a b, 3)", set()),
    ("@agent: {user_message}: fox", {"fox_agent"}),  # braces are punctuation, not a column filter
    ("@user: user_message:fox", set()),  # nor is a column name: no user message says user_message
    ("@user: \\ % _ ' \" ; : ( ) [ ] { } < > | & ! ? + - * / = ~ ^ $ # @", set()),
    ("@agent: fox* OR fox^2 AND NOT fox", {"fox_agent", "filler2", "cafe", "code"}),  # and/or/not are words
    ("@user: ☕☕☕ 🎉 —– …", set()),
    ("@user: \u200b\u00a0zero\u200bwidth", set()),
    ("@agent: 'single' ''double'' \"\"", set()),
    ("fox: @agent: x", {"fox_user", "fox_agent"}),  # no prefix at the start: both columns, words only
])
def test_punctuation_heavy_queries_do_not_error(corpus, query, expected):
    outcome = search_memory(query, limit=20)
    assert set(corpus.names(outcome)) == expected
    assert all(0.0 <= r.score <= 1.0 for r in outcome.results)


@pytest.mark.parametrize("query", [
    "@user: engine.py", "@user: engine", "@user: mash_runtime", "@user: runtime/engine.py", "@user: py",
    "@agent: foo-bar", "@agent: foo", "@agent: example.org", "@agent: ops@example.org", "@agent: ops",
    "@agent: https://example.com/a-b", "@agent: v3.14", '@agent: "example com"',
])
def test_code_paths_urls_and_emails_split_into_words_on_both_databases(corpus, query):
    assert names(corpus, query) == ["code"]


def test_operators_are_plain_words(corpus):
    # FTS5/tsquery operators are matched as words (or ignored), never interpreted.
    assert "fox_agent" in names(corpus, "@agent: fox NOT red")
    assert names(corpus, "@agent: fox*") == ["fox_agent"]


@pytest.mark.parametrize("query", [
    "@user: Robert'); DROP TABLE students;--",
    "@user: '; DROP TABLE mash_runtime_memoryturn; --",
    "@user: ' OR 1=1 --",
    '@agent: " OR 1=1 UNION SELECT turn_id, user_message FROM mash_runtime_memoryturn --',
    "@user: %' OR '%'='",
    "@agent: ) OR rowid > 0 OR (",
])
def test_sql_injection_shaped_queries_are_plain_text(corpus, query):
    before = MemoryTurn.objects.count()
    found = names(corpus, query)
    assert MemoryTurn.objects.count() == before
    assert len(found) < 5, found  # nothing like "every row"


def test_an_injection_shaped_text_is_found_as_text(corpus):
    assert names(corpus, "@user: Robert'); DROP TABLE students;--") == ["bobby"]
    assert names(corpus, "@user: ' OR 1=1 --") == []
    assert names(corpus, "@agent: 1=1") == ["bobby"]


def test_previews_are_capped_and_show_the_match(corpus):
    outcome = search_memory("@agent: needle", limit=5)
    assert corpus.names(outcome) == ["long"]
    preview = outcome.results[0].preview
    assert len(preview) <= 200 and "needle" in preview and preview.startswith("...") and preview.endswith("...")
    assert all(len(r.preview) <= 200 for r in search_memory("@agent: lorem", limit=5).results)


def test_make_preview():
    assert make_preview("short\n text") == "short text"
    assert len(make_preview("x" * 500)) == 200 and make_preview("x" * 500).endswith("...")
    tail = make_preview("a " * 300 + "target", ["target"])
    assert len(tail) <= 200 and tail.endswith("target")


# -- the index stays in sync ------------------------------------------------------------------


def test_updates_and_deletes_reach_the_index(corpus):
    turn = MemoryTurn.objects.get(turn_id=corpus.ids["fox_user"])
    turn.user_message = "tell me about the grey wolf"
    turn.save()
    assert names(corpus, "@user: fox") == []
    assert names(corpus, "@user: wolf") == ["fox_user"]
    MemoryTurn.objects.filter(turn_id=corpus.ids["fox_agent"]).delete()
    assert names(corpus, "@agent: fox") == []
    Session.objects.filter(pk=corpus.a2.pk).delete()  # cascades
    assert set(names(corpus, "@user: postgresql")) == {"both", "beta_pool"}


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite triggers")
def test_lost_sqlite_triggers_are_reinstalled(corpus):
    mig = ms._search_migration()
    with connection.cursor() as cursor:
        for trigger in mig.SQLITE_TRIGGERS:
            cursor.execute(f"DROP TRIGGER {trigger}")
    corpus.add("late", corpus.a1, "a turn written without triggers", "zebra crossing")
    ms._schema_ok.clear()
    assert names(corpus, "@agent: zebra") == ["late"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name LIKE %s",
                       [f"{mig.FTS_TABLE}%"])
        assert cursor.fetchone()[0] == 3


# -- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["", "   ", "@user:", "@agent:   ", "@bot: red", "@: red", "@User :"])
def test_wrong_prefix_or_empty_term_is_a_validation_error(query):
    with pytest.raises(SearchValidationError) as info:
        parse_query(query, require_prefix=False)
    assert info.value.code == "SEARCH_VALIDATION_ERROR" and info.value.status == 400


@pytest.mark.parametrize("query", ["red", "user: red", "fox @user: red"])
def test_the_route_requires_a_prefix_but_the_tools_do_not(query):
    with pytest.raises(SearchValidationError):
        parse_query(query, require_prefix=True)
    assert parse_query(query, require_prefix=False).column is None


def test_parse_query_terms():
    q = parse_query('@agent:  red "big fox"  RED && x', require_prefix=True)
    assert (q.column, q.terms) == ("agent_response", ("red", "big fox", "x"))
    assert parse_query("@user: ?!", require_prefix=True).terms == ()


def test_a_query_without_words_finds_nothing(corpus):
    assert search_memory("@user: ?! ...", limit=5).results == []


# -- fusion and the retriever seam ------------------------------------------------------------


class StubRetriever(Retriever):
    """A test double standing in for a future second (e.g. semantic) retriever."""

    def __init__(self, name, hits, fail=False, available=True):
        self.name = name
        self.hits = hits
        self.fail = fail
        self._available = available

    def available(self):
        return self._available

    def retrieve(self, query, scope, limit):
        if self.fail:
            raise RuntimeError("index offline")
        return self.hits[:limit]


def test_fuse_is_a_weighted_mean_in_unit_range():
    fused = fuse(
        {"lexical": [RetrieverHit("a", 1.0, "user_message"), RetrieverHit("b", 0.5, "agent_response")],
         "semantic": [RetrieverHit("b", 1.0), RetrieverHit("c", 0.8)]},
        {"lexical": 3.0, "semantic": 1.0},
    )
    by_id = {h.turn_id: h for h in fused}
    assert by_id["a"].score == pytest.approx(0.75)
    assert by_id["b"].score == pytest.approx(0.75 * 0.5 + 0.25 * 1.0)
    assert by_id["c"].score == pytest.approx(0.2)
    assert [h.turn_id for h in fused] == ["a", "b", "c"]  # tie keeps the heavier retriever's order
    assert by_id["b"].column == "agent_response" and by_id["b"].scores == {"lexical": 0.5, "semantic": 1.0}
    assert all(0.0 <= h.score <= 1.0 for h in fuse({"x": [RetrieverHit("z", 7.0)]}, {"x": 1.0}))


def test_a_second_retriever_is_fused_with_the_lexical_one(corpus):
    service = MemorySearchService()
    service.register(StubRetriever("semantic", [RetrieverHit(corpus.ids["fox_user"], 1.0),
                                                RetrieverHit(corpus.ids["cafe"], 0.9)]), 1.0)
    scope = SearchScope.resolve("alpha")
    outcome = service.search(parse_query("@agent: fox", require_prefix=True), scope, 10)
    found = corpus.names(outcome)
    assert found[:2] == ["fox_agent", "fox_user"] or found[:2] == ["fox_user", "fox_agent"]
    assert set(found) == {"fox_agent", "fox_user", "cafe"}
    scores = {corpus.names(outcome)[i]: r.score for i, r in enumerate(outcome.results)}
    assert scores["fox_agent"] == pytest.approx(0.5) and scores["cafe"] == pytest.approx(0.45)
    assert outcome.retrievers == {"lexical": 1, "semantic": 2}


def test_a_failing_or_unavailable_second_retriever_is_skipped(corpus):
    events = []
    service = MemorySearchService()
    service.register(StubRetriever("broken", [], fail=True), 1.0)
    service.register(StubRetriever("not_ready", [RetrieverHit(corpus.ids["cafe"], 1.0)], available=False), 1.0)
    outcome = service.search(parse_query("@agent: fox", require_prefix=True), SearchScope.resolve(), 10,
                             emit=lambda t, p: events.append((t, p)))
    assert corpus.names(outcome) == ["fox_agent"] and outcome.results[0].score == 1.0
    types = [t for t, _ in events]
    assert types == ["memory.search.started", "memory.search.retriever.completed", "memory.search.retriever.failed",
                     "memory.search.completed"]
    assert events[0][1]["retrievers"] == ["lexical", "broken"]
    assert events[-1][1]["result_count"] == 1


def test_the_service_emits_search_events(corpus):
    events = []
    search_memory("@user: postgresql", agent_id="alpha", limit=5, emit=lambda t, p: events.append((t, p)),
                  scope_label="app")
    started, retriever, completed = events
    assert started[0] == "memory.search.started" and started[1]["query"] == "@user: postgresql"
    assert started[1]["scope"] == "app" and started[1]["target"] == "user"
    assert retriever[0] == "memory.search.retriever.completed" and retriever[1]["retriever"] == "lexical"
    assert completed[0] == "memory.search.completed" and completed[1]["result_count"] == 2
    assert completed[1]["top_score"] == 1.0 and isinstance(completed[1]["duration_ms"], int)


def test_register_rejects_duplicates_and_bad_weights():
    service = MemorySearchService()
    with pytest.raises(ValueError):
        service.register(ms.LexicalRetriever(), 1.0)
    with pytest.raises(ValueError):
        service.register(StubRetriever("x", []), 0)
    service.register(StubRetriever("x", []), 2.0)
    service.unregister("x")
    assert [w.retriever.name for w in service.retrievers] == ["lexical"]


@pytest.mark.parametrize("cap", [0, 1, 500])
def test_session_scoped_searches_agree_whatever_the_sqlite_turn_id_cap(corpus, monkeypatch, cap):
    # SQLite hands a small session's turn ids to FTS5; past the cap it joins afterwards instead.
    monkeypatch.setattr(ms, "SQLITE_SCOPE_TURNS", cap)
    assert names(corpus, "@user: postgresql", agent_id="alpha", session_id="s1") == ["both"]
    assert set(names(corpus, "@user: postgresql", session_id="s1")) == {"both", "beta_pool"}
    assert names(corpus, "@agent: pool", agent_id="alpha", session_id="s1")[:2] == ["pool3", "pool1"]
    assert names(corpus, "fox", agent_id="alpha", session_id="s2") == []


def test_nul_and_lone_surrogates_are_ignored(corpus):
    assert names(corpus, "@agent: fox\x00") == ["fox_agent"]
    assert names(corpus, "@agent: \ud800fox") == ["fox_agent"]
    with pytest.raises(SearchValidationError):
        parse_query("@agent: \x00", require_prefix=True)
