"""Memory search: full-text search over memory turns, a retriever seam and score fusion.

Query language
--------------
`[@user: | @agent:] terms`. The prefix picks the column (`user_message` or
`agent_response`); any other `@name:` prefix, or no term after the prefix, is a
`SEARCH_VALIDATION_ERROR` (400). Without a prefix (allowed for the runtime tools, not
for the telemetry route) both columns are searched and a turn keeps its best score.
Terms are whitespace-separated words or `"quoted phrases"`; a turn matches when any
term matches (OR), and turns matching more and rarer terms rank higher. Every term is
handed to the database as a quoted phrase / bound parameter, never as query syntax,
so punctuation, unicode and SQL-shaped input are plain text. A term without any letter
or digit (`&&`, `--`) is ignored; a query left with no term finds nothing.

Backends (migration 0004)
-------------------------
- PostgreSQL: stored generated `tsvector` columns (`to_tsvector('simple', ...)`) with
  GIN indexes; each term becomes `phraseto_tsquery('simple', term)` (bound parameter),
  terms are OR-ed with `||`; raw relevance is `ts_rank('{1,1,1,1}', tsv, query, 1)`.
  Text and terms have punctuation replaced by spaces first (`PG_SPLIT` in the
  migration), so words split as in FTS5 (`engine.py` is `engine` + `py` on both).
- SQLite: an FTS5 table kept in sync by triggers; the match expression is
  `{column} : ("term" OR "phrase two")` with each term double-quoted (inner quotes
  doubled); raw relevance is `-bm25()` weighted on the searched column only.
- Both tokenisers lower-case and keep diacritics (`simple`; `unicode61
  remove_diacritics 0`), so the same fixtures rank the same on both.

Scores
------
Every retriever returns scores in [0, 1]. The lexical retriever divides each raw
relevance by the best raw relevance of the query in scope ("max normalisation"): the
best match scores 1.0 and the others keep their ratio to it. Raw bm25 / ts_rank values
are not comparable across backends or corpora; ratios are, and unlike min-max the
weakest hit is not forced to 0. The two columns of an unprefixed query share one
normaliser (same raw scale), so "best score per turn" compares like with like.

Fusion and the retriever seam
-----------------------------
`MemorySearchService` holds weighted retrievers (`Retriever` subclasses). Each
available retriever returns its top candidates; the fused score of a turn is the
weighted mean of its per-retriever scores (a retriever that did not return the turn
contributes 0), so it stays in [0, 1]. Only the lexical retriever ships; a semantic
retriever (embeddings + vector index) plugs in with `register_retriever(r, weight)`
and needs nothing else from the service. A failing non-lexical retriever is logged
and skipped; the lexical one failing fails the search.

Events: given an `emit(event_type, payload)` callable (the runtime tool passes one
that writes to the request's stream), the service reports `memory.search.started`,
`memory.search.retriever.completed` (per retriever), `memory.search.completed` and
`memory.search.failed`.
"""

from __future__ import annotations

import abc
import importlib
import logging
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from django.db import connection as default_connection

from mash_runtime import db
from mash_runtime.db import fts5_phrase
from mash_runtime.errors import ServiceError
from mash_runtime.models import Agent, MemoryTurn, Session, epoch
from mash_runtime.once import Once

logger = logging.getLogger("mash_runtime.memory.search")

USER_COLUMN = "user_message"
AGENT_COLUMN = "agent_response"
COLUMNS = (USER_COLUMN, AGENT_COLUMN)
PREFIXES = {"user": USER_COLUMN, "agent": AGENT_COLUMN}
PREVIEW_CHARS = 200
MAX_QUERY_CHARS = 1000
MAX_TERMS = 32
MAX_TERM_CHARS = 200
MAX_CANDIDATES = 500
SQLITE_SCOPE_TURNS = 500  # see LexicalRetriever._sqlite_scope_turns

_PREFIX_RE = re.compile(r"^\s*@([^\s:]*)\s*:", re.UNICODE)
_TERM_RE = re.compile(r'"([^"]*)"?|([^\s"]+)', re.UNICODE)
_WORD_RE = re.compile(r"[^\W_]+", re.UNICODE)
_UNSTORABLE_RE = re.compile("[\x00\ud800-\udfff]")

Emit = Callable[[str, dict[str, Any]], None]


class SearchValidationError(ServiceError, status=400, code="SEARCH_VALIDATION_ERROR"):
    """A query the search language does not take (no prefix where one is required, no words)."""


class SearchUnavailable(ServiceError, status=503, code="SEARCH_UNAVAILABLE"):
    """This database cannot search: its full-text schema is missing, or it is neither PostgreSQL nor SQLite."""


# -- queries ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchQuery:
    raw: str
    text: str  # the query without its prefix
    column: str | None  # USER_COLUMN | AGENT_COLUMN | None (both)
    terms: tuple[str, ...]  # words and phrases, each matched as a phrase

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.column,) if self.column else COLUMNS

    @property
    def target(self) -> str:
        return {USER_COLUMN: "user", AGENT_COLUMN: "agent"}.get(self.column or "", "both")


def parse_query(raw: Any, *, require_prefix: bool) -> SearchQuery:
    """Split `@user:` / `@agent:` off a query and cut the rest into terms."""
    # NUL and lone surrogates cannot be bound as PostgreSQL text: they are not words anyway.
    text = _UNSTORABLE_RE.sub(" ", str(raw if raw is not None else "")).strip()
    hint = "start the query with @user: or @agent: followed by a search term"
    column = None
    match = _PREFIX_RE.match(text)
    if match:
        name = match.group(1).lower()
        if name not in PREFIXES:
            raise SearchValidationError(f"Unknown search prefix '@{match.group(1)}:'; {hint}",
                                        details={"prefixes": ["@user:", "@agent:"]})
        column = PREFIXES[name]
        text = text[match.end():].strip()
    elif require_prefix:
        raise SearchValidationError(f"Missing search prefix: {hint}", details={"prefixes": ["@user:", "@agent:"]})
    if not text:
        raise SearchValidationError(f"Empty search term: {hint}" if require_prefix else "Empty search term")
    if len(text) > MAX_QUERY_CHARS:
        raise SearchValidationError(f"Search query is longer than {MAX_QUERY_CHARS} characters")
    terms: list[str] = []
    seen: set[str] = set()
    for m in _TERM_RE.finditer(text):
        term = " ".join((m.group(1) if m.group(1) is not None else m.group(2) or "").split())[:MAX_TERM_CHARS]
        key = term.lower()
        if not term or key in seen or not _WORD_RE.search(term):
            continue
        seen.add(key)
        terms.append(term)
        if len(terms) == MAX_TERMS:
            break
    return SearchQuery(raw=str(raw), text=text, column=column, terms=tuple(terms))


@dataclass(frozen=True)
class SearchScope:
    """Which turns a search may return. `None` lists mean "no restriction"; an empty list
    means the filter named something that does not exist, so nothing can match."""

    agent_id: str | None = None
    session_id: str | None = None
    agent_pks: tuple[int, ...] | None = None
    session_pks: tuple[int, ...] | None = None
    kinds: tuple[str, ...] = (MemoryTurn.Kind.TURN,)

    @property
    def empty(self) -> bool:
        return self.agent_pks == () or self.session_pks == ()

    @property
    def label(self) -> str:
        if self.session_id:
            return "session"
        return "app" if self.agent_id else "all"

    @classmethod
    def resolve(cls, agent_id: str | None = None, session_id: str | None = None) -> "SearchScope":
        agent_id = (agent_id or "").strip() or None
        session_id = (session_id or "").strip() or None
        agent_pks = None
        session_pks = None
        if agent_id:
            agent_pks = tuple(Agent.objects.filter(agent_id=agent_id).values_list("pk", flat=True))
        if session_id:
            sessions = Session.objects.filter(session_id=session_id)
            if agent_pks is not None:
                sessions = sessions.filter(agent_id__in=agent_pks)
            session_pks = tuple(sessions.values_list("pk", flat=True))
        return cls(agent_id=agent_id, session_id=session_id, agent_pks=agent_pks, session_pks=session_pks)


# -- retrievers ---------------------------------------------------------------------------


@dataclass
class RetrieverHit:
    turn_id: str  # canonical UUID string
    score: float  # in [0, 1], 1 = the retriever's best match for this query
    column: str | None = None  # the column that matched best, when the retriever knows
    raw_score: float | None = None


class Retriever(abc.ABC):
    """One way of finding turns for a query.

    Contract: `retrieve` returns at most `limit` hits for turns inside `scope`, best first,
    with scores in [0, 1]. It runs in a sync (database) thread. A semantic retriever
    would embed `query.text`, ask its vector index for neighbours restricted to the
    scope's agent/session pks, and map similarities to [0, 1]; `available()` lets it
    opt out (no index built yet) without failing searches.
    """

    name: str = "retriever"

    def available(self) -> bool:
        return True

    @abc.abstractmethod
    def retrieve(self, query: SearchQuery, scope: SearchScope, limit: int) -> list[RetrieverHit]: ...


def _canonical_id(value: Any) -> str:
    return str(value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)))


_schema_ok: set[tuple[str, str]] = set()
_schema_lock = threading.Lock()


def _search_migration():
    return importlib.import_module("mash_runtime.migrations.0004_memory_search")


def ensure_search_schema(conn=None) -> None:
    """Check once per process and database that the search structures exist.

    On SQLite a table rebuild by a later migration drops the triggers: reinstall them and
    rebuild the index. On PostgreSQL a missing column means migrations did not run.
    """
    conn = conn or default_connection
    key = (conn.vendor, str(conn.settings_dict.get("NAME")))
    if key in _schema_ok:
        return
    with _schema_lock:
        if key in _schema_ok:
            return
        mig = _search_migration()
        if conn.vendor == "sqlite":
            if not db.sqlite_search_schema_present(conn, mig):
                logger.warning("memory search: FTS5 table or triggers missing; reinstalling and reindexing")
                db.install_sqlite_search_schema(conn, mig)
        elif conn.vendor == "postgresql":
            if not db.postgresql_search_columns_present(conn, mig):
                raise SearchUnavailable("Memory search needs migration mash_runtime 0004_memory_search: run migrate")
        else:
            raise SearchUnavailable(f"Memory search supports PostgreSQL and SQLite, not {conn.vendor}")
        _schema_ok.add(key)


class LexicalRetriever(Retriever):
    """Full-text search: PostgreSQL tsvector/GIN or SQLite FTS5, per column, max-normalised."""

    name = "lexical"

    def retrieve(self, query: SearchQuery, scope: SearchScope, limit: int) -> list[RetrieverHit]:
        if not query.terms or scope.empty:
            return []
        conn = default_connection
        ensure_search_schema(conn)
        best: dict[str, tuple[float, str]] = {}
        within = self._sqlite_scope_turns(scope) if conn.vendor == "sqlite" else None
        if within == []:
            return []
        for column in query.columns:
            for turn_id, raw in self._search_column(conn, column, query.terms, scope, limit, within):
                turn_id = _canonical_id(turn_id)
                raw = float(raw or 0.0)
                if turn_id not in best or raw > best[turn_id][0]:
                    best[turn_id] = (raw, column)
        if not best:
            return []
        top = max(raw for raw, _ in best.values())
        hits = [
            RetrieverHit(turn_id=t, score=(raw / top) if top > 0 else 1.0, column=column, raw_score=raw)
            for t, (raw, column) in best.items()
        ]
        hits.sort(key=lambda h: -h.score)
        return hits[:limit]

    def _sqlite_scope_turns(self, scope: SearchScope) -> list[str] | None:
        """The turn ids of a session-scoped search, when there are few enough to hand to FTS5.

        FTS5 cannot join on the session column, so a session-scoped search for a common
        word would rank every matching turn of the table before the join drops most of
        them. Adding `{turn_id} : ("id" OR ...)` to the match makes FTS5 intersect the
        term's posting list with a handful of turn-id lists instead.
        """
        if scope.session_pks is None:
            return None
        ids = list(
            MemoryTurn.objects.filter(session_id__in=scope.session_pks, kind__in=scope.kinds)
            .values_list("turn_id", flat=True)[: SQLITE_SCOPE_TURNS + 1]
        )
        if len(ids) > SQLITE_SCOPE_TURNS:
            return None
        return [turn_id.hex for turn_id in ids]

    def _search_column(self, conn, column: str, terms: Iterable[str], scope: SearchScope, limit: int,
                       within: list[str] | None = None):
        assert column in COLUMNS
        if conn.vendor not in ("postgresql", "sqlite"):  # pragma: no cover - ensure_search_schema refused it
            raise SearchUnavailable(f"Memory search supports PostgreSQL and SQLite, not {conn.vendor}")
        return db.search_turn_column(conn, _search_migration(), column, list(terms), kinds=scope.kinds,
                                     agent_pks=scope.agent_pks, session_pks=scope.session_pks, limit=limit,
                                     within=within, weights_column=USER_COLUMN)


# -- results ------------------------------------------------------------------------------


@dataclass
class SearchResult:
    turn_id: str
    session_id: str
    agent_id: str
    score: float
    column: str
    preview: str
    created_at: float | None
    kind: str = MemoryTurn.Kind.TURN
    scores: dict[str, float] = field(default_factory=dict)

    def to_api(self) -> dict[str, Any]:
        """The telemetry route's result shape (http-api.md)."""
        return {"turn_id": self.turn_id, "session_id": self.session_id, "similarity_score": self.score,
                "preview": self.preview}

    def to_tool(self) -> dict[str, Any]:
        return {
            "turn_id": self.turn_id,
            "session_id": self.session_id,
            "score": self.score,
            "matched_in": self.column,
            "preview": self.preview,
            "created_at": self.created_at,
        }


@dataclass
class SearchOutcome:
    query: SearchQuery
    scope: SearchScope
    limit: int
    results: list[SearchResult]
    duration_ms: int
    retrievers: dict[str, int]  # name -> hits returned


def make_preview(text: str, terms: Iterable[str] = (), limit: int = PREVIEW_CHARS) -> str:
    """One line of at most `limit` characters, around the first matched word when it is far in."""
    text = " ".join((text or "").split())
    if len(text) <= limit:
        return text
    lowered = text.lower()
    position = None
    for term in terms:
        words = _WORD_RE.findall(term.lower())
        if not words:
            continue
        found = re.search(r"(?<![^\W_])" + re.escape(words[0]), lowered)
        if found and (position is None or found.start() < position):
            position = found.start()
    if position is None or position + 40 <= limit - 3:
        return text[: limit - 3] + "..."
    start = max(0, position - 60)
    prefix = "..." if start > 0 else ""
    room = limit - len(prefix)
    if len(text) - start <= room:
        return prefix + text[start:]
    return prefix + text[start : start + room - 3] + "..."


def _contains_term(text: str, terms: Iterable[str]) -> bool:
    lowered = (text or "").lower()
    return any(word in lowered for term in terms for word in _WORD_RE.findall(term.lower()))


# -- the service --------------------------------------------------------------------------


@dataclass
class WeightedRetriever:
    retriever: Retriever
    weight: float


class MemorySearchService:
    def __init__(self, retrievers: Iterable[tuple[Retriever, float]] | None = None):
        self._retrievers: list[WeightedRetriever] = []
        self._lock = threading.Lock()
        for retriever, weight in retrievers if retrievers is not None else [(LexicalRetriever(), 1.0)]:
            self.register(retriever, weight)

    def register(self, retriever: Retriever, weight: float = 1.0, *, replace: bool = False) -> None:
        if not isinstance(retriever, Retriever):
            raise TypeError("register a mash_runtime.memory.search.Retriever")
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight <= 0:
            raise ValueError("a retriever's weight must be a positive number")
        with self._lock:
            names = [w.retriever.name for w in self._retrievers]
            if retriever.name in names:
                if not replace:
                    raise ValueError(f"a retriever named {retriever.name!r} is already registered")
                self._retrievers = [w for w in self._retrievers if w.retriever.name != retriever.name]
            self._retrievers.append(WeightedRetriever(retriever, float(weight)))

    def unregister(self, name: str) -> None:
        with self._lock:
            self._retrievers = [w for w in self._retrievers if w.retriever.name != name]

    @property
    def retrievers(self) -> list[WeightedRetriever]:
        with self._lock:
            return list(self._retrievers)

    def search(self, query: SearchQuery, scope: SearchScope, limit: int, *, emit: Emit | None = None,
               scope_label: str | None = None) -> SearchOutcome:
        started = time.monotonic()
        label = scope_label or scope.label
        active = [w for w in self.retrievers if w.retriever.available()]
        if emit:
            emit("memory.search.started", {"query": query.raw, "scope": label, "target": query.target,
                                           "terms": list(query.terms), "limit": limit,
                                           "retrievers": [w.retriever.name for w in active]})
        try:
            outcome = self._search(query, scope, limit, active, emit, started)
        except Exception as exc:
            if emit:
                emit("memory.search.failed", {"query": query.raw, "scope": label, "error": f"{type(exc).__name__}: {exc}",
                                              "duration_ms": _ms_since(started)})
            raise
        if emit:
            emit("memory.search.completed", {
                "query": query.raw, "scope": label, "target": query.target, "result_count": len(outcome.results),
                "duration_ms": outcome.duration_ms, "top_score": outcome.results[0].score if outcome.results else None,
                "retrievers": outcome.retrievers})
        return outcome

    def _search(self, query, scope, limit, active, emit, started) -> SearchOutcome:
        per_retriever: dict[str, list[RetrieverHit]] = {}
        weights: dict[str, float] = {}
        if query.terms and not scope.empty:
            candidates = limit if len(active) == 1 else min(MAX_CANDIDATES, max(limit * 3, 30))
            for weighted in active:
                retriever = weighted.retriever
                t0 = time.monotonic()
                try:
                    hits = retriever.retrieve(query, scope, candidates)
                except Exception as exc:
                    if isinstance(retriever, LexicalRetriever):
                        raise
                    logger.exception("memory search: retriever %r failed; searching without it", retriever.name)
                    if emit:
                        emit("memory.search.retriever.failed", {"retriever": retriever.name,
                                                                "error": f"{type(exc).__name__}: {exc}"})
                    continue
                per_retriever[retriever.name] = hits
                weights[retriever.name] = weighted.weight
                if emit:
                    emit("memory.search.retriever.completed", {"retriever": retriever.name, "weight": weighted.weight,
                                                               "result_count": len(hits),
                                                               "duration_ms": _ms_since(t0)})
        fused = fuse(per_retriever, weights)[:limit]
        results = self._hydrate(query, fused)
        return SearchOutcome(query=query, scope=scope, limit=limit, results=results, duration_ms=_ms_since(started),
                             retrievers={name: len(hits) for name, hits in per_retriever.items()})

    def _hydrate(self, query: SearchQuery, fused: list["FusedHit"]) -> list[SearchResult]:
        if not fused:
            return []
        rows = {
            str(t.turn_id): t
            for t in MemoryTurn.objects.filter(turn_id__in=[uuid.UUID(h.turn_id) for h in fused])
            .select_related("session", "agent")
            .only("turn_id", "kind", "user_message", "agent_response", "created_at", "session__session_id",
                  "agent__agent_id")
        }
        results = []
        for hit in fused:
            turn = rows.get(hit.turn_id)
            if turn is None:  # deleted since it was found
                continue
            column = hit.column or query.column
            if column is None:
                column = AGENT_COLUMN if _contains_term(turn.agent_response, query.terms) and not _contains_term(
                    turn.user_message, query.terms) else USER_COLUMN
            results.append(SearchResult(
                turn_id=hit.turn_id,
                session_id=turn.session.session_id,
                agent_id=turn.agent.agent_id,
                score=round(hit.score, 6),
                column=column,
                preview=make_preview(getattr(turn, column), query.terms),
                created_at=epoch(turn.created_at),
                kind=turn.kind,
                scores={k: round(v, 6) for k, v in hit.scores.items()},
            ))
        return results


@dataclass
class FusedHit:
    turn_id: str
    score: float
    column: str | None
    scores: dict[str, float]


def fuse(per_retriever: dict[str, list[RetrieverHit]], weights: dict[str, float]) -> list[FusedHit]:
    """Weighted score fusion: the weighted mean of each turn's per-retriever scores.

    A retriever that did not return a turn counts 0 for it. Scores are clamped to [0, 1]
    first, and the weights are divided by their sum, so the fused score is in [0, 1].
    The matched column comes from the retriever contributing most to the turn.
    Ties keep the order of the heaviest retriever's ranking.
    """
    total = sum(weights.get(name, 0.0) for name in per_retriever) or 1.0
    fused: dict[str, FusedHit] = {}
    best_contribution: dict[str, float] = {}
    order: dict[str, int] = {}
    for name, hits in sorted(per_retriever.items(), key=lambda item: -weights.get(item[0], 0.0)):
        weight = weights.get(name, 0.0) / total
        for rank, hit in enumerate(hits):
            score = min(1.0, max(0.0, float(hit.score)))
            entry = fused.setdefault(hit.turn_id, FusedHit(hit.turn_id, 0.0, None, {}))
            order.setdefault(hit.turn_id, len(order))
            entry.score += weight * score
            entry.scores[name] = score
            contribution = weight * score
            if hit.column and contribution > best_contribution.get(hit.turn_id, -1.0):
                best_contribution[hit.turn_id] = contribution
                entry.column = hit.column
    for entry in fused.values():
        entry.score = min(1.0, max(0.0, entry.score))
    return sorted(fused.values(), key=lambda e: (-e.score, order[e.turn_id]))


_service: Once[MemorySearchService] = Once(MemorySearchService)


def get_search_service() -> MemorySearchService:
    return _service.get()


def set_search_service(service: MemorySearchService | None) -> None:
    """Install a service (tests, embedding); None goes back to the default on next use."""
    _service.set(service)


def register_retriever(retriever: Retriever, weight: float = 1.0, *, replace: bool = False) -> None:
    """Add a second (e.g. semantic) retriever to the process-wide service."""
    get_search_service().register(retriever, weight, replace=replace)


def search_memory(query: Any, *, agent_id: str | None = None, session_id: str | None = None, limit: int = 10,
                  require_prefix: bool = False, emit: Emit | None = None, scope_label: str | None = None) -> SearchOutcome:
    """Parse, scope and run one search (sync; call it from a database thread)."""
    parsed = parse_query(query, require_prefix=require_prefix)
    scope = SearchScope.resolve(agent_id, session_id)
    return get_search_service().search(parsed, scope, limit, emit=emit, scope_label=scope_label)


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


__all__ = [
    "SearchQuery",
    "SearchScope",
    "SearchResult",
    "SearchOutcome",
    "SearchValidationError",
    "SearchUnavailable",
    "Retriever",
    "RetrieverHit",
    "LexicalRetriever",
    "MemorySearchService",
    "fuse",
    "parse_query",
    "make_preview",
    "get_search_service",
    "set_search_service",
    "register_retriever",
    "search_memory",
    "ensure_search_schema",
    "fts5_phrase",
    "FusedHit",
    "WeightedRetriever",
    "Emit",
    "COLUMNS",
    "USER_COLUMN",
    "AGENT_COLUMN",
    "PREFIXES",
    "MAX_QUERY_CHARS",
    "MAX_TERMS",
    "MAX_TERM_CHARS",
    "MAX_CANDIDATES",
    "PREVIEW_CHARS",
    "SQLITE_SCOPE_TURNS",
]
