"""Read-side queries behind the telemetry pages: each returns plain data for one template.

Views stay thin: they parse parameters, call one or two of these and render. Nothing
here writes to the database.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Count, F, Q, Sum
from django.db.models.functions import TruncHour
from django.urls import reverse
from django.utils import timezone

from mash_runtime import read_services
from mash_runtime.host import get_host
from mash_runtime.memory.search import parse_query
from mash_runtime.models import (Agent, Interaction, MemoryTurn, Request, RuntimeEvent, Session, WorkflowDefinition,
                                 WorkflowRun, WorkflowRunEvent, WorkflowTaskRun)
from mash_runtime.presentation.formats import duration_text, pretty
from mash_telemetry import charts
from mash_telemetry.models import ApiRequestLog

ACTIVE_STATUSES = [s for s in Request.Status.values if s not in Request.TERMINAL]
SWEEP_SCHEDULE = "mash-sweep"
# A request accepted longer ago than this with nobody claiming it means no worker is taking work.
QUEUE_STALL_SECONDS = 60
# The sweep schedule runs every minute; this late and the scheduler (the qcluster) is not running.
SCHEDULER_LATE_SECONDS = 180
WORD_RE = re.compile(r"[^\W_]+", re.UNICODE)


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
    workers: dict[str, Any] = field(default_factory=dict)

    def problem(self, text: str) -> None:
        self.ok = False
        self.problems.append(text)


def host_health(now: dt.datetime | None = None) -> Health:
    """What an operator checks first: does the host load, do workers take work, is anything stuck."""
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
    health.workers = read_services.worker_status(now)
    if "warning" in health.workers:
        health.problem(health.workers["warning"])
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


def filtered(qs, **lookups):
    """`qs` filtered by each lookup that has a value: a page's filters left empty filter nothing."""
    return qs.filter(**{lookup: value for lookup, value in lookups.items() if value})


def filter_requests(agent: str = "", status: str = "", session: str = "", since: dt.datetime | None = None,
                    until: dt.datetime | None = None, q: str = "", top_level: bool = False):
    qs = filtered(Request.objects.select_related("agent", "session").order_by("-created_at"),
                  agent__agent_id=agent, status=status, session__session_id=session,
                  created_at__gte=since, created_at__lt=until)
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

    Goes through `mash_runtime.read_services.memory_search`, so this page follows whatever search
    the runtime provides.
    """
    prefix = "@agent:" if who == "agent" else "@user:"
    data = read_services.memory_search(f"{prefix}{text}", app_id=agent or None, session_id=session or None, limit=limit)
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


def highlight_spans(text: str, terms) -> list[tuple[str, bool]]:
    """`text` cut into (piece, matched) runs: whole words of `terms`, any case, are matched
    (the memory search matches words, not substrings). Pure: the template filter escapes."""
    words = sorted({w.lower() for term in terms for w in WORD_RE.findall(str(term))}, key=len, reverse=True)
    if not words or not text:
        return [(text, False)] if text else []
    pattern = re.compile(r"(?<![^\W_])(" + "|".join(re.escape(w) for w in words) + r")(?![^\W_])", re.IGNORECASE)
    pieces: list[tuple[str, bool]] = []
    at = 0
    for match in pattern.finditer(text):
        if match.start() > at:
            pieces.append((text[at:match.start()], False))
        pieces.append((match.group(0), True))
        at = match.end()
    if at < len(text):
        pieces.append((text[at:], False))
    return pieces


def memory_terms(text: str) -> list[str]:
    """The terms the memory search matched for `text` (for highlighting its previews)."""
    try:
        return list(parse_query(text, require_prefix=False).terms)
    except Exception:  # a query the search refused has nothing to highlight
        return []


# -- where a request's time went ------------------------------------------------------------

# The events that move a request between waiting and running (no payload needed).
MARK_TYPES = ("request.accepted", "request.waiting", "request.started", "request.interaction.create",
              "request.interaction.ack", "request.completed", "request.error")
SPLIT_PARTS = (
    # key, label, colour
    ("queued", "queued for a worker", "#74c0fc"),
    ("session", "waiting for the session", "#66d9e8"),
    ("running", "running", "#1c7ed6"),
    ("input", "waiting for input", "#f08c00"),
    ("stopped", "stopped until resumed", "#adb5bd"),
)


@dataclass
class TimeSplit:
    """A request's wall time from submit to end (or now), by what it was doing.

    - queued: accepted, and no worker had claimed it yet;
    - session: from `request.waiting` (an earlier request of its session was unfinished) to
      its `request.started` (the moments between that request's end and the claim are
      counted here too);
    - running: claimed and not waiting for an answer (a subagent working for it counts);
    - input: a question of its own or of a subagent's (surfaced to it) was unanswered;
    - stopped: it had failed or been cancelled, until a resume started it again.
    `steps_ms` is what its steps report (model and tool time), for comparison with running.
    """

    total_ms: int = 0
    queued_ms: int = 0
    session_ms: int = 0
    running_ms: int = 0
    input_ms: int = 0
    stopped_ms: int = 0
    steps_ms: int | None = None
    finished: bool = True

    def parts(self) -> list[tuple[str, str, int, str]]:
        """(key, label, ms, colour) of the non-empty parts, in SPLIT_PARTS order."""
        return [(key, label, getattr(self, f"{key}_ms"), color) for key, label, color in SPLIT_PARTS
                if getattr(self, f"{key}_ms") > 0]

    @property
    def waiting_ms(self) -> int:
        return self.queued_ms + self.session_ms + self.input_ms + self.stopped_ms

    @property
    def overhead_ms(self) -> int | None:
        """Running time the steps do not account for (claiming, loading context, storing)."""
        return None if self.steps_ms is None else max(0, self.running_ms - self.steps_ms)

    @property
    def svg(self):
        return charts.split_bar(self.parts(), self.total_ms, title=self.summary)

    @property
    def svg_small(self):
        return charts.split_bar(self.parts(), self.total_ms, title=self.summary, width=120, height=10)

    @property
    def summary(self) -> str:
        return ", ".join(f"{label} {duration_text(value)}" for _, label, value, _ in self.parts()) or "no time recorded"


def split_time(req: Request, marks: list[tuple[str, float]], steps_ms: int | None = None,
               now: dt.datetime | None = None) -> TimeSplit:
    """Replay the request's state changes (`marks`: (event type, epoch seconds), in stream
    order) from its `created_at` to its `finished_at` (or `now`)."""
    spent = {key: 0.0 for key, _, _ in SPLIT_PARTS}
    at = req.created_at.timestamp()
    start = at
    state, pending = "queued", 0
    for kind, moment in marks:
        moment = max(float(moment), at)  # clocks of two processes: never count backwards
        spent[state] += moment - at
        at = moment
        if kind == "request.waiting" and state == "queued":
            state = "session"
        elif kind == "request.started":
            state = "input" if pending else "running"
        elif kind == "request.interaction.create":
            pending += 1
            if state == "running":
                state = "input"
        elif kind == "request.interaction.ack":
            pending = max(0, pending - 1)
            if not pending and state == "input":
                state = "running"
        elif kind in ("request.completed", "request.error"):
            state, pending = "stopped", 0
    finished = req.is_terminal
    if not finished:
        end = max((now or timezone.now()).timestamp(), at)
        spent[state] += end - at
        at = end
    elif req.finished_at is not None and state != "stopped":
        # Terminal by the row but the terminal event is not among the marks (pruned, or cut).
        end = max(req.finished_at.timestamp(), at)
        spent[state] += end - at
        at = end
    split = TimeSplit(total_ms=int(round((at - start) * 1000)), steps_ms=steps_ms, finished=finished)
    for key in spent:
        setattr(split, f"{key}_ms", int(round(spent[key] * 1000)))
    return split


def request_time_split(req: Request, steps_ms: int | None = None) -> TimeSplit:
    marks = list(RuntimeEvent.objects.filter(request=req, event_type__in=MARK_TYPES).order_by("seq")
                 .values_list("event_type", "created_at"))
    return split_time(req, marks, steps_ms)


def time_splits(requests: list[Request]) -> dict[Any, TimeSplit]:
    """Splits for a page of requests in one query (their state-change events only)."""
    if not requests:
        return {}
    marks: dict[Any, list[tuple[str, float]]] = {r.pk: [] for r in requests}
    rows = (RuntimeEvent.objects.filter(request_id__in=list(marks), event_type__in=MARK_TYPES)
            .order_by("request_id", "seq").values_list("request_id", "event_type", "created_at"))
    for request_id, kind, moment in rows:
        marks[request_id].append((kind, moment))
    now = timezone.now()
    return {r.pk: split_time(r, marks[r.pk], now=now) for r in requests}


def request_events(req: Request, limit: int = 1000) -> tuple[list[RuntimeEvent], bool]:
    """The request's own stream, oldest first (the subagent mirror frames included: they are
    part of it), cut at `limit`."""
    rows = list(RuntimeEvent.objects.filter(request=req).order_by("seq")[: limit + 1])
    return rows[:limit], len(rows) > limit


# -- API log entries and what they touched --------------------------------------------------

PATH_REQUEST_RE = re.compile(r"/requests?/([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                             r"[0-9a-fA-F]{12})(?:/|$)")
PATH_RUN_RE = re.compile(r"/runs/([^/]{1,120})(?:/|$)")
BODY_REQUEST_RE = re.compile(r'"request_id"\s*:\s*"([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-'
                             r'[0-9a-fA-F]{12})"')
BODY_RUN_RE = re.compile(r'"run_id"\s*:\s*"([^"\\]{1,120})"')


def api_log_targets(row: ApiRequestLog) -> tuple[str | None, str | None]:
    """The request id and workflow run id an API call was about: from its path, or from the
    response of a submit / run start (bodies may be cut, so read with patterns, not JSON)."""
    from urllib.parse import unquote

    request_id = run_id = None
    match = PATH_REQUEST_RE.search(row.path) or BODY_REQUEST_RE.search(row.response_body or "")
    if match:
        request_id = match.group(1).lower()
    match = PATH_RUN_RE.search(row.path)
    if match:
        run_id = unquote(match.group(1))
    else:
        match = BODY_RUN_RE.search(row.response_body or "")
        if match:
            run_id = match.group(1)
    return request_id, run_id


def attach_api_log_links(rows: list[ApiRequestLog]) -> list[ApiRequestLog]:
    """Set `trace_request_id` / `workflow_run_id` on each row whose request or run still
    exists (two queries for the page, whatever its size)."""
    found = [(row, *api_log_targets(row)) for row in rows]
    request_ids = {uuid.UUID(r) for _, r, _ in found if r}
    run_ids = {run for _, _, run in found if run}
    known_requests = {str(pk) for pk in Request.objects.filter(pk__in=request_ids).values_list("pk", flat=True)}
    known_runs = set(WorkflowRun.objects.filter(pk__in=run_ids).values_list("pk", flat=True)) if run_ids else set()
    for row, request_id, run_id in found:
        row.trace_request_id = request_id if request_id in known_requests else None
        row.workflow_run_id = run_id if run_id in known_runs else None
    return rows


# -- workflows ------------------------------------------------------------------------------


def workflow_choices() -> list[str]:
    return list(WorkflowDefinition.objects.order_by("workflow_id").values_list("workflow_id", flat=True))


def run_tokens_subquery():
    from django.db.models import IntegerField, OuterRef, Subquery
    from django.db.models.functions import Coalesce

    tokens = (Request.objects.filter(workflow_run=OuterRef("pk")).order_by().values("workflow_run")
              .annotate(n=Sum(total_tokens_expr())).values("n")[:1])
    return Coalesce(Subquery(tokens, output_field=IntegerField()), 0)


def filter_runs(workflow: str = "", status: str = "", since: dt.datetime | None = None,
                until: dt.datetime | None = None, q: str = ""):
    from django.db.models import IntegerField, OuterRef, Subquery
    from django.db.models.functions import Coalesce

    done = (WorkflowTaskRun.objects.filter(run=OuterRef("pk"), status="completed").order_by().values("run")
            .annotate(n=Count("pk")).values("n")[:1])
    qs = WorkflowRun.objects.select_related("workflow").annotate(
        tokens=run_tokens_subquery(),
        tasks_done=Coalesce(Subquery(done, output_field=IntegerField()), 0),
    ).order_by("-created_at")
    qs = filtered(qs, workflow__workflow_id=workflow, status=status, created_at__gte=since, created_at__lt=until)
    if q:
        qs = qs.filter(Q(pk=q) | Q(dedup_key=q))
    return qs


@dataclass
class TaskRow:
    index: int
    task_id: str
    agent_id: str
    status: str  # the task run's status, "not started" for a declared task the run never reached
    task_run: Any = None
    request: Request | None = None
    split: TimeSplit | None = None
    output: str | None = None
    error: str = ""

    @property
    def started(self):
        return self.task_run.started_at if self.task_run is not None else None

    @property
    def finished(self):
        if self.task_run is None:
            return None
        return self.task_run.finished_at or (self.request.finished_at if self.request is not None else None)

    @property
    def duration_ms(self) -> int | None:
        if self.started is None:
            return None
        end = self.finished or (None if self.status != "running" else timezone.now())
        return None if end is None else max(0, int((end - self.started).total_seconds() * 1000))

    @property
    def tokens(self) -> int:
        return self.request.total_tokens if self.request is not None else 0

    @property
    def dom_id(self) -> str:
        return f"task-{self.index}"


@dataclass
class RunView:
    run: Any
    tasks: list[TaskRow]
    timeline: Any
    events: list
    event_total: int
    all_events: bool
    input: str
    output: str | None
    duration_ms: int | None
    tokens: int

    @property
    def tasks_done(self) -> int:
        return sum(t.status == "completed" for t in self.tasks)


TASK_STATUS_COLORS = {"completed": "#2f9e44", "failed": "#e03131", "running": "#1c7ed6", "cancelled": "#868e96"}
MAX_RUN_EVENTS = 500


def run_view(run_id: str, all_events: bool = False) -> RunView | None:
    """One run: its declared tasks (run or not), each task's request and time split, the
    timeline chart, its events (`workflow.*` only unless `all_events`)."""
    run = WorkflowRun.objects.select_related("workflow").filter(pk=run_id).first()
    if run is None:
        return None
    task_runs = list(WorkflowTaskRun.objects.filter(run=run).select_related("request", "request__agent")
                     .order_by("index"))
    splits = time_splits([t.request for t in task_runs if t.request is not None])
    by_index = {t.index: t for t in task_runs}
    declared = run.workflow.tasks if isinstance(run.workflow.tasks, list) else []
    rows: list[TaskRow] = []
    for index in range(max(len(declared), max(by_index, default=-1) + 1)):
        spec = declared[index] if index < len(declared) and isinstance(declared[index], dict) else {}
        task_run = by_index.get(index)
        if task_run is None:
            rows.append(TaskRow(index, str(spec.get("task_id") or f"#{index}"), str(spec.get("agent_id") or ""),
                                "not started"))
            continue
        req = task_run.request
        rows.append(TaskRow(
            index, task_run.task_id, task_run.agent_id, task_run.status, task_run=task_run, request=req,
            split=splits.get(req.pk) if req is not None else None,
            output=pretty(task_run.output) if task_run.output is not None else None, error=task_run.error,
        ))
    now = timezone.now()
    start = run.started_at or run.created_at
    end = run.finished_at or now
    bars = []
    for row in rows:
        if row.started is None:
            bars.append(charts.TimelineBar(label=row.task_id, start=None, end=None, color="#ced4da",
                                           title=f"{row.task_id}: not started"))
            continue
        finished = row.finished or (now if row.status == "running" else row.started)
        detail = row.split.summary if row.split is not None else ""
        bars.append(charts.TimelineBar(
            label=row.task_id, start=(row.started - start).total_seconds(), end=(finished - start).total_seconds(),
            color=TASK_STATUS_COLORS.get(row.status, "#868e96"),
            href=reverse("telemetry:request", args=[row.request.pk]) if row.request is not None else "",
            title=f"{row.task_id} ({row.agent_id}): {row.status}, {duration_text(row.duration_ms)}"
                  + (f"; {detail}" if detail else ""),
        ))
    timeline = charts.timeline(bars, max((end - start).total_seconds(), 0.001),
                               title=f"Tasks of run {run.pk} on a time axis from its start")
    events_qs = WorkflowRunEvent.objects.filter(run=run).order_by("seq")
    event_total = run.last_seq
    if not all_events:
        events_qs = events_qs.filter(event_type__startswith="workflow.")
    events = list(events_qs[:MAX_RUN_EVENTS])
    return RunView(
        run=run, tasks=rows, timeline=timeline, events=events, event_total=event_total, all_events=all_events,
        input=pretty(run.input), output=pretty(run.output) if run.output is not None else None,
        duration_ms=run.elapsed_ms(now), tokens=sum(r.tokens for r in rows),
    )


def workflow_rows(since: dt.datetime) -> list[dict[str, Any]]:
    """Each workflow with its runs since `since` by status (one grouped query over recent runs)."""
    counts: dict[str, dict[str, int]] = {}
    for workflow_id, status, n in (WorkflowRun.objects.filter(created_at__gte=since)
                                   .values_list("workflow__workflow_id", "status").annotate(n=Count("pk"))):
        counts.setdefault(workflow_id, {})[status] = n
    rows = []
    for wf in WorkflowDefinition.objects.order_by("workflow_id"):
        tasks = wf.tasks if isinstance(wf.tasks, list) else []
        recent = counts.get(wf.workflow_id, {})
        rows.append({"workflow_id": wf.workflow_id, "source": wf.source, "active": wf.active,
                     "tasks": [str(t.get("task_id")) for t in tasks if isinstance(t, dict)],
                     "runs": sum(recent.values()), "failed": recent.get("failed", 0),
                     "running": recent.get("running", 0)})
    return rows


def task_of_request(req: Request):
    """The workflow task run a request ran for (None for an ordinary request)."""
    if not req.workflow_run_id:
        return None
    return WorkflowTaskRun.objects.filter(request=req).select_related("run", "run__workflow").first()
