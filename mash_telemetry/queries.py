"""Read-side queries behind the telemetry pages: each returns plain data for one template.

Views stay thin: they parse parameters, call one or two of these and render. Nothing
here writes to the database.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Count, F, Q, Sum
from django.db.models.functions import TruncHour
from django.utils import timezone

from mash_runtime.models import Agent, Interaction, MemoryTurn, Request, RuntimeEvent, Session
from mash_telemetry import charts
from mash_telemetry.models import ApiRequestLog

ACTIVE_STATUSES = [s for s in Request.Status.values if s not in Request.TERMINAL]
SWEEP_SCHEDULE = "mash-sweep"
# A request accepted longer ago than this with nobody claiming it means no worker is taking work.
QUEUE_STALL_SECONDS = 60
# The sweep schedule runs every minute; this late and the scheduler (the qcluster) is not running.
SCHEDULER_LATE_SECONDS = 180


def total_tokens_expr():
    return F("input_tokens") + F("output_tokens") + F("cache_read_tokens") + F("cache_write_tokens")


# -- overview -----------------------------------------------------------------------------


@dataclass
class Health:
    ok: bool = True
    problems: list[str] = field(default_factory=list)
    primary_agent_id: str = ""
    host_error: str = ""
    active: dict[str, int] = field(default_factory=dict)
    stuck: int = 0
    oldest_queued: dt.datetime | None = None
    pending_interactions: int = 0
    sweep_next_run: dt.datetime | None = None
    last_event_at: dt.datetime | None = None
    requests_last_hour: int = 0

    def problem(self, text: str) -> None:
        self.ok = False
        self.problems.append(text)


def host_health(now: dt.datetime | None = None) -> Health:
    """What an operator checks first: does the host load, do workers take work, is anything stuck."""
    from mash_runtime.host import get_host

    now = now or timezone.now()
    health = Health()
    try:
        health.primary_agent_id = get_host().primary_agent_id
    except Exception as exc:  # a broken host app must not take the telemetry pages down with it
        health.host_error = f"{type(exc).__name__}: {exc}"
        health.problem(f"the host app does not load: {health.host_error}")
    counts = dict(Request.objects.filter(status__in=ACTIVE_STATUSES).values_list("status").annotate(n=Count("pk")))
    health.active = {status: counts.get(status, 0) for status in ACTIVE_STATUSES}
    health.stuck = Request.objects.filter(status=Request.Status.RUNNING, lease_expires_at__lt=now).count()
    if health.stuck:
        health.problem(f"{health.stuck} running request(s) hold an expired lease (the sweeper recovers them)")
    health.oldest_queued = (
        Request.objects.filter(status=Request.Status.ACCEPTED).order_by("created_at")
        .values_list("created_at", flat=True).first()
    )
    if health.oldest_queued and (now - health.oldest_queued).total_seconds() > QUEUE_STALL_SECONDS:
        health.problem("a request has waited over a minute for a worker: is the qcluster running?")
    health.pending_interactions = Interaction.objects.filter(status=Interaction.Status.PENDING).count()
    try:
        from django_q.models import Schedule

        health.sweep_next_run = (
            Schedule.objects.filter(name=SWEEP_SCHEDULE).values_list("next_run", flat=True).first()
        )
    except Exception:
        health.sweep_next_run = None
    if health.sweep_next_run is None:
        health.problem("the sweep schedule is missing (run `mash migrate`)")
    elif (now - health.sweep_next_run).total_seconds() > SCHEDULER_LATE_SECONDS:
        health.problem("the sweep schedule is overdue: no qcluster scheduler is running")
    last = RuntimeEvent.objects.order_by("-id").values_list("created_at", flat=True).first()
    health.last_event_at = dt.datetime.fromtimestamp(last, tz=dt.timezone.utc) if last else None
    health.requests_last_hour = Request.objects.filter(created_at__gte=now - dt.timedelta(hours=1)).count()
    return health


@dataclass
class AgentRow:
    agent_id: str
    role: str
    model: str
    active: bool
    hosted: bool
    display_name: str
    requests_24h: int
    failed_24h: int
    tokens_24h: int
    input_24h: int
    output_24h: int
    cache_24h: int
    sessions: int


def agent_rows(since: dt.datetime) -> list[AgentRow]:
    from mash_runtime.host import get_host

    try:
        hosted = get_host().agents
    except Exception:
        hosted = {}
    # Aggregated from the last day's requests only (the created_at index), not from a join
    # of every agent with its whole history.
    stats = {
        row["agent_id"]: row
        for row in Request.objects.filter(created_at__gte=since).values("agent_id").annotate(
            n=Count("pk"),
            failed=Count("pk", filter=Q(status=Request.Status.FAILED)),
            input=Sum("input_tokens", default=0),
            output=Sum("output_tokens", default=0),
            cache=Sum(F("cache_read_tokens") + F("cache_write_tokens"), default=0),
        )
    }
    sessions = dict(Session.objects.values_list("agent_id").annotate(n=Count("pk")))
    rows = []
    for agent in Agent.objects.order_by("agent_id"):
        meta = agent.metadata or {}
        day = stats.get(agent.pk, {})
        input_24h, output_24h, cache_24h = day.get("input", 0), day.get("output", 0), day.get("cache", 0)
        rows.append(AgentRow(
            agent_id=agent.agent_id, role=agent.role, model=agent.model_name, active=agent.active,
            hosted=agent.agent_id in hosted, display_name=str(meta.get("display_name") or ""),
            requests_24h=day.get("n", 0), failed_24h=day.get("failed", 0),
            tokens_24h=input_24h + output_24h + cache_24h,
            input_24h=input_24h, output_24h=output_24h, cache_24h=cache_24h,
            sessions=sessions.get(agent.pk, 0),
        ))
    return rows


def requests_per_hour_chart(now: dt.datetime, hours: int = 24):
    """Stacked columns of requests created per hour, by current status, over the last `hours`."""
    end = now.replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=1)
    start = end - dt.timedelta(hours=hours)
    rows = (
        Request.objects.filter(created_at__gte=start)
        # Truncated in UTC: the slots below are UTC hours whatever TIME_ZONE says (half-hour zones).
        .annotate(hour=TruncHour("created_at", tzinfo=dt.timezone.utc))
        .values_list("hour", "status")
        .annotate(n=Count("pk"))
    )
    slots = [start + dt.timedelta(hours=i) for i in range(hours)]
    index = {slot: i for i, slot in enumerate(slots)}
    by_status: dict[str, list[int]] = {}
    for hour, status, n in rows:
        i = index.get(hour.astimezone(dt.timezone.utc))
        if i is not None:
            by_status.setdefault(status, [0] * hours)[i] += n
    tz = timezone.get_current_timezone()
    labels = [slot.astimezone(tz).strftime("%H:00") for slot in slots]
    order = [s for s in charts.STATUS_COLORS if s in by_status]
    series = [charts.Series(s, charts.STATUS_COLORS[s], by_status[s]) for s in order]
    total = sum(sum(s.values) for s in series)
    svg = charts.stacked_columns(labels, series, title=f"Requests per hour by status, last {hours} h")
    return svg, [(s.name, s.color, sum(s.values)) for s in series], total


def tokens_per_agent_chart(rows: list[AgentRow]):
    data = [(r.agent_id, {"input": r.input_24h, "output": r.output_24h, "cache": r.cache_24h})
            for r in sorted(rows, key=lambda r: -r.tokens_24h) if r.tokens_24h]
    return charts.stacked_bars(data, charts.TOKEN_COLORS, title="Tokens per agent, last 24 h")


def latest_errors(limit: int = 10) -> list[Request]:
    return list(
        Request.objects.filter(status=Request.Status.FAILED).select_related("agent", "session")
        .order_by("-finished_at", "-created_at")[:limit]
    )


def recent_requests(limit: int = 10) -> list[Request]:
    return list(Request.objects.select_related("agent", "session").order_by("-created_at")[:limit])


# -- request list ---------------------------------------------------------------------------


def filter_requests(agent: str = "", status: str = "", session: str = "", since: dt.datetime | None = None,
                    until: dt.datetime | None = None, q: str = "", top_level: bool = False):
    qs = Request.objects.select_related("agent", "session").order_by("-created_at")
    if agent:
        qs = qs.filter(agent__agent_id=agent)
    if status:
        qs = qs.filter(status=status)
    if session:
        qs = qs.filter(session__session_id=session)
    if since:
        qs = qs.filter(created_at__gte=since)
    if until:
        qs = qs.filter(created_at__lt=until)
    if q:
        try:
            qs = qs.filter(Q(pk=uuid.UUID(q)) | Q(trace_id=uuid.UUID(q)))
        except ValueError:
            qs = qs.filter(message__icontains=q)
    if top_level:
        qs = qs.filter(parent__isnull=True)
    return qs


def agent_choices() -> list[str]:
    return list(Agent.objects.order_by("agent_id").values_list("agent_id", flat=True))


# -- sessions -------------------------------------------------------------------------------


def filter_sessions(agent: str = "", q: str = ""):
    qs = Session.objects.select_related("agent").annotate(
        turn_count=Count("turns", filter=Q(turns__kind=MemoryTurn.Kind.TURN))
    ).order_by("-last_activity_at")
    if agent:
        qs = qs.filter(agent__agent_id=agent)
    if q:
        qs = qs.filter(session_id__icontains=q)
    return qs


@dataclass
class SessionView:
    session: Session
    turns: list[MemoryTurn]
    requests: list[Request]
    token_total: int
    signal_totals: dict[str, Any]


def session_view(pk: int, turn_limit: int = 200) -> SessionView | None:
    session = Session.objects.select_related("agent").filter(pk=pk).first()
    if session is None:
        return None
    turns = list(
        MemoryTurn.objects.filter(session=session).select_related("request").order_by("-created_at")[:turn_limit]
    )
    turns.reverse()
    requests = list(Request.objects.filter(session=session).order_by("-created_at")[:turn_limit])
    token_total = sum(r.total_tokens for r in requests)
    unused: dict[str, int] = {}
    for turn in turns:
        for name in (turn.signals or {}).get("unused_tools") or []:
            if isinstance(name, str):
                unused[name] = unused.get(name, 0) + 1
    return SessionView(session, turns, requests, token_total, {"unused_tools": unused})


# -- memory search ------------------------------------------------------------------------------


@dataclass
class MemoryHit:
    turn_id: str
    session_id: str
    score: float
    preview: str
    turn: MemoryTurn | None


def search_memory(text: str, who: str = "user", agent: str = "", session: str = "", limit: int = 50):
    """Run the memory search service and attach each hit's turn (for links to session and trace).

    Goes through `mash_runtime.queries.memory_search`, so this page follows whatever search
    the runtime provides (turn text now, full-text search once issue 7 lands).
    """
    from mash_runtime.queries import memory_search

    prefix = "@agent:" if who == "agent" else "@user:"
    data = memory_search(f"{prefix}{text}", app_id=agent or None, session_id=session or None, limit=limit)
    ids = []
    for result in data["results"]:
        try:
            ids.append(uuid.UUID(result["turn_id"]))
        except (KeyError, ValueError):
            pass
    turns = {str(t.turn_id): t for t in MemoryTurn.objects.filter(turn_id__in=ids).select_related("session", "agent")}
    return [MemoryHit(r.get("turn_id", ""), r.get("session_id", ""), r.get("similarity_score", 0.0),
                      r.get("preview", ""), turns.get(r.get("turn_id", ""))) for r in data["results"]]


# -- API request log ----------------------------------------------------------------------------


def filter_api_log(method: str = "", status: str = "", path: str = ""):
    qs = ApiRequestLog.objects.order_by("-id")
    if method:
        qs = qs.filter(method=method.upper())
    if status:
        # "5xx" style classes as well as exact codes.
        if len(status) == 3 and status[0].isdigit() and status[1:].lower() == "xx":
            base = int(status[0]) * 100
            qs = qs.filter(status_code__gte=base, status_code__lt=base + 100)
        elif status.isdigit():
            qs = qs.filter(status_code=int(status))
    if path:
        qs = qs.filter(path__icontains=path)
    return qs


def keyset_page(qs, before: int | None, size: int = 50):
    """Newest-first page of an append-only table by id: no COUNT(*), no deep OFFSET."""
    if before:
        qs = qs.filter(pk__lt=before)
    rows = list(qs[: size + 1])
    more = len(rows) > size
    rows = rows[:size]
    return rows, (rows[-1].pk if more and rows else None)


def latest_events(agent: str = "", limit: int = 50) -> list[RuntimeEvent]:
    qs = RuntimeEvent.objects.order_by("-id")
    if agent:
        qs = qs.filter(agent_id=agent)
    return list(qs[:limit])  # newest first, as the live tail adds rows on top
