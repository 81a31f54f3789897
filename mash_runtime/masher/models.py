"""Masher's records: trace digests, eval records and the incremental checkpoints.

A record names its trace by `(agent_id, trace_id)` and keeps a nullable link to the
request, so deleting old requests leaves the digests and evals browsable.
"""

from __future__ import annotations

from typing import Any

from django.db import models

from mash_runtime.models import epoch


class TraceDigest(models.Model):
    """One trace summarised: plain-code facts plus the model's summary."""

    agent_id = models.CharField(max_length=64, db_index=True)
    trace_id = models.UUIDField()
    request = models.ForeignKey("mash_runtime.Request", null=True, blank=True, on_delete=models.SET_NULL,
                                related_name="masher_digests")
    session_id = models.CharField(max_length=200, blank=True, default="")
    status = models.CharField(max_length=20)
    summary = models.TextField(blank=True, default="")
    event_count = models.PositiveIntegerField(default=0)
    tool_call_count = models.PositiveIntegerField(default=0)
    step_count = models.PositiveIntegerField(default=0)
    llm_call_count = models.PositiveIntegerField(default=0)
    tools = models.JSONField(default=list, blank=True)  # tool names in call order
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    total_tokens = models.BigIntegerField(default=0)
    duration_ms = models.BigIntegerField(null=True, blank=True)
    notable_events = models.JSONField(default=list, blank=True)
    mode = models.CharField(max_length=16, blank=True, default="")  # "trace" | "incremental"
    run_id = models.CharField(max_length=120, blank=True, default="")  # the Masher workflow run
    trace_created_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["agent_id", "trace_id"], name="masher_uniq_digest_trace")]

    def __str__(self) -> str:
        return f"{self.agent_id}/{self.trace_id}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "record": "trace_digest",
            "agent_id": self.agent_id,
            "trace_id": str(self.trace_id),
            "request_id": str(self.request_id) if self.request_id else None,
            "session_id": self.session_id,
            "status": self.status,
            "summary": self.summary,
            "event_count": self.event_count,
            "tool_call_count": self.tool_call_count,
            "step_count": self.step_count,
            "llm_call_count": self.llm_call_count,
            "tools": self.tools,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
            "duration_ms": self.duration_ms,
            "notable_events": self.notable_events,
            "mode": self.mode,
            "run_id": self.run_id or None,
            "trace_created_at": epoch(self.trace_created_at),
            "created_at": epoch(self.created_at),
        }


class EvalRecord(models.Model):
    """One completed trace turned into an eval case, purely from its data."""

    agent_id = models.CharField(max_length=64, db_index=True)
    trace_id = models.UUIDField()
    request = models.ForeignKey("mash_runtime.Request", null=True, blank=True, on_delete=models.SET_NULL,
                                related_name="masher_evals")
    session_id = models.CharField(max_length=200, blank=True, default="")
    user_message = models.TextField()
    answer = models.TextField(blank=True, default="")
    tools = models.JSONField(default=list, blank=True)  # [{"name", "arguments", "is_error"}] in call order
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    total_tokens = models.BigIntegerField(default=0)
    status = models.CharField(max_length=20)
    mode = models.CharField(max_length=16, blank=True, default="")
    run_id = models.CharField(max_length=120, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["agent_id", "trace_id"], name="masher_uniq_eval_trace")]

    def __str__(self) -> str:
        return f"{self.agent_id}/{self.trace_id}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "record": "eval_record",
            "agent_id": self.agent_id,
            "trace_id": str(self.trace_id),
            "request_id": str(self.request_id) if self.request_id else None,
            "session_id": self.session_id,
            "user_message": self.user_message,
            "answer": self.answer,
            "tools": self.tools,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
            "status": self.status,
            "mode": self.mode,
            "run_id": self.run_id or None,
            "created_at": epoch(self.created_at),
        }


class MasherCheckpoint(models.Model):
    """How far incremental mode got for one agent and one workflow kind.

    Traces are taken in the order they finished (`finished_at`, then request id), so a
    request that was still running at the last run is picked up once it ends.
    """

    class Kind(models.TextChoices):
        DIGEST = "digest"
        EVAL = "eval"

    agent_id = models.CharField(max_length=64)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    last_finished_at = models.DateTimeField(null=True, blank=True)
    last_request_id = models.UUIDField(null=True, blank=True)
    last_trace_id = models.UUIDField(null=True, blank=True)
    processed_count = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["agent_id", "kind"]
        constraints = [models.UniqueConstraint(fields=["agent_id", "kind"], name="masher_uniq_checkpoint")]

    def __str__(self) -> str:
        return f"{self.agent_id}:{self.kind}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "agent_id": self.agent_id,
            "kind": self.kind,
            "last_finished_at": epoch(self.last_finished_at),
            "last_request_id": str(self.last_request_id) if self.last_request_id else None,
            "last_trace_id": str(self.last_trace_id) if self.last_trace_id else None,
            "processed_count": self.processed_count,
        }
