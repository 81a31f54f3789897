"""Runtime records: the single source of truth for requests, their events and state.

Every table here is append-mostly history except `Agent` and `Session` (which carry
counters) and the mutable state columns of `Request` and `Interaction`.
"""

from __future__ import annotations

import secrets
import time
import uuid
from datetime import timedelta
from typing import Any

from django.db import DEFAULT_DB_ALIAS, IntegrityError, connection, connections, models, transaction

from mash_runtime import db
from mash_runtime.db import insert_rows, update_row
from mash_runtime.storable import StorableJSONField


def new_interaction_id() -> str:
    return f"itr_{secrets.token_hex(6)}"


def epoch(value) -> float | None:
    """A datetime as epoch seconds, as the wire carries times (None stays None)."""
    return value.timestamp() if value is not None else None


class Agent(models.Model):
    class Role(models.TextChoices):
        PRIMARY = "primary"
        SUBAGENT = "subagent"
        WORKFLOW = "workflow"  # workflow-only: hidden from listings and delegation

    agent_id = models.CharField(max_length=64, unique=True)
    role = models.CharField(max_length=16, choices=Role.choices)
    metadata = StorableJSONField(null=True, blank=True)
    model_name = models.CharField(max_length=128, blank=True, default="")
    config = StorableJSONField(default=dict, blank=True)
    # False once the host app no longer defines the agent; its history stays browsable.
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["agent_id"]

    def __str__(self) -> str:
        return self.agent_id


class Session(models.Model):
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="sessions")
    session_id = models.CharField(max_length=200)
    session_total_tokens = models.BigIntegerField(default=0)
    # Requests of a session run in the order of this counter (see Request.session_seq).
    last_request_seq = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    last_activity_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["agent", "session_id"], name="uniq_session_per_agent")]
        ordering = ["-last_activity_at"]

    def __str__(self) -> str:
        return f"{self.agent_id}/{self.session_id}"

    @staticmethod
    def default_session_id(agent_id: str) -> str:
        return f"{agent_id}:default"

    @classmethod
    def take_next_request_seq(cls, agent: Agent, session_id: str) -> "Session":
        """The session (made if new) with `last_request_seq` bumped for a new request.

        The UPDATE locks the row until the transaction ends, so concurrent submits to one
        session get distinct, increasing positions: that is the session's execution order.
        One statement for a known session (UPDATE ... RETURNING).
        """
        from django.utils import timezone

        now = timezone.now()
        for _ in range(2):
            row = update_row(cls, {"agent": agent.pk, "session_id": session_id}, values={"last_activity_at": now},
                             add={"last_request_seq": 1}, returning=("pk", "last_request_seq"))
            if row is not None:
                return cls.with_seq_taken(agent, session_id, *row, now)
            cls.objects.get_or_create(agent=agent, session_id=session_id)
        raise RuntimeError(f"session {agent.agent_id}/{session_id} vanished while taking a request seq")

    @classmethod
    def with_seq_taken(cls, agent: Agent, session_id: str, pk: int, last_request_seq: int, now) -> "Session":
        """The session as a seq-taking UPDATE left it; the columns not read there are deferred
        (reading one loads it)."""
        session = cls.from_db(connection.alias, ["id", "agent_id", "session_id", "last_request_seq", "last_activity_at"],
                              [pk, agent.pk, session_id, last_request_seq, now])
        session.agent = agent
        return session

    @classmethod
    def add_tokens(cls, pk: int, tokens: int, now) -> tuple[int, int]:
        """Add a finished request's tokens; returns (session_total_tokens, last_request_seq)
        as of this update, in one statement."""
        return tuple(update_row(cls, {"pk": pk}, values={"last_activity_at": now}, add={"session_total_tokens": tokens},
                                returning=("session_total_tokens", "last_request_seq")))


class Request(models.Model):
    class Status(models.TextChoices):
        ACCEPTED = "accepted"
        WAITING = "waiting"  # queued behind an earlier request of the same session
        RUNNING = "running"
        AWAITING_INPUT = "awaiting_input"
        AWAITING_SUBAGENT = "awaiting_subagent"
        COMPLETED = "completed"
        FAILED = "failed"
        CANCELLED = "cancelled"

    TERMINAL = (Status.COMPLETED, Status.FAILED, Status.CANCELLED)
    PARKED = (Status.AWAITING_INPUT, Status.AWAITING_SUBAGENT)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="requests")
    session = models.ForeignKey(Session, on_delete=models.CASCADE, related_name="requests")
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="children")
    # Set for a workflow task's request: its events are mirrored into the run's stream.
    workflow_run = models.ForeignKey("WorkflowRun", null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="requests")
    trace_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    session_seq = models.PositiveIntegerField(default=0)
    message = models.TextField()
    structured_output = StorableJSONField(null=True, blank=True)
    metadata = StorableJSONField(default=dict, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.ACCEPTED, db_index=True)

    lease_owner = models.CharField(max_length=128, blank=True, default="")
    lease_expires_at = models.DateTimeField(null=True, blank=True, db_index=True)
    recovery_attempts = models.PositiveIntegerField(default=0)
    cancel_requested = models.BooleanField(default=False)
    # Bumped by resume: a resumed run gets its own started/terminal events.
    run_attempt = models.PositiveIntegerField(default=0)
    # Highest event seq handed out; appends bump it under the row lock.
    last_seq = models.PositiveIntegerField(default=0)

    response = StorableJSONField(null=True, blank=True, untrusted=True)
    error = models.TextField(blank=True, default="")
    error_code = models.CharField(max_length=64, blank=True, default="")
    retryable = models.BooleanField(default=False)

    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cache_read_tokens = models.BigIntegerField(default=0)
    cache_write_tokens = models.BigIntegerField(default=0)

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["session", "created_at"], name="req_session_created"),
            models.Index(fields=["agent", "status", "created_at"], name="req_agent_status_created"),
        ]
        constraints = [models.UniqueConstraint(fields=["session", "session_seq"], name="uniq_request_session_seq")]

    def __str__(self) -> str:
        return str(self.id)

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_read_tokens + self.cache_write_tokens

    @property
    def duration_ms(self) -> int | None:
        if self.started_at and self.finished_at:
            return int((self.finished_at - self.started_at).total_seconds() * 1000)
        return None


def keys_are_new(known: set[str] | None, keys: list[str]) -> bool:
    """Whether an appending object that knows its stream's keys (`known`) may skip the
    dedupe read: the items' keys are distinct and none is in the stream yet."""
    return known is not None and len(set(keys)) == len(keys) and not known.intersection(keys)


def _reserve_seqs(request_id, count: int) -> int:
    """Add `count` to the request's last_seq and return the new value, in one statement that
    also takes the row lock until the transaction ends (PostgreSQL and SQLite >= 3.35)."""
    row = update_row(Request, {"pk": request_id}, add={"last_seq": count}, returning=("last_seq",))
    if row is None:
        raise Request.DoesNotExist(f"request {request_id} does not exist")
    return row[0]


class RuntimeEvent(models.Model):
    """One frame of a request's stream, numbered by `seq` from 1 without gaps."""

    id = models.BigAutoField(primary_key=True)
    # No index of its own: uniq_event_seq (request, seq) serves every lookup by request,
    # and each index is maintained on every one of the many inserts this table takes.
    request = models.ForeignKey(Request, on_delete=models.CASCADE, related_name="events", db_index=False)
    seq = models.PositiveIntegerField()
    event_type = models.CharField(max_length=100, db_index=True)  # its LIKE index serves prefix filters
    agent_id = models.CharField(max_length=64)
    session_id = models.CharField(max_length=200)
    trace_id = models.UUIDField()
    loop_index = models.IntegerField(null=True, blank=True)
    step_key = models.CharField(max_length=100, blank=True, default="")
    payload = StorableJSONField(default=dict, untrusted=True)
    # Set for every event a replay could emit again; a second append with the same key
    # returns the first row instead of adding a frame.
    dedupe_key = models.CharField(max_length=200, null=True, blank=True)
    created_at = models.FloatField(default=time.time)

    class Meta:
        ordering = ["request", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["request", "seq"], name="uniq_event_seq"),
            models.UniqueConstraint(fields=["request", "dedupe_key"], name="uniq_event_dedupe"),
        ]
        # A plain index: agent ids are matched exactly, never by prefix (db_index would add
        # a second, LIKE index on PostgreSQL).
        indexes = [models.Index(fields=["agent_id"], name="event_agent")]

    def __str__(self) -> str:
        return f"{self.request_id}#{self.seq} {self.event_type}"

    @property
    def stream_name(self) -> str:
        """The SSE event name: `request.*` as is, everything else wrapped as `agent.trace`."""
        return self.event_type if self.event_type.startswith("request.") else "agent.trace"

    @classmethod
    def append_many(
        cls, request: Request, items: list[tuple[str, dict[str, Any], str | None, int | None, str]],
        *, reserved_to: int | None = None,
    ) -> list[tuple["RuntimeEvent", bool]]:
        """Append events in order; items are (event_type, payload, dedupe_key, loop_index, step_key).

        One UPDATE ... RETURNING both locks the request row and reserves the seqs, so two
        appenders can never take the same seq and the dedupe check cannot race another
        append. An item whose dedupe key exists yields the stored row instead and takes no
        seq.

        The dedupe check costs a query (for the keys the items bring) unless this
        `request` object knows every key of its stream (`_event_keys`, set when the request
        is created or claimed): then it checks in memory while nobody else appends (the
        reserved range starting right after the seq it last saw proves that), and relearns
        them when someone did. A run's own appends take two statements; one when the caller
        has reserved the seqs already, in an UPDATE of the request row it made anyway
        (`reserved_to`: last_seq after adding len(items), in this transaction).
        """
        keys = [item[2] for item in items if item[2] is not None]
        known: set[str] | None = getattr(request, "_event_keys", None)
        with transaction.atomic(savepoint=False):
            if reserved_to is None:
                reserved_to = _reserve_seqs(request.pk, len(items))
            first = reserved_to - len(items)
            fast = first == request.last_seq and keys_are_new(known, keys)
            existing: dict[str, RuntimeEvent] = {}
            if not fast and known is not None:
                # An object that keeps its keys (a run's) relearns them all, once per foreign append.
                known = cls.stream_keys(request.pk)
                dupes = known.intersection(keys)
            else:
                # Anyone else (a service, a mirror) looks up only the keys it brings.
                dupes = set(keys) if not fast else set()
            if dupes:
                existing = {e.dedupe_key: e for e in cls.objects.filter(request_id=request.pk, dedupe_key__in=dupes)}
            results: list[tuple[RuntimeEvent, bool]] = []
            new_rows: list[RuntimeEvent] = []
            seq = first
            for event_type, payload, dedupe_key, loop_index, step_key in items:
                if dedupe_key is not None and dedupe_key in existing:
                    results.append((existing[dedupe_key], False))
                    continue
                seq += 1
                event = cls._new(request, seq, (event_type, payload, dedupe_key, loop_index, step_key))
                if dedupe_key is not None:
                    existing[dedupe_key] = event
                    if known is not None:
                        known.add(dedupe_key)
                new_rows.append(event)
                results.append((event, True))
            if seq != reserved_to:  # duplicates took no seq: give the unused ones back (we hold the lock)
                Request.objects.filter(pk=request.pk).update(last_seq=seq)
            if new_rows:
                insert_rows(new_rows)  # the ids come back from the INSERT (PostgreSQL, SQLite >= 3.35)
        request.last_seq = seq
        request._event_keys = known
        return results

    @classmethod
    def _new(cls, request: Request, seq: int, item: tuple) -> "RuntimeEvent":
        event_type, payload, dedupe_key, loop_index, step_key = item
        return cls(request_id=request.pk, seq=seq, event_type=event_type, agent_id=request.agent.agent_id,
                   session_id=request.session.session_id, trace_id=request.trace_id, loop_index=loop_index,
                   step_key=step_key, payload=payload, dedupe_key=dedupe_key)

    @classmethod
    def append_in_one_statement(cls, request: Request, items: list[tuple],
                                along: list[models.Model] = ()) -> list["RuntimeEvent"] | None:
        """`append_many`'s usual case as a single statement, committed on its own: the seqs
        reserved, `along` inserted (rows of other models that belong with these events, as
        with `insert_rows(..., ignore_conflicts=True)`) and the events inserted, all or
        nothing. Five round trips (BEGIN, three statements, COMMIT) become one.

        Only on PostgreSQL, outside a transaction, for a request object that knows its
        stream's keys (a run's), when none of the items' keys is taken; mirroring is the
        caller's (events.append_events). The reservation is conditional on the seq this
        object last saw: when someone else appended meanwhile, nothing is written and None
        says to take the ordinary path (as it does when the conditions do not hold).
        """
        known: set[str] | None = getattr(request, "_event_keys", None)
        keys = [item[2] for item in items if item[2] is not None]
        conn = connections[DEFAULT_DB_ALIAS]
        if not items or conn.vendor != "postgresql" or conn.in_atomic_block or not keys_are_new(known, keys):
            return None
        events = [cls._new(request, request.last_seq + offset, item) for offset, item in enumerate(items, 1)]
        ids = db.append_if_last_seq(request, events, list(along))
        if not ids:
            return None
        for event, pk in zip(events, ids):
            event.pk = pk
        db.mark_stored([*events, *along], conn.alias)
        request.last_seq = events[-1].seq
        known.update(keys)
        return events

    @classmethod
    def stream_keys(cls, request_id) -> set[str]:
        """Every dedupe key of a request's stream."""
        return set(cls.objects.filter(request_id=request_id, dedupe_key__isnull=False)
                   .values_list("dedupe_key", flat=True))

    def wire_data(self) -> dict[str, Any]:
        """The `data` of this event's stream frame: request events carry their payload as is;
        everything else travels wrapped as an `agent.trace`."""
        if self.event_type.startswith("request."):
            return self.payload
        return {
            "event_type": self.event_type,
            "trace_id": str(self.trace_id),
            "session_id": self.session_id,
            "loop_index": self.loop_index,
            "step_key": self.step_key,
            "created_at": self.created_at,
            "payload": self.payload,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "event_id": self.id,
            "request_id": str(self.request_id),
            "request_seq": self.seq,
            "trace_id": str(self.trace_id),
            "app_id": self.agent_id,
            "agent_id": self.agent_id,
            "session_id": self.session_id,
            "event_type": self.event_type,
            "loop_index": self.loop_index,
            "step_key": self.step_key,
            "payload": self.payload,
            "created_at": self.created_at,
        }


class StepCheckpoint(models.Model):
    """The stored output of one LLM or tool call; a re-run replays it instead of calling again."""

    request = models.ForeignKey(Request, on_delete=models.CASCADE, related_name="checkpoints")
    step_key = models.CharField(max_length=100)
    kind = models.CharField(max_length=32)
    output = StorableJSONField(untrusted=True)
    duration_ms = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["request", "id"]
        constraints = [models.UniqueConstraint(fields=["request", "step_key"], name="uniq_checkpoint_step")]

    def __str__(self) -> str:
        return f"{self.request_id}:{self.step_key}"

    @classmethod
    def store(cls, request_id, step_key: str, kind: str, output: dict[str, Any], duration_ms: int = 0):
        """Store a step's output once. A second store of the same step keeps the first output,
        because whatever ran first is what later steps already saw."""
        try:
            with transaction.atomic():
                return cls.objects.create(
                    request_id=request_id, step_key=step_key, kind=kind, output=output, duration_ms=duration_ms
                )
        except IntegrityError:
            return cls.objects.get(request_id=request_id, step_key=step_key)


class Interaction(models.Model):
    class Type(models.TextChoices):
        APPROVAL = "approval"
        INFO = "info"
        CHOICE = "choice"

    class Status(models.TextChoices):
        PENDING = "pending"
        ANSWERED = "answered"
        TIMED_OUT = "timed_out"
        CANCELLED = "cancelled"  # its request ended first; a resume asks again

    interaction_id = models.CharField(max_length=32, primary_key=True, default=new_interaction_id, editable=False)
    request = models.ForeignKey(Request, on_delete=models.CASCADE, related_name="interactions")
    step_key = models.CharField(max_length=100)
    type = models.CharField(max_length=16, choices=Type.choices)
    prompt = models.TextField()
    schema = StorableJSONField(default=dict, untrusted=True)
    default_response = StorableJSONField(null=True, blank=True, untrusted=True)
    timeout_seconds = models.PositiveIntegerField()
    expires_at = models.DateTimeField(db_index=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True)
    response = StorableJSONField(null=True, blank=True)
    answered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at"]
        constraints = [models.UniqueConstraint(fields=["request", "step_key"], name="uniq_interaction_step")]

    def __str__(self) -> str:
        return self.interaction_id

    @property
    def timed_out(self) -> bool:
        return self.status == self.Status.TIMED_OUT


class MemoryTurn(models.Model):
    class Kind(models.TextChoices):
        TURN = "turn"
        SUMMARY = "summary"  # a compaction checkpoint: history after it starts here

    turn_id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="turns")
    session = models.ForeignKey(Session, on_delete=models.CASCADE, related_name="turns")
    request = models.OneToOneField(Request, null=True, blank=True, on_delete=models.SET_NULL, related_name="turn")
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.TURN)
    user_message = models.TextField(blank=True, default="")
    agent_response = models.TextField(blank=True, default="")
    token_usage = StorableJSONField(default=dict, blank=True, untrusted=True)
    session_total_tokens = models.BigIntegerField(default=0)
    signals = StorableJSONField(default=dict, blank=True, untrusted=True)
    metadata = StorableJSONField(default=dict, blank=True, untrusted=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["created_at"]
        indexes = [models.Index(fields=["session", "created_at"], name="turn_session_created")]

    def __str__(self) -> str:
        return str(self.turn_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "turn_id": str(self.turn_id),
            "user_message": self.user_message,
            "agent_response": self.agent_response,
            "session_total_tokens": self.session_total_tokens,
            "signals": self.signals,
            "metadata": self.metadata,
            "created_at": epoch(self.created_at),
        }


class Worker(models.Model):
    """One worker process's heartbeat: its slots, how many runs hold one, when it was last
    seen. Written by the process itself every few seconds (mash_runtime.run.runner);
    health reports read it to tell operators whether anything runs requests at all."""

    name = models.CharField(max_length=128, unique=True)  # the process's lease owner
    hostname = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    slots = models.PositiveIntegerField()
    in_use = models.PositiveIntegerField(default=0)
    draining = models.BooleanField(default=False)
    started_at = models.DateTimeField()
    last_seen_at = models.DateTimeField(db_index=True)

    # A process not seen for this long is taken for gone.
    LIVE_SECONDS = 30

    class Meta:
        ordering = ["hostname", "pid"]

    def __str__(self) -> str:
        return self.name

    @classmethod
    def report(cls, name: str, *, hostname: str, pid: int, slots: int, in_use: int, draining: bool,
               started_at) -> None:
        from django.utils import timezone

        values = {"slots": slots, "in_use": in_use, "draining": draining, "last_seen_at": timezone.now()}
        if not cls.objects.filter(name=name).update(**values):
            cls.objects.update_or_create(name=name, defaults={**values, "hostname": hostname, "pid": pid,
                                                              "started_at": started_at})

    @classmethod
    def live(cls, now=None) -> "models.QuerySet[Worker]":
        from datetime import timedelta

        from django.utils import timezone

        return cls.objects.filter(last_seen_at__gte=(now or timezone.now()) - timedelta(seconds=cls.LIVE_SECONDS))

    @property
    def free(self) -> int:
        return max(0, self.slots - self.in_use)


class IdempotencyKey(models.Model):
    """A client's `Idempotency-Key` for one submit, per agent: the same key again gets the
    first request back instead of a second one (`services.submit_request`). The unique
    constraint, not a read before the insert, decides between two submits racing with one
    key. Written with its request, all or nothing; kept `KEEP` (a day), then the sweeper and
    `mash prune` delete it."""

    KEEP = timedelta(hours=24)
    MAX_LENGTH = 255

    # No index of its own: uniq_idempotency_key_per_agent (agent, key) serves lookups by agent.
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="+", db_index=False)
    key = models.CharField(max_length=MAX_LENGTH)
    # sha256 of the submit's body (services.submit_fingerprint): the same key with another body is refused.
    body_hash = models.CharField(max_length=64)
    request = models.OneToOneField(Request, on_delete=models.CASCADE, related_name="idempotency_key")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["agent", "key"], name="uniq_idempotency_key_per_agent")]

    def __str__(self) -> str:
        return f"{self.agent_id}/{self.key}"

    @classmethod
    def expired(cls, now=None) -> "models.QuerySet[IdempotencyKey]":
        from django.utils import timezone

        return cls.objects.filter(created_at__lt=(now or timezone.now()) - cls.KEEP)


__all__ = ["Agent", "Session", "Request", "RuntimeEvent", "StepCheckpoint", "Interaction", "MemoryTurn", "Worker",
           "IdempotencyKey", "WorkflowDefinition", "PublishedSkill", "WorkflowRun", "WorkflowTaskRun", "WorkflowTaskState",
           "WorkflowRunEvent", "epoch", "new_interaction_id"]


# -- workflows and publishing -------------------------------------------------------------


class WorkflowDefinition(models.Model):
    class Source(models.TextChoices):
        CODE = "code"  # from the host app; synced at start
        PUBLISHED = "published"  # published over the API; survives restarts

    workflow_id = models.CharField(max_length=64, unique=True)
    source = models.CharField(max_length=16, choices=Source.choices)
    agent = models.ForeignKey(Agent, null=True, blank=True, on_delete=models.SET_NULL, related_name="workflows")
    tasks = StorableJSONField()  # [{task_id, agent_id, structured_output}]
    metadata = StorableJSONField(null=True, blank=True)
    task_message = StorableJSONField(null=True, blank=True)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["workflow_id"]

    def __str__(self) -> str:
        return self.workflow_id

    def describe(self) -> dict[str, Any]:
        # Tolerant of rows the admin saved before its form checked the task list.
        tasks = self.tasks if isinstance(self.tasks, list) else []
        return {
            "workflow_id": self.workflow_id,
            "tasks": [{"task_id": t.get("task_id"), "agent_id": t.get("agent_id")} for t in tasks if isinstance(t, dict)],
            "metadata": self.metadata,
        }


class PublishedSkill(models.Model):
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="published_skills")
    name = models.CharField(max_length=64)
    type = models.CharField(max_length=32, default="inline")
    description = models.TextField(blank=True, default="")
    location = models.CharField(max_length=500, blank=True, default="")
    content = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["agent", "name"]
        constraints = [models.UniqueConstraint(fields=["agent", "name"], name="uniq_published_skill")]

    def __str__(self) -> str:
        return f"{self.agent_id}/{self.name}"


class WorkflowRun(models.Model):
    class Status(models.TextChoices):
        RUNNING = "running"
        COMPLETED = "completed"
        FAILED = "failed"
        CANCELLED = "cancelled"

    ACTIVE = (Status.RUNNING,)
    TERMINAL = (Status.COMPLETED, Status.FAILED, Status.CANCELLED)

    run_id = models.CharField(max_length=120, primary_key=True)
    workflow = models.ForeignKey(WorkflowDefinition, on_delete=models.CASCADE, related_name="runs")
    dedup_key = models.CharField(max_length=200, null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING, db_index=True)
    input = StorableJSONField(default=dict, blank=True)
    output = StorableJSONField(null=True, blank=True, untrusted=True)
    error = models.TextField(blank=True, default="")
    task_index = models.PositiveIntegerField(default=0)
    last_seq = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # At most one active run per dedup key: the database, not a race, decides.
            models.UniqueConstraint(
                fields=["workflow", "dedup_key"], condition=models.Q(status="running"), name="uniq_active_dedup_run"
            )
        ]

    def __str__(self) -> str:
        return self.run_id

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL

    def elapsed_ms(self, now=None) -> int | None:
        """From its start (or creation) to its end, or to now while it runs."""
        from django.utils import timezone

        start = self.started_at or self.created_at
        end = self.finished_at or (None if self.is_terminal else (now or timezone.now()))
        if start is None or end is None:
            return None
        return max(0, int((end - start).total_seconds() * 1000))


class WorkflowTaskRun(models.Model):
    run = models.ForeignKey(WorkflowRun, on_delete=models.CASCADE, related_name="task_runs")
    task_id = models.CharField(max_length=64)
    index = models.PositiveIntegerField()
    agent_id = models.CharField(max_length=64)
    request = models.OneToOneField(Request, null=True, blank=True, on_delete=models.SET_NULL, related_name="task_run")
    status = models.CharField(max_length=16, default="running")
    output = StorableJSONField(null=True, blank=True, untrusted=True)
    error = models.TextField(blank=True, default="")
    started_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["run", "index"]
        constraints = [models.UniqueConstraint(fields=["run", "index"], name="uniq_task_run_index")]

    def __str__(self) -> str:
        return f"{self.run_id} · task {self.index + 1} {self.task_id} ({self.status})"


class WorkflowTaskState(models.Model):
    """A task's last structured output: handed to the same task in the next run."""

    workflow = models.ForeignKey(WorkflowDefinition, on_delete=models.CASCADE, related_name="task_states")
    task_id = models.CharField(max_length=64)
    state = StorableJSONField(untrusted=True)
    run = models.ForeignKey(WorkflowRun, null=True, blank=True, on_delete=models.SET_NULL)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["workflow", "task_id"], name="uniq_task_state")]

    def __str__(self) -> str:
        return f"{self.workflow.workflow_id}/{self.task_id} state"


class WorkflowRunEvent(models.Model):
    run = models.ForeignKey(WorkflowRun, on_delete=models.CASCADE, related_name="events")
    seq = models.PositiveIntegerField()
    event_type = models.CharField(max_length=100)
    payload = StorableJSONField(default=dict, untrusted=True)
    dedupe_key = models.CharField(max_length=200, null=True, blank=True)
    created_at = models.FloatField(default=time.time)

    class Meta:
        ordering = ["run", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["run", "seq"], name="uniq_run_event_seq"),
            models.UniqueConstraint(fields=["run", "dedupe_key"], name="uniq_run_event_dedupe"),
        ]

    def __str__(self) -> str:
        return f"{self.run_id}#{self.seq} {self.event_type}"

    @property
    def stream_name(self) -> str:
        if self.event_type.startswith(("request.", "workflow.")):
            return self.event_type
        return "agent.trace"

    @classmethod
    def append(cls, run_id: str, event_type: str, payload: dict[str, Any], dedupe_key: str | None) -> bool:
        """Append with the same locking and dedupe rules as RuntimeEvent.append_many."""
        with transaction.atomic():
            last = WorkflowRun.objects.select_for_update().values_list("last_seq", flat=True).get(pk=run_id)
            if dedupe_key is not None and cls.objects.filter(run_id=run_id, dedupe_key=dedupe_key).exists():
                return False
            WorkflowRun.objects.filter(pk=run_id).update(last_seq=last + 1)
            cls.objects.create(run_id=run_id, seq=last + 1, event_type=event_type, payload=payload,
                               dedupe_key=dedupe_key)
        return True
